"""Feature files never run code: the readers of core/feature_io.py, and every script that reads feature files
(train.py, train_diff.py, train_cluster.py, train_index.py, preprocess_hubert_f0.py's skip-check) faced with
crafted payload files, damaged files and wrongly shaped ones."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion.dataset import load_clip
from core.config import save_config
from tests.synthetic import write_synthetic_dataset
from training.dataset import DataOptions, SpeakerDataset, spec_path
from core.errors import SvcError, UnsafeFileError
from core.feature_io import (load_array, load_aug_mel, load_f0, load_object_npy, load_spec, load_units,
                                read_feature)
from preprocess.features import FeatureSettings, feature_paths, missing_outputs, output_is_valid, write_outputs
from tests.conftest import captured_logs, run_script
from tests.test_cluster import write_units
from tests.test_diffusion_train import make_dataset as make_diffusion_dataset
from tests.test_diffusion_train import tiny_config as tiny_diffusion_config
from tests.test_train import tiny_config as tiny_train_config

KINDS = ("soft", "f0", "spec", "vol", "mel", "aug_mel", "aug_vol")
ALL_OUTPUTS = FeatureSettings(use_diff=True)
FRAMES, UNITS, DIM, MELS = 20, 12, 8, 16


class SystemPayload:
    """Unpickling it runs `touch <marker>` through os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class OpenPayload:
    """Unpickling it creates `<marker>` through the open builtin."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


PAYLOADS = {"os.system": SystemPayload, "open": OpenPayload}


def plant(path: Path, payload: object) -> None:
    """A crafted feature file: torch.save of the payload for .pt, an object array holding it for .npy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".pt":
        torch.save(payload, path)
    else:
        array = np.empty(2, dtype=object)
        array[0], array[1] = payload, 1.0
        np.save(path, array, allow_pickle=True)


def writer_values(seed: int = 0) -> dict:
    """One file's outputs in the forms FeatureExtractor.compute hands to write_outputs."""
    rng = np.random.default_rng(seed)
    f0, uv = rng.uniform(100, 400, FRAMES), (rng.random(FRAMES) > 0.3).astype(np.float64)
    return {
        "soft": torch.from_numpy(rng.standard_normal((1, DIM, UNITS)).astype(np.float32)),
        "f0": np.asanyarray((f0, uv), dtype=object),
        "spec": torch.from_numpy(rng.random((33, FRAMES)).astype(np.float32)),
        "vol": rng.random(FRAMES).astype(np.float32),
        "mel": rng.standard_normal((FRAMES, MELS)).astype(np.float32),
        "aug_mel": np.asanyarray((rng.standard_normal((FRAMES, MELS)).astype(np.float32), -3.25), dtype=object),
        "aug_vol": rng.random(FRAMES).astype(np.float32),
    }


def written_wav(folder: Path, seed: int = 0) -> tuple[Path, dict]:
    """`<folder>/spk/a.wav`'s seven outputs written by the preprocessing writer; -> (wav, values)."""
    wav = folder / "spk" / "a.wav"
    wav.parent.mkdir(parents=True, exist_ok=True)
    values = writer_values(seed)
    write_outputs(values, feature_paths(wav, ALL_OUTPUTS))
    return wav, values


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "| ERROR" in line]


def assert_refused(result, path: Path, marker: Path) -> None:
    """Non-zero exit, no traceback, one error line naming the file and saying why; the payload never ran."""
    assert not marker.exists(), "the payload ran"
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and "holds pickled code references" in lines[0], lines[0]


# ---------------------------------------------------------------- the readers

@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_every_reader_refuses_a_payload(tmp_path, kind, payload, mmap):
    marker = tmp_path / "pwned"
    path = feature_paths(tmp_path / "spk" / "a.wav", ALL_OUTPUTS)[kind]
    plant(path, PAYLOADS[payload](marker))
    with pytest.raises(UnsafeFileError, match="holds pickled code references") as caught:
        read_feature(kind, path, mmap=mmap)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert not marker.exists()
    assert not output_is_valid(kind, path)
    assert not marker.exists()


