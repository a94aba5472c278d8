"""Downloading pretrained files: streamed, hash-checked, atomic, with one clear error when it fails.

`download` fetches one URL to one path; `extract_members` takes chosen files out of a zip;
`fetch_pretrained` does both for the names `download_pretrained.py` accepts, skipping files that are
already in place (and re-fetching those whose published hash does not match).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import socket
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Mapping
from urllib.parse import urlsplit

from loguru import logger
from tqdm import tqdm

from core.errors import ConfigError, SvcError, UnsafeFileError
from core.fileio import atomic_path
from core.pretrained import DOWNLOADS, OTHER_PRETRAINED, SOURCES, DirectDownload, direct_download
from core.registry import ENCODER_RECORDS, F0_PREDICTOR_RECORDS

MIRROR_ENV = "SVC_DOWNLOAD_MIRROR"  # environment variable download_pretrained.py reads for --base_url
CHUNK = 1 << 20
USER_AGENT = "so-vits-svc-compatible-downloader"

# download_pretrained.py names beyond the speech encoders: name -> files under the pretrain folder
EXTRA_NAMES: dict[str, tuple[str, ...]] = {
    **{name: (record.file,) for name, record in F0_PREDICTOR_RECORDS.items() if record.file},
    **{name: other.files for name, other in OTHER_PRETRAINED.items()},
}
ALL_AVAILABLE = "all-available"
# What one pretrained zip may unpack to, judged by the sizes its members declare before anything is written. The
# largest real one (RMVPE's model.pt) is ~181 MB; a "zip bomb" of zeros declares far more than it weighs.
MAX_MEMBER_BYTES = 512 * 1024 * 1024
MAX_UNPACKED_BYTES = 1024 * 1024 * 1024
ZIP_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)


class DownloadError(SvcError):
    """The file could not be fetched: no network, refused, timed out, an HTTP error or a short read."""


class ChecksumError(SvcError):
    """A file's sha256 is not the expected one."""


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, sha256_prefix: str | None = None,
             timeout: float = 30.0, desc: str | None = None, manual_dest: str | os.PathLike | None = None) -> Path:
    """Stream `url` to `dest` with a progress bar; the file appears under its name only once complete and verified.

    `timeout` bounds connecting and each read (seconds). A network or HTTP failure, a short read or a
    hash mismatch raises SvcError and leaves `dest` as it was (a previous file there is kept). The message
    tells the user to put a hand-downloaded copy at `manual_dest` (default `dest`).
    """
    dest = Path(dest)
    manual = Path(manual_dest) if manual_dest is not None else dest
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with atomic_path(dest, suffix=".part") as tmp:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                actual = _stream(response, tmp, desc or dest.name)
        except urllib.error.HTTPError as error:
            raise _download_error(url, manual, f"HTTP {error.code} {error.reason}") from None
        except urllib.error.URLError as error:
            raise _download_error(url, manual, _reason(error.reason)) from None
        except (OSError, http.client.HTTPException) as error:
            raise _download_error(url, manual, _reason(error)) from None
        check_sha256(actual, sha256, sha256_prefix, what=f"the file downloaded from {url}",
                     after="it was removed; try again, or download it yourself and put it at " + str(manual))
    return dest


def _stream(response, tmp: Path, desc: str) -> str:
    """Copy the response body to `tmp`; return its sha256. A body shorter than Content-Length is an error."""
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    digest = hashlib.sha256()
    received = 0
    with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                                      mininterval=0.5) as bar:
        while chunk := response.read(CHUNK):
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    if total is not None and received != total:
        raise ConnectionError(f"the connection closed after {received} of {total} bytes")
    return digest.hexdigest()


def _reason(reason: object) -> str:
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "timed out (no network?)"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve the host ({reason.strerror or reason}; no network?)"
    return str(reason) or type(reason).__name__


def _download_error(url: str, dest: Path, reason: str) -> DownloadError:
    return DownloadError(f"cannot download {url}: {reason}; download it yourself and put it at {dest}"
                         + (" (this script unpacks it from there)" if dest.suffix == ".zip" else ""))


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_matches(actual: str, sha256: str | None = None, sha256_prefix: str | None = None) -> bool:
    """True when `actual` equals `sha256` and starts with `sha256_prefix` (each only where given)."""
    actual = actual.lower()
    return (sha256 is None or actual == sha256.lower()) and (sha256_prefix is None
                                                             or actual.startswith(sha256_prefix.lower()))


