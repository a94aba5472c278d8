"""Recognise, from its first bytes, a file that was given as a model checkpoint but is something else.

Users end up with the wrong file in the place of a checkpoint in a few common ways: a git-LFS pointer
when a repository was cloned without LFS, the HTML page of a download link, a config saved under the
model's name, an empty file from an interrupted copy, a zip that still has to be unpacked. Each gets a
description here, so that the loader can say what the file is instead of a pickle error.

Anything that could be a pickle (binary protocols start with 0x80; text protocols parse as pickle
opcodes) is left to the loader, which refuses pickles that would run code.
"""
from __future__ import annotations

import json
import pickletools
import struct
import zipfile
from pathlib import Path

HEAD_BYTES = 4096
LFS_POINTER_START = b"version https://git-lfs.github.com/spec/"

# magic bytes -> what the file is
BINARY_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"RIFF", "a RIFF file (WAV audio?)"),
    (b"fLaC", "FLAC audio"),
    (b"OggS", "Ogg audio"),
    (b"ID3", "MP3 audio"),
    (b"\x1f\x8b", "a gzip archive; unpack it first"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive; unpack it first"),
    (b"Rar!", "a RAR archive; unpack it first"),
    (b"\x89HDF", "an HDF5 file (a Keras/TensorFlow model?)"),
    (b"GGUF", "a GGUF file"),
)


def describe_non_checkpoint(path: str | Path) -> str | None:
    """What `path` looks like when it cannot be a torch checkpoint; None when it may be one."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    if not head:
        return "an empty file, 0 bytes: an interrupted download or copy?"
    if head.startswith(b"PK\x03\x04"):
        return _describe_zip(path)
    if head.startswith(b"\x80"):
        return None
    return _describe_binary(head) or _describe_text(head, path)


def _describe_zip(path: Path) -> str | None:
    """torch's zip format holds `<archive>/data.pkl`; any other zip is an archive to unpack."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, NotImplementedError, ValueError, EOFError, OverflowError, struct.error):
        return None  # a damaged zip (bad names, unknown version, cut directory): the loader reports the damage
    if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        return None
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"a zip archive holding {shown or 'nothing'}, not a torch checkpoint; unpack it and use the file inside"


def _describe_binary(head: bytes) -> str | None:
    for magic, what in BINARY_MAGIC:
        if head.startswith(magic):
            return what
    if _is_safetensors(head):
        return "a safetensors file, which this toolkit does not read; use the .pth/.pt checkpoint"
    return None


def _is_safetensors(head: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header."""
    return len(head) > 10 and head[8:10] == b'{"' and 0 < int.from_bytes(head[:8], "little") < 100_000_000


def _describe_text(head: bytes, path: Path) -> str | None:
    text = _as_text(head)
    if text is None:
        if _looks_like_pickle(head):
            return None
        return f"unrecognised binary data starting with {head[:8].hex(' ')}"
    stripped = text.lstrip("\ufeff \t\r\n")
    if head.startswith(LFS_POINTER_START):
        return ("a git-LFS pointer file, not the weights: the repository was cloned without git-lfs; "
                "run `git lfs pull` in it, or download the real file")
    if stripped[:15].lower().startswith(("<!doctype html", "<html")) or "<html" in stripped[:1000].lower():
        return "an HTML page, not the weights: a download saved the web page instead of the file?"
    if stripped.startswith(("{", "[")) and _is_json(path):
        return "a JSON file, e.g. a config, not model weights"
    if _looks_like_pickle(head):
        return None
    first_line = stripped.splitlines()[0][:60] if stripped else ""
    return f"a text file, starting {first_line!r}" if first_line else "a text file holding only whitespace"


def _as_text(head: bytes) -> str | None:
    """The head decoded as UTF-8, or None for binary data (a cut multi-byte character at the end is fine)."""
    if b"\x00" in head:
        return None
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start >= len(head) - 3:
            return head[:error.start].decode("utf-8")
        return None


def _is_json(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, OSError):
        return False
    return True


def _looks_like_pickle(head: bytes) -> bool:
    """True when `head` parses as pickle opcodes up to a STOP, or (for a longer file) up to where it was cut."""
    try:
        for _ in pickletools.genops(head):
            pass
    except ValueError as error:
        cut_short = len(head) == HEAD_BYTES
        return cut_short and not any(word in str(error) for word in ("unknown", "quote"))
    return True