def test_raw_pickles_and_legacy_torch_files_are_refused(tmp_path):
    """np.load(allow_pickle=True) unpickles a file that is not .npy at all; torch has a pre-zip format."""
    marker = tmp_path / "pwned"
    raw = tmp_path / "a.wav.f0.npy"
    raw.write_bytes(pickle.dumps(SystemPayload(marker)))
    legacy = tmp_path / "a.wav.soft.pt"
    torch.save({"units": SystemPayload(marker)}, legacy, _use_new_zipfile_serialization=False)
    unframed = tmp_path / "b.wav.soft.pt"
    unframed.write_bytes(pickle.dumps(SystemPayload(marker), protocol=5))
    with pytest.raises(UnsafeFileError, match=r"a\.wav\.f0\.npy holds pickled code references \(posix\.system\)"):
        load_f0(raw)
    for path in (legacy, unframed):
        for mmap in (False, True):
            with pytest.raises(UnsafeFileError, match=f"{path.name} holds pickled"):
                load_units(path, mmap=mmap)
    (tmp_path / "plain.npy").write_bytes(pickle.dumps(np.zeros(3)))  # harmless, but not a .npy file
    with pytest.raises(SvcError, match=r"plain\.npy is a pickle, not a \.npy array file") as caught:
        load_array(tmp_path / "plain.npy")
    assert not isinstance(caught.value, UnsafeFileError)
    assert not marker.exists()


def test_writer_output_round_trips(tmp_path):
    wav, values = written_wav(tmp_path)
    paths = feature_paths(wav, ALL_OUTPUTS)
    torch.testing.assert_close(load_units(paths["soft"]), values["soft"])
    torch.testing.assert_close(load_units(paths["soft"], mmap=True), values["soft"])
    torch.testing.assert_close(load_spec(paths["spec"]), values["spec"])
    f0, uv = load_f0(paths["f0"])
    np.testing.assert_array_equal(f0, values["f0"][0].astype(np.float64))
    np.testing.assert_array_equal(uv, values["f0"][1].astype(np.float64))
    assert f0.dtype == uv.dtype == np.float64
    for kind, ndim in (("vol", 1), ("mel", 2), ("aug_vol", 1)):
        np.testing.assert_array_equal(load_array(paths[kind], ndim), values[kind])
    mel, keyshift = load_aug_mel(paths["aug_mel"])
    np.testing.assert_array_equal(mel, values["aug_mel"][0])
    assert keyshift == -3.25 and mel.dtype == np.float32
    assert np.load(paths["f0"], allow_pickle=True).dtype == object  # still 4.1's format on disk
    assert missing_outputs(wav, ALL_OUTPUTS) == {}


def test_object_arrays_written_by_numpy_1_load(tmp_path):
    """4.1 under numpy 1 pickled the array with protocol 3 under `numpy.core.multiarray` (numpy 2: `numpy._core`)."""
    f0 = writer_values()["f0"]
    data = pickle.dumps(f0, protocol=3)
    assert b"cnumpy._core.multiarray\n" in data  # protocol 3 names globals as text lines, without lengths
    path = tmp_path / "a.wav.f0.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(f0))
        f.write(data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    np.testing.assert_array_equal(load_f0(path)[0], f0[0].astype(np.float64))


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_files_are_damaged_not_unsafe(tmp_path, kind):
    wav, _ = written_wav(tmp_path)
    path = feature_paths(wav, ALL_OUTPUTS)[kind]
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 3])
    for mmap in (False, True):
        with pytest.raises(SvcError, match="damaged") as caught:
            read_feature(kind, path, mmap=mmap)
        assert str(path) in str(caught.value) and not isinstance(caught.value, UnsafeFileError)
    assert not output_is_valid(kind, path)


