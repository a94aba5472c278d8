"""The one place that reads the per-wav feature files (spec §4.3), without ever running code from them.

| file | reader | returns |
| --- | --- | --- |
| `X.wav.soft.pt` | `load_units` | torch float `[1, D, T_enc]` |
| `X.spec.pt` | `load_spec` | torch float `[freq, T]` |
| `X.wav.f0.npy` | `load_f0` | (f0 `[T]`, uv `[T]`), float64 |
| `X.wav.vol.npy`, `X.wav.aug_vol.npy` | `load_array(path, ndim=1)` | numbers `[T]` |
| `X.wav.mel.npy` | `load_array(path, ndim=2)` | numbers `[T, n_mels]` |
| `X.wav.aug_mel.npy` | `load_aug_mel` | (mel float32 `[T, n_mels]`, keyshift) |

Torch files are read with `weights_only=True`. 4.1 stores f0 and aug_mel as pickled numpy object arrays,
which `np.load(allow_pickle=True)` would unpickle with every global the file names, including
`os.system`; here they go through an unpickler that admits only numpy's array, dtype and scalar
reconstruction. A file that names anything else raises `UnsafeFeatureFileError` (an UnsafeFileError);
a missing, damaged or wrongly shaped file raises `FeatureFileError` (an SvcError). Both name the file.
"""
from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from core.errors import SvcError, UnsafeFileError

NPY_MAGIC = b"\x93NUMPY"
PICKLE_PROTO = b"\x80"
NUMBER_KINDS = "biuf"  # bool, signed and unsigned integers, floats
REWRITE_ADVICE = "; re-run preprocess_hubert_f0.py to write it again"


class FeatureFileError(SvcError):
    """A feature file that cannot be used; `path` is the file, `problem` completes the sentence "<path> ...".

    Built by `refused` / `unsafe`, so the constructor stays Exception's one message (the form torch's
    DataLoader and pickling rebuild an exception from).
    """

    path: Path | None = None
    problem: str = ""


class UnsafeFeatureFileError(FeatureFileError, UnsafeFileError):
    """A feature file that holds pickled code references: refused before anything in it runs."""


def refused(path: str | os.PathLike, problem: str, advice: str = REWRITE_ADVICE) -> FeatureFileError:
    """A FeatureFileError: "<path> <problem><advice>"."""
    return _with_details(FeatureFileError(f"{path} {problem}{advice}"), path, problem)


def unsafe(path: str | os.PathLike, problem: str) -> UnsafeFeatureFileError:
    """An UnsafeFeatureFileError that says the file was not loaded and why that matters."""
    message = f"{path} {problem}; it was not loaded, because loading it could run code from the file{REWRITE_ADVICE}"
    return _with_details(UnsafeFeatureFileError(message), path, problem)


def _with_details(error: FeatureFileError, path: str | os.PathLike, problem: str) -> Any:
    error.path, error.problem = Path(path), problem
    return error


# ---------------------------------------------------------------- numpy files

_NUMPY_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _CodeReference(Exception):
    """Raised inside the unpickler; the readers turn it into UnsafeFeatureFileError."""


