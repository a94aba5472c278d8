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
`os.system`, and whose numpy reconstruction trusts the file's dtype and bytes (raw bytes for an object
dtype are pointers); here the pickle is interpreted by `core.npy_pickle`, which builds the arrays itself
from checked numbers. A .npy header is checked against the file's size before anything is read. A file
that names any other global raises `UnsafeFeatureFileError` (an UnsafeFileError); a missing, damaged or
wrongly shaped file raises `FeatureFileError` (an SvcError). Both name the file.
"""
from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import re
import struct
import warnings
import zipfile
from pathlib import Path
from tokenize import TokenError
from typing import Any, BinaryIO, Callable

import numpy as np
import torch

from core.errors import SvcError, UnsafeFileError
from core.npy_pickle import (MAX_ELEMENTS, STAND_INS, CodeReference, PickleRefused, load_numpy_pickle,
                             named_globals)

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

MAX_HEADER_BYTES = 10_000  # numpy's own limit on the header it parses
MAX_ARRAY_ELEMENTS = MAX_ELEMENTS
MAX_PICKLE_BYTES = 2 ** 30
_HEADER_LENGTH_LAYOUT = {(1, 0): "<H", (2, 0): "<I"}
_READ_HEADER = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
_HEADER_ERRORS = (ValueError, TypeError, SyntaxError, KeyError, OverflowError, RecursionError, TokenError)


def _unpickle_numpy(path: Path, data: bytes) -> Any:
    """The value pickled in `data`, built by core.npy_pickle (UnsafeFeatureFileError for any other global)."""
    try:
        return load_numpy_pickle(data)
    except CodeReference as reference:
        raise unsafe(path, f"holds pickled code references ({reference})") from None
    except PickleRefused as problem:
        references = [name for name in named_globals(data) if name not in STAND_INS]
        if references:  # refused before the interpreter reached them: still a payload
            raise unsafe(path, f"holds pickled code references ({', '.join(dict.fromkeys(references))})") from None
        raise refused(path, f"is damaged (its pickle {problem})") from None


def _read_npy_header(path: Path, f: BinaryIO) -> tuple[tuple[int, ...], np.dtype, int]:
    """Check the magic and read the header, leaving `f` at the data; -> (shape, dtype, bytes after the header).

    The header's length is checked against numpy's limit and the file's size before it is read, and its
    shape must be sizes. A raw pickle (which np.load(allow_pickle=True) would also have run) is interpreted
    by core.npy_pickle, only to report code references in it.
    """
    size = os.fstat(f.fileno()).st_size
    start = f.read(len(NPY_MAGIC) + 2)
    if not start.startswith(NPY_MAGIC):
        if start.startswith(PICKLE_PROTO):
            f.seek(0)
            _unpickle_numpy(path, _read_pickle(path, f, size))
            raise refused(path, "is a pickle, not a .npy array file")
        raise refused(path, "is not a .npy array file")
    version = tuple(start[len(NPY_MAGIC):])
    if version not in _HEADER_LENGTH_LAYOUT:
        shown = ".".join(map(str, version)) or "missing"
        raise refused(path, f"is damaged (.npy format version {shown}; feature files use 1.0 or 2.0)")
    layout = _HEADER_LENGTH_LAYOUT[version]
    length_bytes = f.read(struct.calcsize(layout))
    length = struct.unpack(layout, length_bytes)[0] if len(length_bytes) == struct.calcsize(layout) else -1
    if not 0 <= length <= min(MAX_HEADER_BYTES, size - f.tell()):
        raise refused(path, f"is damaged (its header length {length} does not fit the file or numpy's limit)")
    try:
        shape, _, dtype = _READ_HEADER[version](io.BytesIO(length_bytes + f.read(length)))
    except _HEADER_ERRORS as error:
        raise refused(path, f"is damaged (its header: {_first_line(error)[:200]})") from None
    if any(n < 0 for n in shape) or math.prod(shape) > MAX_ARRAY_ELEMENTS:
        raise refused(path, f"is damaged (its header announces the shape {shape}; at most "
                            f"{MAX_ARRAY_ELEMENTS} values are read)")
    return shape, dtype, size - f.tell()


def _check_data_size(path: Path, shape: tuple[int, ...], dtype: np.dtype, available: int) -> None:
    """A plain array's data must be exactly what its header announces, so nothing is allocated for a lie."""
    announced = math.prod(shape) * dtype.itemsize
    if announced != available:
        raise refused(path, f"is damaged (its header announces {announced} bytes of data, "
                            f"the file holds {available})")