WRONG_SHAPES = {
    "units [D, T]": ("a.wav.soft.pt", torch.zeros(DIM, UNITS), load_units, r"expected \[1, D, T\]"),
    "units [2, D, T]": ("a.wav.soft.pt", torch.zeros(2, DIM, UNITS), load_units, r"expected \[1, D, T\]"),
    "integer units": ("a.wav.soft.pt", torch.zeros(1, DIM, UNITS, dtype=torch.long), load_units, "floating point"),
    "units in a dict": ("a.wav.soft.pt", {"units": torch.zeros(1, DIM, UNITS)}, load_units, "expected a tensor"),
    "spec [1, F, T]": ("a.spec.pt", torch.zeros(1, 33, FRAMES), load_spec, r"expected \[freq, T\]"),
    "f0 of three rows": ("a.wav.f0.npy", np.zeros((3, FRAMES)), load_f0, r"expected an \(f0, uv\) pair"),
    "f0 rows of two lengths": ("a.wav.f0.npy", np.asanyarray((np.zeros(5), np.zeros(4)), dtype=object), load_f0,
                               "same 1-D length"),
    "f0 of strings": ("a.wav.f0.npy", np.asanyarray((["a"] * 3, ["b"] * 3), dtype=object), load_f0,
                      "does not hold numbers"),
    "vol [T, 1]": ("a.wav.vol.npy", np.zeros((FRAMES, 1), np.float32), lambda p: load_array(p, 1), "expected 1-D"),
    "vol of strings": ("a.wav.vol.npy", np.array(["x"] * FRAMES), lambda p: load_array(p, 1), "plain numbers"),
    "vol of objects": ("a.wav.vol.npy", np.array([1.0, None], dtype=object), lambda p: load_array(p, 1),
                       "holds Python objects"),
    "aug_mel of three": ("a.wav.aug_mel.npy", np.asanyarray((np.zeros((4, 2)), 1.0, 2.0), dtype=object), load_aug_mel,
                         r"expected a \(mel, keyshift\) pair"),
    "aug_mel 1-D": ("a.wav.aug_mel.npy", np.asanyarray((np.zeros(4), 1.0), dtype=object), load_aug_mel,
                    r"expected \[T, n_mels\]"),
}


@pytest.mark.parametrize("case", WRONG_SHAPES)
def test_wrong_contents_name_the_file(tmp_path, case):
    name, value, reader, message = WRONG_SHAPES[case]
    path = tmp_path / name
    if name.endswith(".pt"):
        torch.save(value, path)
    else:
        np.save(path, value, allow_pickle=value.dtype == object)
    with pytest.raises(SvcError, match=message) as caught:
        reader(path)
    assert str(caught.value).startswith(str(path)) and not isinstance(caught.value, UnsafeFileError)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(SvcError, match=r"a\.wav\.f0\.npy is missing; run preprocess_hubert_f0\.py"):
        load_f0(tmp_path / "a.wav.f0.npy")
    (tmp_path / "a.wav.mel.npy").write_bytes(b"\x93NUMPY junk")
    with pytest.raises(SvcError, match=r"a\.wav\.mel\.npy is damaged"):
        load_array(tmp_path / "a.wav.mel.npy", 2)
    torch.save(torch.zeros(1, DIM, UNITS), tmp_path / "units.pt")
    with pytest.raises(SvcError, match=r"units\.pt is not a \.npy array file"):
        load_object_npy(tmp_path / "units.pt")
    with pytest.raises(SvcError, match=r"a\.wav\.mel\.npy is damaged"):
        load_units(tmp_path / "a.wav.mel.npy")


# ---------------------------------------------------------------- the preprocessing skip-check

@pytest.fixture
def warnings_logged():
    with captured_logs("WARNING") as messages:
        yield messages