def check_sha256(actual: str, sha256: str | None, sha256_prefix: str | None, what: str, after: str) -> None:
    if sha256_matches(actual, sha256, sha256_prefix):
        return
    expected = sha256 if sha256 is not None else f"{sha256_prefix}... (prefix)"
    raise ChecksumError(f"{what} has the wrong sha256: expected {expected}, got {actual}; {after}")


def mirror_url(url: str, base_url: str | None) -> str:
    """`url` with its scheme and host replaced by `base_url` (which may carry a path prefix); as is when None."""
    if not base_url:
        return url
    return base_url.rstrip("/") + urlsplit(url).path


def is_safe_member(name: str) -> bool:
    """A zip member name that stays inside the folder it is extracted to."""
    path = PurePosixPath(name.replace("\\", "/"))
    parts = path.parts
    return bool(parts) and not path.is_absolute() and ".." not in parts and ":" not in parts[0]


def extract_members(zip_path: str | os.PathLike, wanted: Mapping[str, str | os.PathLike]) -> list[Path]:
    """Extract the members named in `wanted` (member -> destination path) and nothing else.

    A member is found by its exact name, else by a unique member with that file name in any folder (zips
    often wrap their files in one). A zip with a member name that leaves its folder (`../x`, `/x`), that is
    a link, or whose members declare more than MAX_MEMBER_BYTES each or MAX_UNPACKED_BYTES in all is refused
    before anything is written; no member is written past the size it declares. Each destination is written
    atomically.
    """
    zip_path = Path(zip_path)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise SvcError(f"{zip_path} is not a readable zip file: {error}") from None
    with archive:
        infos = archive.infolist()
        check_members(infos, zip_path)
        chosen = {member: _find_member(infos, member, zip_path) for member in wanted}
        written = []
        for member, dest in wanted.items():
            _extract(archive, chosen[member], Path(dest), zip_path)
            written.append(Path(dest))
    return written


def check_members(infos: list[zipfile.ZipInfo], zip_path: Path) -> None:
    """Refuse an archive with a member outside its folder, a link, or declared sizes above the caps."""
    unsafe = [info.filename for info in infos if not is_safe_member(info.filename) or _is_link(info)]
    if unsafe:
        raise UnsafeFileError(f"{zip_path} was not unpacked: its member '{unsafe[0]}' would be written "
                              "outside the target folder or is a link")
    largest = max(infos, key=lambda info: info.file_size, default=None)
    if largest is not None and largest.file_size > MAX_MEMBER_BYTES:
        raise UnsafeFileError(f"{zip_path} was not unpacked: its member '{largest.filename}' declares "
                              f"{largest.file_size} bytes, more than the {MAX_MEMBER_BYTES} a pretrained file may "
                              "have; is it the published archive?")
    total = sum(info.file_size for info in infos)
    if total > MAX_UNPACKED_BYTES:
        raise UnsafeFileError(f"{zip_path} was not unpacked: its {len(infos)} members declare {total} bytes in "
                              f"all, more than the {MAX_UNPACKED_BYTES} a pretrained archive may unpack to; is it "
                              "the published archive?")


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, zip_path: Path) -> None:
    """Write member `info` to `dest` atomically, never more bytes than it declares; a damaged member (bad
    data, a CRC mismatch, an unsupported compression or encryption) is one SvcError naming the archive."""
    try:
        with atomic_path(dest) as tmp, archive.open(info) as source, open(tmp, "wb") as out:
            left = info.file_size
            while chunk := source.read(min(CHUNK, left + 1)):
                left -= len(chunk)
                if left < 0:
                    raise UnsafeFileError(f"{zip_path} was not unpacked: its member '{info.filename}' holds more "
                                          f"than the {info.file_size} bytes it declares")
                out.write(chunk)
    except ZIP_READ_ERRORS as error:
        raise SvcError(f"{zip_path} could not be unpacked: its member '{info.filename}' is damaged or cannot be "
                       f"read ({error})") from None


def _is_link(info: zipfile.ZipInfo) -> bool:
    return (info.external_attr >> 16) & 0o170000 == 0o120000