def _read_pickle(path: Path, f: BinaryIO, available: int) -> bytes:
    if available > MAX_PICKLE_BYTES:
        raise refused(path, f"is damaged (a pickle of {available} bytes; feature files hold at most "
                            f"{MAX_PICKLE_BYTES})")
    return f.read(available)


def load_object_npy(path: str | os.PathLike) -> np.ndarray:
    """np.load for 4.1's object-array .npy files (f0, aug_mel) that never runs code from the file.

    Plain arrays load as usual (allow_pickle=False) once their size is checked; the pickle of an object array
    is interpreted by core.npy_pickle, which builds the arrays itself (numpy never unpickles anything).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            shape, dtype, available = _read_npy_header(path, f)
            if not dtype.hasobject:
                _check_data_size(path, shape, dtype, available)
                f.seek(0)
                return np.load(f, allow_pickle=False)
            data = _read_pickle(path, f, available)
    except FileNotFoundError:
        raise refused(path, "is missing", "; run preprocess_hubert_f0.py") from None
    except (OSError, ValueError, EOFError) as error:
        raise refused(path, f"is damaged ({_first_line(error)})") from None
    array = _unpickle_numpy(path, data)
    if not isinstance(array, np.ndarray) or array.shape != shape:
        raise refused(path, f"does not hold the {shape} array its header announces")
    return array


def load_array(path: str | os.PathLike, ndim: int | None = None, mmap: bool = False) -> np.ndarray:
    """A plain numeric .npy file (.vol, .mel, .aug_vol), read with allow_pickle=False.

    `ndim` is the number of dimensions it must have; `mmap` maps the file instead of reading it (cheap checks).
    The header's shape and dtype are checked against the file's size before anything is read or mapped.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            shape, dtype, available = _read_npy_header(path, f)
        if dtype.hasobject:
            load_object_npy(path)  # a payload is reported as such; harmless objects still do not belong here
            raise refused(path, "holds Python objects, expected plain numbers")
        if dtype.kind not in NUMBER_KINDS:
            raise refused(path, f"holds {dtype.str} values, expected plain numbers")
        if ndim is not None and len(shape) != ndim:
            raise refused(path, f"holds an array of shape {shape}, expected {ndim}-D")
        _check_data_size(path, shape, dtype, available)
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise refused(path, "is missing", "; run preprocess_hubert_f0.py") from None
    except (OSError, ValueError, EOFError) as error:
        raise refused(path, f"is damaged ({_first_line(error)})") from None
    if array.dtype.kind not in NUMBER_KINDS or array.shape != shape:
        raise refused(path, f"changed while it was read (now {array.dtype.str} {array.shape})")
    return array


def load_f0(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """`X.wav.f0.npy` (object array `(2, T)` of f0 and uv) -> (f0 Hz float64 `[T]`, uv float64 `[T]`)."""
    array = load_object_npy(path)
    if array.ndim == 0 or len(array) != 2:
        raise refused(path, f"holds an array of shape {array.shape}, expected an (f0, uv) pair")
    try:
        f0, uv = (np.asarray(row, dtype=np.float64) for row in array)
    except (TypeError, ValueError, OverflowError, RecursionError):
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
    except (TypeError, ValueError, OverflowError, RecursionError):
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
    except (RuntimeError, OSError, EOFError, ValueError, IndexError, KeyError, TypeError, AttributeError,
            OverflowError, NotImplementedError, struct.error, zipfile.BadZipFile) as error:
        raise refused(path, f"is damaged ({_first_line(error)[:300]})") from None  # torch rebuilds from damaged parts
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
                entries = [e for e in archive.infolist() if e.filename.endswith("data.pkl")]
                if sum(e.file_size for e in entries) > MAX_PICKLE_BYTES:  # a deflate bomb
                    return b""
                return b"".join(archive.read(e) for e in entries)
        return path.read_bytes() if path.stat().st_size <= MAX_PICKLE_BYTES else b""
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, ValueError, EOFError,
            NotImplementedError):
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