def test_skip_check_warns_about_refused_files_and_not_about_missing_ones(tmp_path, warnings_logged):
    marker = tmp_path / "pwned"
    wav, _ = written_wav(tmp_path)
    paths = feature_paths(wav, ALL_OUTPUTS)
    plant(paths["f0"], SystemPayload(marker))
    plant(paths["soft"], OpenPayload(marker))
    paths["mel"].write_bytes(paths["mel"].read_bytes()[:100])
    paths["vol"].unlink()
    missing = missing_outputs(wav, ALL_OUTPUTS)
    assert not marker.exists()
    assert set(missing) == {"f0", "soft", "mel", "vol"}
    assert len(warnings_logged) == 3, warnings_logged
    assert f"{paths['f0']} holds pickled code references (posix.system); recomputing it" in warnings_logged
    assert f"{paths['soft']} holds pickled code references (io.open); recomputing it" in warnings_logged
    assert any(m.startswith(f"{paths['mel']} is damaged") and m.endswith("; recomputing it") for m in warnings_logged)
    assert not any(str(paths["vol"]) in m for m in warnings_logged)  # missing: silent, as before
    warnings_logged.clear()
    assert set(missing_outputs(wav, ALL_OUTPUTS, warn=False)) == set(missing) and not warnings_logged


@pytest.mark.shared
@pytest.mark.slow
def test_preprocess_script_warns_and_recomputes(tmp_path):
    from tests.test_preprocess import make_project

    dataset = make_project(tmp_path, n_speakers=1, n_files=1)
    run_script("preprocess_hubert_f0.py", "--f0_predictor", "pm", "--use_diff", cwd=tmp_path)
    wav = dataset / "spk0" / "0.wav"
    paths = feature_paths(wav, ALL_OUTPUTS)
    marker = tmp_path / "pwned"
    for kind, path in paths.items():
        plant(path, (SystemPayload if kind in ("f0", "soft", "vol", "aug_mel") else OpenPayload)(marker))
    result = run_script("preprocess_hubert_f0.py", "--f0_predictor", "pm", "--use_diff", cwd=tmp_path)
    assert not marker.exists()
    warnings = [line for line in result.stderr.splitlines() if "| WARNING" in line]
    for path in paths.values():
        assert any(f"{path.relative_to(tmp_path)} holds pickled code references" in line
                   and line.endswith("recomputing it") for line in warnings), (path, result.stderr)
    assert "1 files processed" in result.stderr
    for kind, path in paths.items():
        read_feature(kind, path)  # a valid, safe file again
        assert output_is_valid(kind, path)
    assert not marker.exists()


# ---------------------------------------------------------------- train.py

