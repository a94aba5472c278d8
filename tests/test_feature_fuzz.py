"""The feature readers are memory-safe: seeded mutation fuzzing of each one in a capped child process, crafted
object-array pickles and lying .npy headers, and genuine 4.1 files of every pickle protocol loading bit-exactly."""
from __future__ import annotations

import io
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from core.feature_io import (FeatureFileError, UnsafeFeatureFileError, load_array, load_aug_mel, load_f0,
                             load_object_npy)
from tests.fuzz import REPO, fuzz_reader

FRAMES = 203


def load_vol(path: str) -> np.ndarray:
    """The reader of `.vol.npy` files, as the datasets call it."""
    return load_array(path, ndim=1)


def load_vol_mapped(path: str) -> np.ndarray:
    return load_array(path, ndim=1, mmap=True)


def f0_value(seed: int = 0) -> np.ndarray:
    """(f0, uv) as 4.1's preprocessing hands it to np.save."""
    rng = np.random.default_rng(seed)
    f0, uv = rng.uniform(100, 400, FRAMES), (rng.random(FRAMES) > 0.3).astype(np.float64)
    return np.asanyarray((f0, uv), dtype=object)


def aug_mel_value(seed: int = 0, mel_dtype: str = "<f4", fortran: bool = False, keyshift: object = -3.25):
    mel = np.random.default_rng(seed).standard_normal((40, 16)).astype(mel_dtype)
    return np.asanyarray((np.asfortranarray(mel) if fortran else mel, keyshift), dtype=object)


def write_object_npy(path: Path, value: np.ndarray, protocol: int = 4, numpy_1: bool = False) -> Path:
    """An object-array .npy file as np.save writes it, with the pickle protocol chosen; `numpy_1` names
    numpy 1's modules (`numpy.core`), as 4.1 under numpy 1 wrote them (protocols 2 and 3 name globals as text)."""
    data = pickle.dumps(value, protocol=protocol)
    if numpy_1:
        assert protocol in (2, 3)
        data = data.replace(b"cnumpy._core.", b"cnumpy.core.")
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(value))
        f.write(data)
    return path


def write_header(path: Path, shape: tuple, descr: str = "<f4", data: bytes = b"") -> Path:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
        f.write(data)
    return path


def run_in_child(call: str, path: Path) -> subprocess.CompletedProcess:
    """`call` (e.g. "load_f0") on `path` in a fresh interpreter, so that a crash cannot take the tests along;
    the child prints the refusal's type and message."""
    script = ("import sys\nfrom core import feature_io\n"
              f"try:\n    feature_io.{call}(sys.argv[1])\nexcept feature_io.FeatureFileError as error:\n"
              "    print(type(error).__name__, error)\nelse:\n    print('loaded')\n")
    return subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


class _RawObjectArray:
    """Pickles as numpy's reconstruction of an object array whose state gives raw bytes (pointers) to `O8`."""

    def __init__(self, shape: tuple[int, ...], contents: bytes):
        self.shape, self.contents = shape, contents

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return _reconstruct, (np.ndarray, (0,), b"b"), (1, self.shape, np.dtype(object), False, self.contents)


