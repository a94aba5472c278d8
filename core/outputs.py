"""Where results go: safe file names, staying inside the chosen folder, never overwriting an input.

A result name is often built from something a user or a client typed (an input name, a speaker name, an
upload's file name). `safe_stem` turns any such text into one plain file-name part; `file_in_folder` is the
last check before writing; `check_output_file` refuses an output that is one of the inputs, or an existing
file that was not meant to be replaced.
"""
from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

from core.errors import SvcError

STEM_BYTES = 120        # a stem's share of a file name; tags, numbering and a temp prefix must fit beside it
NAME_BYTES = 200        # longest result name; atomic writes add ".<name>.<random>.tmp", within 255 bytes
SEPARATORS = re.compile(r"[/\\]")
TRAINING_CHECKPOINT = re.compile(r"^[DG]_\d+\.pth$")


def safe_stem(name: str, fallback: str = "audio", max_bytes: int = STEM_BYTES) -> str:
    """A plain file-name part from any text: its last path component only (`/` and `\\` both separate),
    control characters and NUL as `_`, no leading dots or spaces (a result is never hidden), at most
    `max_bytes` bytes of UTF-8 (cut on a character boundary), and never '', '.' or '..'.
    Letters of any script are kept."""
    parts = [part for part in SEPARATORS.split(str(name)) if part.strip() not in ("", ".", "..")]
    base = parts[-1] if parts else ""
    cleaned = "".join("_" if _unsafe(char) else char for char in base).strip().lstrip(".").strip()
    cleaned = cleaned.encode("utf-8")[:max_bytes].decode("utf-8", "ignore").rstrip()
    return cleaned or fallback


def _unsafe(char: str) -> bool:
    """NUL, control and format characters, line/paragraph separators and lone surrogates."""
    return unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp")


def file_in_folder(folder: Path, name: str) -> Path:
    """`folder/name`, after proving that `name` is one plain name whose path lies directly in `folder`."""
    plain = (name not in ("", ".", "..") and not SEPARATORS.search(name) and "\0" not in name
             and len(name.encode("utf-8", "surrogateescape")) <= NAME_BYTES)
    target = Path(folder) / name
    if not plain or Path(os.path.normpath(target)).parent != Path(os.path.normpath(folder)):
        raise SvcError(f"refusing to write {name!r}: a result name must be one plain file name inside {folder}")
    return target


def same_file(first: Path, second: Path) -> bool:
    """True when both paths name one file (also through a symbolic or hard link)."""
    try:
        return os.path.samefile(first, second)
    except OSError:
        return Path(os.path.abspath(first)) == Path(os.path.abspath(second))


def check_output_file(output: Path, inputs: list[Path], flag: str, overwrite: bool,
                      only_checkpoints: bool = False) -> None:
    """Refuse an `output` that is one of `inputs` (always), or an existing file unless `overwrite`.

    With `only_checkpoints`, an existing file is refused only when it is a training checkpoint (D_/G_<step>.pth).
    """
    output = Path(output)
    for source in inputs:
        if same_file(output, Path(source)):
            raise SvcError(f"{flag} {output} is the input {source}; choose another output path "
                           "(an input is never overwritten)")
    if output.is_dir():
        raise SvcError(f"{flag} {output} is a folder; give a file path")
    if overwrite or not (output.exists() or output.is_symlink()):
        return
    if not only_checkpoints or TRAINING_CHECKPOINT.match(output.name):
        raise SvcError(f"{flag} {output} exists already; choose another path or add --overwrite to replace it")