def test_so_vits_dataset_refuses_payloads(tmp_path):
    marker = tmp_path / "pwned"
    wavs = write_synthetic_dataset(tmp_path, ["alice"], items_per_speaker=1, seconds=0.3, ssl_dim=4,
                                   with_volume=True)
    options = DataOptions(speakers={"alice": 0}, vol_embedding=True)
    files = {"f0": f"{wavs[0]}.f0.npy", "soft": f"{wavs[0]}.soft.pt", "vol": f"{wavs[0]}.vol.npy",
             "spec": spec_path(wavs[0])}
    originals = {kind: Path(path).read_bytes() for kind, path in files.items() if Path(path).exists()}
    for kind, path in files.items():
        plant(Path(path), SystemPayload(marker))
        with pytest.raises(UnsafeFileError, match=f"{Path(path).name} holds pickled code references"):
            SpeakerDataset(wavs, options)[0]
        assert not marker.exists(), kind
        if kind in originals:
            Path(path).write_bytes(originals[kind])
        else:
            Path(path).unlink()
    assert SpeakerDataset(wavs, options)[0].f0.shape == (int(0.3 * 44100) // 512,)


@pytest.mark.slow
def test_train_script_refuses_a_crafted_f0_file(tmp_path):
    hps = tiny_train_config(tmp_path / "data", eval_interval=1000)
    save_config(hps, tmp_path / "config.json")
    f0_file = Path(Path(hps.data.training_files).read_text().split()[0] + ".f0.npy")
    marker = tmp_path / "pwned"
    plant(f0_file, SystemPayload(marker))
    result = run_script("train.py", "-c", tmp_path / "config.json", "-m", "run", "--logs_dir", tmp_path / "logs",
                        "--max_steps", "1", "--cpu", cwd=tmp_path, check=False, timeout=300)
    assert_refused(result, f0_file, marker)
    assert not list((tmp_path / "logs" / "run").glob("G_*.pth"))


# ---------------------------------------------------------------- train_diff.py

@pytest.mark.parametrize("suffix", [".soft.pt", ".f0.npy", ".vol.npy", ".mel.npy", ".aug_mel.npy", ".aug_vol.npy"])
def test_diffusion_dataset_refuses_payloads(tmp_path, suffix):
    lists = make_diffusion_dataset(tmp_path)
    wav = Path(lists["train"]).read_text().split()[0]
    marker = tmp_path / "pwned"
    plant(Path(wav + suffix), OpenPayload(marker))
    with pytest.raises(UnsafeFileError, match=f"{Path(wav).name}{suffix} holds pickled code references"):
        load_clip(wav, "nearest")
    assert not marker.exists()


@pytest.mark.slow
def test_train_diff_script_refuses_a_crafted_aug_mel_file(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = tiny_diffusion_config(tmp_path, make_diffusion_dataset(tmp_path), epochs=1)
    save_config(config, tmp_path / "diffusion.yaml")
    aug_mel = Path(Path(config.data.training_files).read_text().split()[0] + ".aug_mel.npy")
    marker = tmp_path / "pwned"
    plant(aug_mel, SystemPayload(marker))
    result = run_script("train_diff.py", "-c", tmp_path / "diffusion.yaml", cwd=tmp_path, check=False, timeout=300)
    assert_refused(result, aug_mel, marker)


# ---------------------------------------------------------------- train_cluster.py and train_index.py

def _units_dataset(root: Path, marker: Path) -> Path:
    """Two speakers of valid `.soft.pt` files, plus a crafted one in bob's folder; -> the crafted file."""
    rng = np.random.default_rng(0)
    for name in ("alice", "bob"):
        for i in range(2):
            write_units(root / name / f"{i}.wav.soft.pt", rng.standard_normal((50, DIM)).astype(np.float32))
    crafted = root / "bob" / "2.wav.soft.pt"
    plant(crafted, SystemPayload(marker))
    return crafted


@pytest.mark.parametrize("script", ["train_cluster.py", "cluster/train_cluster.py"])
def test_train_cluster_script_refuses_a_crafted_units_file(tmp_path, script):
    marker = tmp_path / "pwned"
    crafted = _units_dataset(tmp_path / "ds", marker)
    result = run_script(script, "--dataset", tmp_path / "ds", "--output", tmp_path / "logs", "--n_clusters", "4",
                        cwd=tmp_path, check=False)
    assert_refused(result, crafted, marker)
    assert not (tmp_path / "logs" / "kmeans_10000.pt").exists()


def test_train_index_script_refuses_a_crafted_units_file(tmp_path):
    marker = tmp_path / "pwned"
    crafted = _units_dataset(tmp_path / "ds", marker)
    (tmp_path / "config.json").write_text(json.dumps({"data": {}, "model": {}, "spk": {"alice": 0, "bob": 1}}))
    result = run_script("train_index.py", "--root_dir", tmp_path / "ds", "-c", tmp_path / "config.json",
                        "--output_dir", tmp_path / "logs", cwd=tmp_path, check=False)
    assert_refused(result, crafted, marker)
    assert not (tmp_path / "logs" / "feature_and_index.pkl").exists()