class _NumpyUnpickler(pickle.Unpickler):
    """Admits numpy's array, dtype and scalar reconstruction, which build data and run nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NUMPY_GLOBALS:
            raise _CodeReference(f"{module}.{name}")
        from numpy._core import multiarray

        return {"_reconstruct": multiarray._reconstruct, "scalar": multiarray.scalar,
                "ndarray": np.ndarray, "dtype": np.dtype}[name]

    def persistent_load(self, pid: Any) -> Any:
        raise _CodeReference("a persistent id")


def _unpickle_numpy(path: Path, data: bytes) -> Any:
    """Unpickle `data` admitting only numpy reconstruction (UnsafeFeatureFileError for any other global)."""
    try:
        return _NumpyUnpickler(io.BytesIO(data)).load()
    except _CodeReference as reference:
        raise unsafe(path, f"holds pickled code references ({reference})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError) as error:
        raise refused(path, f"is damaged ({_first_line(error)})") from None


def _read_npy_header(path: Path, f: io.BufferedReader) -> tuple[tuple[int, ...], np.dtype]:
    """Check the magic and read the header, leaving `f` at the data; -> (shape, dtype).

    A raw pickle (which np.load(allow_pickle=True) would also have run) is unpickled safely, only to
    report code references in it.
    """
    start = f.read(len(NPY_MAGIC))
    if start != NPY_MAGIC:
        if start.startswith(PICKLE_PROTO):
            _unpickle_numpy(path, start + f.read())
            raise refused(path, "is a pickle, not a .npy array file")
        raise refused(path, "is not a .npy array file")
    f.seek(0)
    version = np.lib.format.read_magic(f)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in read_header:
        raise refused(path, f"is damaged (.npy format version {version[0]}.{version[1]}; feature files use 1.0 or 2.0)")
    shape, _, dtype = read_header[version](f)
    return shape, dtype


def load_object_npy(path: str | os.PathLike) -> np.ndarray:
    """np.load for 4.1's object-array .npy files (f0, aug_mel) that never runs code from the file.

    Plain arrays load as usual (allow_pickle=False); object arrays go through the numpy-only unpickler.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            shape, dtype = _read_npy_header(path, f)
            if not dtype.hasobject:
                f.seek(0)
                return np.load(f, allow_pickle=False)
            array = _unpickle_numpy(path, f.read())
    except FileNotFoundError:
        raise refused(path, "is missing", "; run preprocess_hubert_f0.py") from None
    except (OSError, ValueError, EOFError, MemoryError) as error:
        raise refused(path, f"is damaged ({_first_line(error)})") from None
    if not isinstance(array, np.ndarray) or array.shape != shape:
        raise refused(path, f"does not hold the {shape} array its header announces")
    return array


def load_array(path: str | os.PathLike, ndim: int | None = None, mmap: bool = False) -> np.ndarray:
    """A plain numeric .npy file (.vol, .mel, .aug_vol), read with allow_pickle=False.

    `ndim` is the number of dimensions it must have; `mmap` maps the file instead of reading it (cheap checks).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            _, dtype = _read_npy_header(path, f)
        if dtype.hasobject:
            load_object_npy(path)  # a payload is reported as such; harmless objects still do not belong here
            raise refused(path, "holds Python objects, expected plain numbers")
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise refused(path, "is missing", "; run preprocess_hubert_f0.py") from None
    except (OSError, ValueError, EOFError, MemoryError) as error:
        raise refused(path, f"is damaged ({_first_line(error)})") from None
    if array.dtype.kind not in NUMBER_KINDS:
        raise refused(path, f"holds {array.dtype} values, expected plain numbers")
    if ndim is not None and array.ndim != ndim:
        raise refused(path, f"holds an array of shape {array.shape}, expected {ndim}-D")
    return array


def load_f0(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """`X.wav.f0.npy` (object array `(2, T)` of f0 and uv) -> (f0 Hz float64 `[T]`, uv float64 `[T]`)."""
    array = load_object_npy(path)
    if array.ndim == 0 or len(array) != 2:
        raise refused(path, f"holds an array of shape {array.shape}, expected an (f0, uv) pair")
    try:
        f0, uv = (np.asarray(row, dtype=np.float64) for row in array)
    except (TypeError, ValueError):
        raise refused(path, "does not hold numbers in its (f0, uv) rows") from None
    if f0.ndim != 1 or f0.shape != uv.shape:
        raise refused(path, f"holds f0 {f0.shape} and uv {uv.shape}; both must be the same 1-D length")
    return f0, uv


def load_aug_mel(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """`X.wav.aug_mel.npy` (object array `(2,)`) -> (mel float32 `[T, n_mels]`, keyshift in semitones)."""
    array = load_object_npy(path)
    if array.shape != (2,):
        raise refused(path, f"holds an array of shape {array.shape}, expected a (mel, keyshift) pair")
    try:
        mel, keyshift = np.asarray(array[0], dtype=np.float32), float(array[1])
    except (TypeError, ValueError):
        raise refused(path, "does not hold numbers in its (mel, keyshift) pair") from None
    if mel.ndim != 2:
        raise refused(path, f"holds a mel of shape {mel.shape}, expected [T, n_mels]")
    return mel, keyshift


# ---------------------------------------------------------------- torch files

_BLOCKED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_STRING_OPCODES = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                   "BINUNICODE8"}


def _load_tensor(path: Path, mmap: bool) -> torch.Tensor:
    """torch.load(weights_only=True) of a file that must hold one floating-point tensor."""
    try:
        use_mmap = mmap and zipfile.is_zipfile(path)  # mmap refuses the legacy format; read that in full
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing a crafted file
            value = torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except FileNotFoundError:
        raise refused(path, "is missing", "; run preprocess_hubert_f0.py") from None
    except pickle.UnpicklingError as error:
        raise _torch_refusal(path, error) from None
    except (RuntimeError, OSError, EOFError, ValueError, IndexError, KeyError) as error:
        raise refused(path, f"is damaged ({_first_line(error)})") from None
    if not isinstance(value, torch.Tensor):
        raise refused(path, f"holds a {type(value).__name__}, expected a tensor")
    if not value.is_floating_point():
        raise refused(path, f"holds a {value.dtype} tensor, expected floating point")
    return value


def _torch_refusal(path: Path, error: pickle.UnpicklingError) -> FeatureFileError:
    """Unsafe if the refused pickle names a global (torch says which, or a scan of the stream finds one)."""
    blocked = _BLOCKED_GLOBAL.search(str(error))
    references = [blocked[1]] if blocked else _pickled_references(_pickle_streams(path))
    if references:
        return unsafe(path, f"holds pickled code references ({', '.join(dict.fromkeys(references))})")
    detail = next((line.strip() for line in str(error).splitlines() if line.strip().startswith("Unsupported")),
                  _first_line(error))
    return refused(path, f"is damaged ({detail})")


def _pickle_streams(path: Path) -> bytes:
    """The pickle bytes of a torch file: `data.pkl` of the zip format, or the whole legacy/raw file."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return b"".join(archive.read(n) for n in archive.namelist() if n.endswith("data.pkl"))
        return path.read_bytes()
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return b""


