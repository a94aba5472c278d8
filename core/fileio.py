"""Atomic writes (temp file + rename) and safe loading of torch files.

Every output of a long job goes through `atomic_path`, so a killed run never leaves a half-written
file under the final name, and a re-run can trust any file that exists.
"""
from __future__ import annotations

import contextlib
import os
import pickle
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


def safe_torch_load(path: str | os.PathLike, map_location: "str | torch.device" = "cpu", mmap: bool = False) -> Any:
    """torch.load that never executes code from the file (weights_only=True).

    `mmap`: map a zip-format file's tensors instead of reading them (a tensor's bytes are read when it is
    used, so a checkpoint's optimizer state that is never used is never read); older files are read whole.

    A file that is plainly something else (empty, text, HTML, JSON, a git-LFS pointer, an archive) is
    refused with a NotACheckpointError saying what it looks like. A file that needs anything beyond
    tensors, containers and plain numbers is refused with an UnsafeFileError naming the file; a missing,
    truncated or corrupt file gives an SvcError.
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
    try:
        return torch.load(path, map_location=map_location, weights_only=True,
                          mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        if not _refused_by_weights_only(error):
            raise SvcError(f"cannot read {path}: {_first_line(error)} (a truncated or damaged file?)") from None
        raise UnsafeFileError(
            f"{path} holds objects that are not plain tensors ({_refusal_reason(error)}); "
            "it was not loaded, because loading it could run code from the file"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
        raise SvcError(f"cannot read {path}: {_first_line(error)} (a truncated or damaged file?)") from None


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