def _find_member(infos: list[zipfile.ZipInfo], member: str, zip_path: Path) -> zipfile.ZipInfo:
    files = [info for info in infos if not info.is_dir()]
    exact = [info for info in files if info.filename == member]
    by_name = [info for info in files if PurePosixPath(info.filename).name == member]
    found = exact or by_name
    if len(found) != 1:
        problem = "has no member" if not found else "has several members"
        raise SvcError(f"{zip_path} {problem} named '{member}' (members: "
                       f"{', '.join(info.filename for info in files[:10])})")
    return found[0]


def pretrained_names() -> list[str]:
    """Every NAME download_pretrained.py accepts."""
    return [*ENCODER_RECORDS, *EXTRA_NAMES, ALL_AVAILABLE]


def files_for(name: str) -> tuple[str, ...]:
    """Files under the pretrain folder that `name` needs (an encoder name, rmvpe, fcpe, nsf_hifigan)."""
    if name == ALL_AVAILABLE:
        return tuple(file for entry in DOWNLOADS for file in entry.files)
    if name in ENCODER_RECORDS:
        return (ENCODER_RECORDS[name].file,)
    if name in EXTRA_NAMES:
        return EXTRA_NAMES[name]
    raise ConfigError(f"unknown name '{name}'; choose from: {', '.join(pretrained_names())}")


@dataclass
class FetchResult:
    """Files under the pretrain folder, by what happened to them."""
    fetched: list[str] = field(default_factory=list)  # downloaded now
    present: list[str] = field(default_factory=list)  # already in place
    manual: list[str] = field(default_factory=list)   # missing, no direct URL: the user has to get them
    failed: list[str] = field(default_factory=list)   # the download failed (the error was logged)


def plan(names: list[str]) -> tuple[list[DirectDownload], list[str]]:
    """The direct downloads (each once) and the files without one, that `names` need."""
    downloads: list[DirectDownload] = []
    manual: list[str] = []
    for name in names:
        for file in files_for(name):
            entry = direct_download(file)
            if entry is None and file not in manual:
                manual.append(file)
            elif entry is not None and entry not in downloads:
                downloads.append(entry)
    return downloads, manual


def fetch_pretrained(names: list[str], pretrain_dir: str | os.PathLike = "pretrain", base_url: str | None = None,
                     sha256_override: str | None = None, timeout: float = 30.0) -> FetchResult:
    """Put the files `names` need into `pretrain_dir`: download those with a direct URL, explain the others.

    `sha256_override` (one download only) replaces the published hash: 64 hex digits a full sha256, fewer a
    prefix. Failures are logged and listed in the result rather than raised, so one bad file stops no other.
    """
    pretrain_dir = Path(pretrain_dir)
    downloads, manual = plan(names)
    if sha256_override is not None:
        downloads = [_with_sha256(downloads, sha256_override)]
    result = FetchResult()
    for entry in downloads:
        if is_in_place(entry, pretrain_dir):
            result.present.extend(entry.files)
            continue
        try:
            fetch(entry, pretrain_dir, base_url, timeout)
            result.fetched.extend(entry.files)
        except SvcError as error:
            logger.error(str(error))
            result.failed.extend(entry.files)
            kept = [file for file in entry.files if (pretrain_dir / file).is_file()]
            if kept:
                logger.warning(f"kept the existing {', '.join(kept)} in {pretrain_dir}, which is not the published "
                               "file")
    for file in manual:
        if (pretrain_dir / file).is_file():
            result.present.append(file)
        else:
            logger.warning(f"{file} has no direct download; get it by hand ({SOURCES.get(Path(file).name, '?')}) "
                           f"and put it at {pretrain_dir / file}")
            result.manual.append(file)
    return result


def _with_sha256(downloads: list[DirectDownload], sha256: str) -> DirectDownload:
    if len(downloads) != 1:
        raise ConfigError(f"--sha256 applies to exactly one download, but the names given need {len(downloads)}")
    sha256 = sha256.lower()
    if not 8 <= len(sha256) <= 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ConfigError(f"--sha256 must be 8 to 64 hex digits, got '{sha256}'")
    logger.warning(f"checking {downloads[0].name} against the given sha256 {sha256}, not the published one")
    full = sha256 if len(sha256) == 64 else None
    return replace(downloads[0], sha256=full, sha256_prefix=None if full else sha256)