class _SharedBytesArray:
    """Pickles as a float32 array whose bytes are one object shared (memoised) with other arrays."""

    def __init__(self, blob: bytes):
        self.blob = blob

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        shape = (len(self.blob) // 4,)
        return _reconstruct, (np.ndarray, (0,), b"b"), (1, shape, np.dtype("<f4"), False, self.blob)


# ---------------------------------------------------------------- fuzzing


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("seeds")
    torch.save(torch.randn(1, 8, 30), folder / "a.wav.soft.pt")
    torch.save(torch.rand(33, 40), folder / "a.spec.pt")
    np.save(folder / "a.wav.vol.npy", np.random.default_rng(0).random(FRAMES).astype(np.float32))
    return {"f0": write_object_npy(folder / "a.wav.f0.npy", f0_value()),
            "f0_numpy_1": write_object_npy(folder / "b.wav.f0.npy", f0_value(1), protocol=3, numpy_1=True),
            "aug_mel": write_object_npy(folder / "a.wav.aug_mel.npy", aug_mel_value()),
            "vol": folder / "a.wav.vol.npy", "soft": folder / "a.wav.soft.pt", "spec": folder / "a.spec.pt"}


FUZZED = {
    "load_f0": ("core.feature_io:load_f0", ("f0", "f0_numpy_1"), 3000),
    "load_aug_mel": ("core.feature_io:load_aug_mel", ("aug_mel",), 3000),
    "load_array(ndim=1)": ("tests.test_feature_fuzz:load_vol", ("vol",), 3000),
    "load_array(ndim=1, mmap)": ("tests.test_feature_fuzz:load_vol_mapped", ("vol",), 1500),
    "load_units": ("core.feature_io:load_units", ("soft",), 1000),
    "load_spec": ("core.feature_io:load_spec", ("spec",), 1000),
}


@pytest.mark.parametrize("reader", FUZZED)
def test_mutated_feature_files_are_refused_without_crashing(tmp_path, seeds, reader):
    """No signal, no allocation past the cap, only FeatureFileError with one line (tests/fuzz.py)."""
    target, names, cases = FUZZED[reader]
    report = fuzz_reader(target, [seeds[name] for name in names], cases=cases, seed=11, keep_dir=tmp_path)
    assert report.ok, report.summary()


# ---------------------------------------------------------------- crafted pickles


def test_raw_bytes_for_an_object_dtype_are_refused_without_a_crash(tmp_path):
    """numpy's __setstate__ takes 16 attacker bytes as two object pointers; dereferencing them crashed."""
    path = tmp_path / "a.wav.f0.npy"
    data = pickle.dumps(_RawObjectArray((2,), b"\x41" * 16), protocol=3)
    assert b"_reconstruct" in data
    write_header(path, (2,), "|O", data)
    result = run_in_child("load_f0", path)
    assert result.returncode == 0, f"the reader died (exit {result.returncode}): {result.stderr[-500:]}"
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"FeatureFileError {path} is damaged"), result.stdout
    assert "object array raw bytes" in lines[0] and "0x" not in lines[0]


def test_an_object_array_that_is_not_what_numpy_writes_is_refused(tmp_path):
    """Elements given as a list of the wrong length (numpy reads past its end), inner arrays of too many dimensions."""
    short = write_header(tmp_path / "short.npy", (2,), "|O", pickle.dumps(_RawObjectArray((2,), [1.0]), protocol=4))
    result = run_in_child("load_object_npy", short)
    assert result.returncode == 0, f"the reader died (exit {result.returncode}): {result.stderr[-500:]}"
    assert result.stdout.strip() == (f"FeatureFileError {short} is damaged (its pickle gives an object array of 2 "
                                     "elements a list of 1); re-run preprocess_hubert_f0.py to write it again")
    cube = np.asanyarray((np.zeros((2, 2, 2), np.float32), 1.0), dtype=object)
    write_object_npy(tmp_path / "cube.npy", cube)
    with pytest.raises(FeatureFileError, match=r"cube\.npy is damaged \(its pickle has an array of 3 dimensions"):
        load_aug_mel(tmp_path / "cube.npy")


def test_memoised_bytes_cannot_multiply_the_memory_a_file_takes(tmp_path):
    blob = np.zeros(2 ** 18, np.float32).tobytes()  # 1 MiB, pickled once and then fetched from the memo
    value = np.empty(40, dtype=object)
    for index in range(40):
        value[index] = _SharedBytesArray(blob)
    path = write_header(tmp_path / "many.npy", (40,), "|O", pickle.dumps(value, protocol=4))
    assert path.stat().st_size < 2 * len(blob)
    with pytest.raises(FeatureFileError, match="builds more array data than the file holds"):
        load_object_npy(path)


# ---------------------------------------------------------------- lying headers


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_a_header_announcing_a_huge_array_in_a_tiny_file_is_refused_at_once(tmp_path, mmap):
    path = write_header(tmp_path / "a.wav.vol.npy", (2 ** 33,), data=b"\x00" * 40)
    started = time.monotonic()
    with pytest.raises(FeatureFileError) as caught:
        load_array(path, ndim=1, mmap=mmap)
    assert time.monotonic() - started < 1.0
    message = str(caught.value)
    assert message.startswith(f"{path} is damaged (its header announces the shape (8589934592,)") and "\n" not in message


def test_a_header_that_announces_more_or_less_data_than_the_file_holds_is_refused(tmp_path):
    longer = write_header(tmp_path / "a.wav.vol.npy", (1000,), data=b"\x00" * 40)
    with pytest.raises(FeatureFileError, match=r"announces 4000 bytes of data, the file holds 40\)"):
        load_array(longer, ndim=1, mmap=True)
    with pytest.raises(FeatureFileError, match=r"announces 4000 bytes of data, the file holds 40\)"):
        load_object_npy(longer)
    negative = write_header(tmp_path / "b.wav.vol.npy", (-10,), data=b"")
    with pytest.raises(FeatureFileError, match=r"b\.wav\.vol\.npy is damaged \(its header announces the shape"):
        load_array(negative)


