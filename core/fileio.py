"""Atomic writes (temp file + rename) and safe loading of torch files.

Every output of a long job goes through `atomic_path`, so a killed run never leaves a half-written
file under the final name, and a re-run can trust any file that exists.
"""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from core.errors import SvcError, UnsafeFileError
from core.filekind import describe_non_checkpoint

if TYPE_CHECKING:
    import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`, on error removed.

    `suffix` keeps an extension some writers look at (soundfile picks the format from it).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=suffix or ".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def make_output_dir(folder: str | os.PathLike, flag: str = "") -> Path:
    """Create an output folder (and its parents); SvcError naming the flag when a file is in the way.

    mkdir's own errors (NotADirectoryError, FileExistsError) say neither which part of the path is a file
    nor which flag gave it."""
    folder = Path(folder)
    label = f"{flag} {folder}" if flag else str(folder)
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise SvcError(f"cannot create folder {label}: {blocking} is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SvcError(f"cannot create folder {label}: {error.strerror or error}") from None
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def np_save(path: str | os.PathLike, array: Any, allow_pickle: bool = False) -> None:
    """np.save to exactly `path` (no '.npy' appended), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=allow_pickle)


class NotACheckpointError(SvcError):
    """A file given as a checkpoint is something else (text, a web page, an LFS pointer, an archive ...)."""


class DamagedFileError(SvcError):
    """A model file that is truncated or corrupt: its zip directory, pickle or tensor data do not hold together."""


# What torch.load, zipfile and the unpickler raise on a damaged file: torch raises AssertionError itself for a
# storage key the legacy format's pickle names but its data lacks, zipfile NotImplementedError for an unknown
# zip version; LookupError covers a missing storage key (KeyError), an index past the end and an unknown
# text encoding named by a legacy file.
DAMAGED_FILE_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError, EOFError, OSError, ValueError, LookupError, TypeError, AttributeError, struct.error,
    AssertionError, NotImplementedError, OverflowError, zipfile.BadZipFile, pickle.UnpicklingError)
LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # a zip member's local file header (30 bytes)
MAX_MEMBER_NAME = 1024


def damaged(path: str | os.PathLike, reason: str) -> DamagedFileError:
    """The one-line refusal of a damaged model file."""
    return DamagedFileError(f"{path} is damaged ({reason}): cannot read it (a truncated or damaged file?)")


def check_torch_zip(path: str | os.PathLike) -> None:
    """Refuse a zip-format torch file whose directory does not hold together, before torch's reader sees it.

    torch writes every member uncompressed under one root folder, with a `<root>/data.pkl`; each member's
    local header and data must lie inside the file, names must be unique and plain, and the declared sizes
    cannot add up to more than the file holds (so no declared size makes a reader allocate more than that).
    DamagedFileError names the first problem.
    """
    path = Path(path)
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except DAMAGED_FILE_ERRORS as error:
        raise damaged(path, f"unreadable zip directory: {_first_line(error)}") from None
    problem = _zip_members_problem(members, size) or _local_headers_problem(path, members, size)
    if problem:
        raise damaged(path, problem)


def _zip_members_problem(members: list[zipfile.ZipInfo], size: int) -> str | None:
    if not members:
        return "an empty zip archive"
    names = [member.filename for member in members]
    root = names[0].split("/", 1)[0]
    for member in members:
        problem = _member_name_problem(member.filename, root)
        if problem:
            return problem
        if member.compress_type != zipfile.ZIP_STORED or member.compress_size != member.file_size:
            return f"member {member.filename!r} is compressed; torch stores its members uncompressed"
        if member.header_offset < 0 or member.header_offset + LOCAL_HEADER.size + member.file_size > size:
            return f"member {member.filename!r} reaches past the end of the file"
    if len(set(names)) != len(names):
        return "the zip archive names a member twice"
    if sum(member.file_size for member in members) > size:
        return "the members' declared sizes add up to more than the file holds"
    if f"{root}/data.pkl" not in names:
        return f"no {root}/data.pkl in the zip archive"
    return None


def _member_name_problem(name: str, root: str) -> str | None:
    parts = name.split("/")
    if (len(name) > MAX_MEMBER_NAME or not name.isprintable() or "\\" in name or len(parts) < 2 or parts[0] != root
            or any(part in ("", ".", "..") for part in parts)):
        return f"bad member name {name[:80]!r}"
    return None


def _local_headers_problem(path: Path, members: list[zipfile.ZipInfo], size: int) -> str | None:
    """Each member's local header must be one, uncompressed, with its data inside the file."""
    with open(path, "rb") as f:
        for member in members:
            f.seek(member.header_offset)
            header = f.read(LOCAL_HEADER.size)
            if len(header) < LOCAL_HEADER.size:
                return f"member {member.filename!r} reaches past the end of the file"
            fields = LOCAL_HEADER.unpack(header)
            signature, method, name_length, extra_length = fields[0], fields[4], fields[10], fields[11]
            if signature != b"PK\x03\x04" or method != zipfile.ZIP_STORED:
                return f"the local header of member {member.filename!r} is broken"
            end = member.header_offset + LOCAL_HEADER.size + name_length + extra_length + member.file_size
            if end > size:
                return f"member {member.filename!r} reaches past the end of the file"
    return None


def safe_torch_load(path: str | os.PathLike, map_location: "str | torch.device" = "cpu", mmap: bool = False) -> Any:
    """torch.load that never executes code from the file (weights_only=True).

    `mmap`: map a zip-format file's tensors instead of reading them (a tensor's bytes are read when it is
    used, so a checkpoint's optimizer state that is never used is never read); older files are read whole.

    A file that is plainly something else (empty, text, HTML, JSON, a git-LFS pointer, an archive) is
    refused with a NotACheckpointError saying what it looks like. A file that needs anything beyond
    tensors, containers and plain numbers is refused with an UnsafeFileError naming the file; a missing,
    truncated or corrupt file gives a DamagedFileError (an SvcError). A zip file's directory is checked
    before torch reads it (`check_torch_zip`); a legacy (pre-1.6) file is read from memory, so no length
    its pickle declares makes a read allocate more than the file holds.
    """
    import torch

    path = Path(path)
    if path.is_dir():
        raise SvcError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise SvcError(f"file not found: {path}")
    looks_like = describe_non_checkpoint(path)
    if looks_like is not None:
        raise NotACheckpointError(f"{path} is not a checkpoint ({looks_like})")
    source, is_zip = torch_load_source(path)
    try:
        return torch.load(source, map_location=map_location, weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as error:
        if not _refused_by_weights_only(error):
            raise damaged(path, _first_line(error)) from None
        raise UnsafeFileError(
            f"{path} holds objects that are not plain tensors ({_refusal_reason(error)}); "
            "it was not loaded, because loading it could run code from the file"
        ) from None
    except DAMAGED_FILE_ERRORS as error:
        raise damaged(path, _first_line(error)) from None


def torch_load_source(path: str | os.PathLike) -> tuple[Path | io.BytesIO, bool]:
    """What to hand torch.load for `path`, and whether it is zip format: a zip file (its directory checked
    with `check_torch_zip`) by its path, a legacy file as its bytes in memory, whose reads never return (or
    allocate) more than the file holds."""
    path = Path(path)
    if _starts_like_zip(path):
        check_torch_zip(path)
        return path, True
    return io.BytesIO(path.read_bytes()), False


def _starts_like_zip(path: Path) -> bool:
    """torch.load takes a file as zip format when it starts with a zip local header (a zip with anything
    before its first member is not one torch wrote)."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _refused_by_weights_only(error: pickle.UnpicklingError) -> bool:
    return "weights only" in str(error).lower() or "unsupported" in str(error).lower()


def _refusal_reason(error: pickle.UnpicklingError) -> str:
    """The line of torch's weights-only message that names what was refused (its first line is boilerplate)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "unsupported" in line.lower() or "GLOBAL" in line:
            return line.rstrip(".")
    return lines[0] if lines else type(error).__name__


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