def _pickled_references(data: bytes) -> list[str]:
    """The globals named in a sequence of pickles, found by reading opcodes (nothing is unpickled).

    STACK_GLOBAL takes its module and name from the two strings pushed before it. Reading stops at the
    first byte that is not a valid opcode.
    """
    references: list[str] = []
    start = 0
    while start < len(data):
        strings: list[str] = []
        end = None
        try:
            for opcode, arg, position in pickletools.genops(data[start:]):
                if opcode.name in _STRING_OPCODES:
                    strings.append(str(arg))
                elif opcode.name in ("GLOBAL", "INST"):
                    references.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    references.append(f"{strings[-2]}.{strings[-1]}")
                elif opcode.name == "STOP":
                    end = start + position + 1
        except ValueError:
            break
        if end is None:
            break
        start = end
    return references


def load_units(path: str | os.PathLike, mmap: bool = False) -> torch.Tensor:
    """`X.wav.soft.pt` -> content units `[1, D, T_enc]`."""
    path = Path(path)
    units = _load_tensor(path, mmap)
    if units.dim() != 3 or units.shape[0] != 1:
        raise refused(path, f"holds a tensor of shape {list(units.shape)}, expected [1, D, T]")
    return units


def load_spec(path: str | os.PathLike, mmap: bool = False) -> torch.Tensor:
    """`X.spec.pt` -> linear magnitude spectrogram `[freq, T]`."""
    path = Path(path)
    spec = _load_tensor(path, mmap)
    if spec.dim() != 2:
        raise refused(path, f"holds a tensor of shape {list(spec.shape)}, expected [freq, T]")
    return spec


# ---------------------------------------------------------------- by output kind

_READERS: dict[str, Callable[[Path, bool], Any]] = {
    "soft": lambda path, mmap: load_units(path, mmap),
    "spec": lambda path, mmap: load_spec(path, mmap),
    "f0": lambda path, mmap: load_f0(path),
    "vol": lambda path, mmap: load_array(path, 1, mmap),
    "mel": lambda path, mmap: load_array(path, 2, mmap),
    "aug_mel": lambda path, mmap: load_aug_mel(path),
    "aug_vol": lambda path, mmap: load_array(path, 1, mmap),
}


def read_feature(kind: str, path: str | os.PathLike, mmap: bool = False) -> Any:
    """Read output `kind` ("soft", "spec", "f0", "vol", "mel", "aug_mel", "aug_vol") with its reader."""
    if kind not in _READERS:
        raise ValueError(f"unknown feature kind {kind!r}")
    return _READERS[kind](Path(path), mmap)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