def test_a_header_length_past_the_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "a.wav.vol.npy"
    path.write_bytes(b"\x93NUMPY\x02\x00" + (2 ** 32 - 16).to_bytes(4, "little") + b"{'descr': '<f4'")
    with pytest.raises(FeatureFileError, match=r"a\.wav\.vol\.npy is damaged \(its header length 4294967280 does "
                                               r"not fit the file or numpy's limit\)"):
        load_array(path)


def test_a_pickle_too_large_for_a_feature_file_is_refused_before_reading(tmp_path, monkeypatch):
    import core.feature_io as feature_io

    path = write_object_npy(tmp_path / "a.wav.f0.npy", f0_value())
    monkeypatch.setattr(feature_io, "MAX_PICKLE_BYTES", 1000)
    with pytest.raises(FeatureFileError, match=r"a\.wav\.f0\.npy is damaged \(a pickle of \d+ bytes; feature files "
                                               r"hold at most 1000\)"):
        load_f0(path)


# ---------------------------------------------------------------- genuine files


@pytest.mark.parametrize("protocol, numpy_1", [(2, False), (3, False), (4, False), (5, False), (2, True), (3, True)],
                         ids=["2", "3", "4 (numpy 2's np.save)", "5", "2 numpy 1", "3 (numpy 1's np.save)"])
def test_genuine_object_arrays_load_bit_exactly(tmp_path, protocol, numpy_1):
    f0 = f0_value(protocol)
    f0_path = write_object_npy(tmp_path / "a.wav.f0.npy", f0, protocol, numpy_1)
    loaded_f0, loaded_uv = load_f0(f0_path)
    assert loaded_f0.tobytes() == f0[0].astype(np.float64).tobytes()
    assert loaded_uv.tobytes() == f0[1].astype(np.float64).tobytes()
    for mel_dtype, fortran, keyshift in (("<f4", False, -3.25), (">f4", True, np.float64(2.5)), ("<f8", False, 1)):
        value = aug_mel_value(protocol, mel_dtype, fortran, keyshift)
        path = write_object_npy(tmp_path / "a.wav.aug_mel.npy", value, protocol, numpy_1)
        expected = pickle.loads(path.read_bytes()[path.read_bytes().index(b"\n") + 1:])  # a file made here
        loaded = load_object_npy(path)
        assert loaded.dtype == object and loaded.shape == (2,)
        assert loaded[0].dtype == expected[0].dtype and loaded[0].shape == expected[0].shape
        assert loaded[0].tobytes(order="A") == expected[0].tobytes(order="A")
        assert loaded[0].flags.f_contiguous == expected[0].flags.f_contiguous
        assert type(loaded[1]) is type(expected[1]) and loaded[1] == expected[1]
        mel, shift = load_aug_mel(path)
        np.testing.assert_array_equal(mel, value[0].astype(np.float32))
        assert shift == float(keyshift)


def test_genuine_files_as_np_save_writes_them_load(tmp_path):
    for name, value in (("a.wav.f0.npy", f0_value()), ("a.wav.aug_mel.npy", aug_mel_value())):
        np.save(tmp_path / name, value, allow_pickle=True)
        expected = np.load(tmp_path / name, allow_pickle=True)  # written here: safe to unpickle
        loaded = load_object_npy(tmp_path / name)
        assert loaded.shape == expected.shape and loaded.dtype == object
        for got, want in zip(loaded.ravel(), expected.ravel()):
            assert type(got) is type(want) and np.array_equal(got, want)


def test_a_raw_pickle_payload_is_still_unsafe(tmp_path):
    path = tmp_path / "a.wav.f0.npy"
    buffer = io.BytesIO()
    np.save(buffer, f0_value(), allow_pickle=True)
    data = buffer.getvalue().replace(b"\x8c\x05numpy\x94\x8c\x07ndarray", b"\x8c\x05posix\x94\x8c\x06system\x94")
    path.write_bytes(data)
    with pytest.raises(UnsafeFeatureFileError, match=r"holds pickled code references \(posix\.system\)"):
        load_f0(path)