def is_in_place(entry: DirectDownload, pretrain_dir: Path) -> bool:
    """True when every file of `entry` exists and, where its hash is known, matches it (else a warning)."""
    paths = [pretrain_dir / file for file in entry.files]
    if not all(path.is_file() for path in paths):
        return False
    if entry.sha256 is None and entry.sha256_prefix is None:
        logger.info(f"{', '.join(map(str, paths))}: already present, skipped")
        return True
    logger.info(f"{paths[0]}: present, checking its sha256")
    actual = file_sha256(paths[0])
    if sha256_matches(actual, entry.sha256, entry.sha256_prefix):
        logger.info(f"{paths[0]}: sha256 ok, skipped")
        return True
    logger.warning(f"{paths[0]} does not match the published sha256 (got {actual}): it is damaged or a "
                   "different file; downloading it again (the old file is kept until the new one is complete)")
    return False


def fetch(entry: DirectDownload, pretrain_dir: Path, base_url: str | None = None, timeout: float = 30.0) -> None:
    """Download `entry` into `pretrain_dir` (unpacking the files it wants from a zip).

    For a zip, a copy the user saved by hand as `<pretrain_dir>/<zip name>` is used instead of the network
    (checked like a download, and kept); when the download fails, the message names that place.
    """
    url = mirror_url(entry.url, base_url)
    if entry.file:
        logger.info(f"downloading {entry.name} from {url}")
        download(url, pretrain_dir / entry.file, entry.sha256, entry.sha256_prefix, timeout, desc=entry.file)
        return
    pretrain_dir.mkdir(parents=True, exist_ok=True)
    saved_zip = pretrain_dir / Path(urlsplit(entry.url).path).name
    if saved_zip.is_file():
        logger.info(f"unpacking {entry.name} from {saved_zip}")
        check_sha256(file_sha256(saved_zip), entry.sha256, entry.sha256_prefix, what=str(saved_zip),
                     after="it was left in place; delete it or replace it with the published file")
        _unpack(entry, saved_zip, pretrain_dir)
        return
    logger.info(f"downloading {entry.name} from {url}")
    with tempfile.TemporaryDirectory(dir=pretrain_dir, prefix=".download-") as tmp:
        archive = download(url, Path(tmp) / saved_zip.name, entry.sha256, entry.sha256_prefix, timeout,
                           manual_dest=saved_zip)
        _unpack(entry, archive, pretrain_dir)


def _unpack(entry: DirectDownload, archive: Path, pretrain_dir: Path) -> None:
    if entry.sha256 is None and entry.sha256_prefix is None:
        logger.warning(f"{archive.name} ({entry.name}) is unverified: no sha256 is published for it; only its "
                       "member names, types and sizes are checked before it is unpacked")
    extract_members(archive, {member: pretrain_dir / dest for member, dest in entry.unzip})
    logger.info(f"unpacked {', '.join(entry.files)} into {pretrain_dir}")


def listing(pretrain_dir: str | os.PathLike = "pretrain") -> str:
    """One block per NAME: its files, whether each is present, and where it comes from."""
    pretrain_dir = Path(pretrain_dir)
    lines = []
    for name in pretrained_names():
        if name == ALL_AVAILABLE:
            continue
        lines.append(name)
        for file in files_for(name):
            entry = direct_download(file)
            state = "present" if (pretrain_dir / file).is_file() else "missing"
            source = f"direct download: {entry.url}" if entry else f"by hand: {SOURCES.get(Path(file).name, '?')}"
            lines.append(f"  {pretrain_dir / file} [{state}] {source}")
    lines.append(f"{ALL_AVAILABLE}: every file with a direct download")
    return "\n".join(lines)


def raise_if_incomplete(result: FetchResult, pretrain_dir: str | os.PathLike = "pretrain") -> None:
    """Log what was done; raise one SvcError naming every file still missing."""
    if result.fetched:
        logger.info(f"downloaded: {', '.join(result.fetched)}")
    if result.present:
        logger.info(f"already present: {', '.join(result.present)}")
    problems = []
    if result.failed:
        problems.append(f"could not download {', '.join(result.failed)}")
    if result.manual:
        problems.append(f"still missing {', '.join(result.manual)}")
    if problems:
        raise SvcError(f"{'; '.join(problems)} (in {pretrain_dir}; the messages above say where to get each file)")
