"""preprocess_hubert_f0.py end to end: tiny dataset, 4.1's files, resume after a kill, bad files reported."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from core.config import load_template
from core.feature_io import load_aug_mel, load_f0
from preprocess.features import FeatureSettings, feature_paths, list_wavs, output_is_valid, run_batch
from tests.conftest import FIXTURES, REPO, VECTORS, run_script

pytestmark = pytest.mark.shared


def make_project(root: Path, n_speakers: int = 2, n_files: int = 2, seconds: float = 0.5,
                 vol_embedding: bool = False) -> Path:
    """configs/config.json, pretrain/ (tiny ContentVec fixture) and dataset/44k/<spk>/<n>.wav (16-bit)."""
    tone = np.load(VECTORS / "in_tone_44k.npy")
    n = int(seconds * 44100)
    for s in range(n_speakers):
        for f in range(n_files):
            path = root / "dataset" / "44k" / f"spk{s}" / f"{f}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            start = (s * n_files + f) * 4000
            soundfile.write(path, tone[start:start + n], 44100, subtype="PCM_16")
    (root / "pretrain").mkdir()
    shutil.copy(FIXTURES / "contentvec" / "checkpoint_best_legacy_500.pt", root / "pretrain")
    config = load_template("config_template.json").to_dict()
    config["model"]["vol_embedding"] = vol_embedding
    config["spk"] = {f"spk{s}": s for s in range(n_speakers)}
    (root / "configs").mkdir()
    (root / "configs" / "config.json").write_text(json.dumps(config))
    shutil.copy(REPO / "configs_template" / "diffusion_template.yaml", root / "configs" / "diffusion.yaml")
    return root / "dataset" / "44k"


def check_outputs(wav: Path, settings: FeatureSettings) -> None:
    """Every output exists, loads as 4.1 loads it, and the frame counts agree."""
    n_frames = soundfile.info(str(wav)).frames // 512
    paths = feature_paths(wav, settings)
    assert all(output_is_valid(kind, path) for kind, path in paths.items()), wav
    soft = torch.load(paths["soft"], weights_only=True)
    assert soft.dtype == torch.float32 and soft.shape[:2] == (1, 64)
    spec = torch.load(paths["spec"], weights_only=True)
    assert tuple(spec.shape) == (1025, n_frames) and spec.dtype == torch.float32
    f0 = np.load(paths["f0"], allow_pickle=True)
    assert f0.shape == (2, n_frames)
    if "vol" in paths:
        assert np.load(paths["vol"]).shape == (n_frames,)
    if settings.use_diff:
        assert np.load(paths["mel"]).shape == (n_frames, 128)
        assert load_aug_mel(paths["aug_mel"])[0].shape == (n_frames, 128)
        assert np.load(paths["aug_vol"]).dtype == np.float32


def test_script_writes_4_1_files(tmp_path):
    dataset = make_project(tmp_path, vol_embedding=True)
    nested = dataset / "spk1" / "take2" / "n.wav"  # files in sub-folders of a speaker count too
    nested.parent.mkdir()
    shutil.copy(dataset / "spk1" / "0.wav", nested)
    shutil.copy(dataset / "spk1" / "0.wav", dataset / "stray.wav")  # not in a speaker folder: ignored
    result = run_script("preprocess_hubert_f0.py", "--f0_predictor", "pm", cwd=tmp_path)
    assert "5 files processed" in result.stderr
    assert "files was computed while the models loaded" in result.stderr  # pm runs ahead (preprocess.f0_ahead)
    settings = FeatureSettings(write_volume=True)
    for wav in list_wavs(dataset):
        check_outputs(wav, settings)
        assert not feature_paths(wav, FeatureSettings(use_diff=True))["mel"].exists()  # no --use_diff
    assert not (dataset / "stray.wav.soft.pt").exists()
    again = run_script("preprocess_hubert_f0.py", "--f0_predictor", "pm", cwd=tmp_path)
    assert "0 files processed, 5 already done" in again.stderr


@pytest.mark.slow
def test_workers_use_diff_and_bad_files(tmp_path):
    dataset = make_project(tmp_path)
    (dataset / "spk0" / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    soundfile.write(dataset / "spk1" / "silent.wav", np.zeros(22050, np.float32), 44100, subtype="PCM_16")
    result = run_script("preprocess_hubert_f0.py", "--f0_predictor", "dio", "--use_diff", "--num_processes", "2",
                        cwd=tmp_path, check=False)
    assert result.returncode == 1, result.stderr
    assert "spk0/broken.wav" in result.stderr and "spk1/silent.wav" in result.stderr
    assert "4 files processed" in result.stderr and "2 failed" in result.stderr
    assert "Traceback" not in result.stderr
    settings = FeatureSettings(use_diff=True)
    for wav in list_wavs(dataset):
        if wav.stem in ("broken", "silent"):
            assert not any(p.exists() for p in feature_paths(wav, settings).values())
        else:
            check_outputs(wav, settings)
            f0, uv = load_f0(feature_paths(wav, settings)["f0"])
            assert uv.max() == 1.0 and 150 < np.median(f0[uv > 0]) < 300  # the 220 Hz tone


@pytest.mark.slow
def test_resume_after_kill(tmp_path):
    dataset = make_project(tmp_path, n_speakers=2, n_files=8, seconds=1.5)  # enough work left at the kill
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, str(REPO / "preprocess_hubert_f0.py"), "--f0_predictor", "pm",
                                "--use_diff"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(dataset.rglob("*.soft.pt")) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.01)
        assert process.poll() is None, "finished before it could be killed"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    settings = FeatureSettings(use_diff=True)
    wavs = list_wavs(dataset)
    outputs = [(k, p) for w in wavs for k, p in feature_paths(w, settings).items()]
    assert not all(p.exists() for _, p in outputs)  # killed part-way
    assert all(output_is_valid(k, p) for k, p in outputs if p.exists())  # atomic writes: nothing half-written
    result = run_script("preprocess_hubert_f0.py", "--f0_predictor", "pm", "--use_diff", cwd=tmp_path)
    assert "already done" in result.stderr
    for wav in wavs:
        check_outputs(wav, settings)


def test_run_batch_reports_and_continues(tmp_path):
    dataset = make_project(tmp_path, n_speakers=1, n_files=2, seconds=0.3)
    soundfile.write(dataset / "spk0" / "short.wav", np.full(500, 0.1, np.float32), 44100)
    settings = FeatureSettings(f0_predictor="pm", pretrain_dir=str(tmp_path / "pretrain"))
    result = run_batch(dataset, settings, num_processes=1, progress=False)
    assert result.processed == 2 and result.skipped == 0
    assert [name for name, _ in result.failed] == ["spk0/short.wav"]
    assert "too short" in result.failed[0][1]
    feature_paths(dataset / "spk0" / "1.wav", settings)["f0"].write_bytes(b"\x93NUMPY")  # corrupt one output
    again = run_batch(dataset, settings, num_processes=1, progress=False)
    assert (again.processed, again.skipped, len(again.failed)) == (1, 1, 1)
    check_outputs(dataset / "spk0" / "1.wav", settings)


def test_missing_pretrained_is_one_clear_line(tmp_path):
    make_project(tmp_path, n_speakers=1, n_files=1)
    result = run_script("preprocess_hubert_f0.py", "--f0_predictor", "pm", "--pretrain_dir", tmp_path / "nowhere",
                        cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert "checkpoint_best_legacy_500.pt" in result.stderr and "Traceback" not in result.stderr


def test_bad_arguments(tmp_path, monkeypatch):
    import preprocess_hubert_f0
    from core.errors import SvcError

    make_project(tmp_path, n_speakers=1, n_files=1)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SvcError, match="unknown f0 predictor 'yin'"):
        preprocess_hubert_f0.main(["--f0_predictor", "yin"])
    with pytest.raises(SvcError, match="no .wav files"):
        preprocess_hubert_f0.main(["--in_dir", str(tmp_path / "empty"), "--f0_predictor", "pm"])
    with pytest.raises(SvcError, match="config file not found"):
        preprocess_hubert_f0.main(["-c", str(tmp_path / "missing.json")])


def test_settings_from_configs(tmp_path, monkeypatch):
    """Encoder, rates and volume from config.json; mel settings from the vocoder folder named by diffusion.yaml."""
    import yaml

    import preprocess_hubert_f0

    make_project(tmp_path, n_speakers=1, n_files=1, vol_embedding=True)
    monkeypatch.chdir(tmp_path)
    settings = preprocess_hubert_f0.build_settings(preprocess_hubert_f0.parse_args(["--f0_predictor", "dio"]))
    assert (settings.speech_encoder, settings.f0_predictor, settings.sampling_rate, settings.hop_length) == \
        ("vec768l12", "dio", 44100, 512)
    assert settings.write_volume and not settings.use_diff and settings.vocoder_config is None
    diffusion = yaml.safe_load((tmp_path / "configs" / "diffusion.yaml").read_text())
    diffusion["vocoder"]["ckpt"] = str(FIXTURES / "nsf_hifigan" / "model")
    (tmp_path / "configs" / "diffusion.yaml").write_text(yaml.safe_dump(diffusion))
    settings = preprocess_hubert_f0.build_settings(preprocess_hubert_f0.parse_args(["--use_diff"]))
    assert settings.use_diff and settings.vocoder_config == str(FIXTURES / "nsf_hifigan" / "config.json")
    assert settings.f0_predictor == "rmvpe"  # 4.1's default


# ---------------------------------------------------------------- the f0 computed ahead (preprocess.f0_ahead)

def test_f0_ahead_needs_no_torch():
    code = ("import sys; import preprocess.f0_ahead, preprocess.feature_files, f0_predictor.world, f0_predictor.pm; "
            "from f0_predictor import get_f0_predictor; get_f0_predictor('dio'); get_f0_predictor('pm'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _ahead_dataset(tmp_path: Path) -> tuple[Path, FeatureSettings]:
    dataset = make_project(tmp_path, n_speakers=2, n_files=2, seconds=0.3)
    soundfile.write(dataset / "spk0" / "silent.wav", np.zeros(22050, np.float32), 44100, subtype="PCM_16")
    return dataset, FeatureSettings(f0_predictor="dio", pretrain_dir=str(tmp_path / "pretrain"))


def test_compute_ahead_writes_the_batch_f0(tmp_path):
    import multiprocessing
    import threading

    from f0_predictor import get_f0_predictor
    from preprocess.f0_ahead import _compute_ahead
    from preprocess.feature_files import f0_value, load_training_audio

    dataset, settings = _ahead_dataset(tmp_path)
    kept = feature_paths(dataset / "spk1" / "1.wav", settings)["f0"]
    np.save(kept, np.zeros(3))  # an f0 file already there is left to the batch's check
    wavs = [str(w) for w in list_wavs(dataset)]
    written = multiprocessing.Value("i", 0)
    _compute_ahead(wavs, settings, threading.Event(), written)
    assert written.value == 3  # 4 tones, one of them already with an f0 file; the silent file is refused
    assert np.load(kept).shape == (3,)
    assert not feature_paths(dataset / "spk0" / "silent.wav", settings)["f0"].exists()
    predictor = get_f0_predictor("dio")
    for wav in ("spk0/0.wav", "spk0/1.wav", "spk1/0.wav"):
        path = feature_paths(dataset / wav, settings)["f0"]
        expected = f0_value(predictor, load_training_audio(dataset / wav, settings))
        assert all(np.array_equal(a, b) for a, b in zip(load_f0(path), expected))
    assert not [p for p in dataset.rglob(".*") if p.is_file()]  # no temporary files left

    stopped = threading.Event()
    stopped.set()
    for wav in wavs:
        feature_paths(Path(wav), settings)["f0"].unlink(missing_ok=True)
    _compute_ahead(wavs, settings, stopped, written)
    assert not list(dataset.rglob("*.f0.npy"))


def test_f0_ahead_forks_before_torch_and_the_batch_keeps_its_files(tmp_path):
    dataset, settings = _ahead_dataset(tmp_path)
    code = f"""
import sys
from preprocess.f0_ahead import start_f0_ahead
from preprocess.feature_files import FeatureSettings
ahead = start_f0_ahead(sys.argv[1], FeatureSettings(f0_predictor="dio", pretrain_dir=sys.argv[2]))
ahead.process.join()
print(ahead.finish(), ahead.process.exitcode)
"""
    out = subprocess.run([sys.executable, "-c", code, str(dataset), str(tmp_path / "pretrain")], cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["4", "0"], out.stderr
    f0_files = sorted(dataset.rglob("*.f0.npy"))
    assert len(f0_files) == 4 and all(output_is_valid("f0", path) for path in f0_files)
    stamps = [path.stat().st_mtime_ns for path in f0_files]
    result = run_batch(dataset, settings, num_processes=1, progress=False)
    assert result.processed == 4 and [name for name, _ in result.failed] == ["spk0/silent.wav"]
    assert [path.stat().st_mtime_ns for path in f0_files] == stamps  # kept, not computed again
    for wav in list_wavs(dataset):
        if wav.stem != "silent":
            check_outputs(wav, settings)


def test_f0_ahead_only_without_torch_and_for_one_core_predictors(tmp_path):
    from preprocess.f0_ahead import can_run_ahead, start_f0_ahead

    dataset, settings = _ahead_dataset(tmp_path)
    assert start_f0_ahead(dataset, settings) is None  # torch is loaded in this process: no fork
    assert not can_run_ahead(FeatureSettings(f0_predictor="rmvpe"))
    assert not list(dataset.rglob("*.f0.npy"))


def test_onnx_encoder_takes_two_files_at_once_with_the_same_features(tmp_path, monkeypatch):
    """With the encoder on ONNX Runtime and two threads, one process computes two files at once, each encoder
    call on one thread; the files equal those of the torch encoder taking one file at a time."""
    import threading

    from preprocess import features

    dataset = make_project(tmp_path, n_speakers=1, n_files=4, seconds=0.4)
    soundfile.write(dataset / "spk0" / "short.wav", np.full(500, 0.1, np.float32), 44100)
    reference = tmp_path / "reference"
    shutil.copytree(dataset, reference)
    pretrain = str(tmp_path / "pretrain")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    both_in_flight = threading.Barrier(2, timeout=20)  # broken (the file fails) unless two computes overlap
    calls = []
    compute = features.FeatureExtractor.compute

    def overlapping_compute(self, *args, **kwargs):
        calls.append(self.files_at_once)
        if len(calls) <= 2:
            both_in_flight.wait()
        return compute(self, *args, **kwargs)

    monkeypatch.setattr(features.FeatureExtractor, "compute", overlapping_compute)
    fast = run_batch(dataset, FeatureSettings(f0_predictor="dio", pretrain_dir=pretrain, precision="auto"),
                     num_processes=1, progress=False)
    monkeypatch.setattr(features.FeatureExtractor, "compute", compute)
    slow = run_batch(reference, FeatureSettings(f0_predictor="dio", pretrain_dir=pretrain), num_processes=1,
                     progress=False)
    assert calls == [2] * 4
    for result in (fast, slow):
        assert result.processed == 4 and [name for name, _ in result.failed] == ["spk0/short.wav"]
    for wav in sorted((dataset / "spk0").glob("[0-9].wav")):
        ours, theirs = (feature_paths(folder / "spk0" / wav.name, FeatureSettings()) for folder in (dataset, reference))
        np.testing.assert_allclose(torch.load(ours["soft"], weights_only=True),
                                   torch.load(theirs["soft"], weights_only=True), rtol=1e-4, atol=1e-5)
        assert torch.equal(torch.load(ours["spec"], weights_only=True), torch.load(theirs["spec"], weights_only=True))
        np.testing.assert_array_equal(np.load(ours["f0"], allow_pickle=True).astype(np.float64),
                                      np.load(theirs["f0"], allow_pickle=True).astype(np.float64))


def test_one_file_at_a_time_with_one_thread_or_the_torch_encoder(tmp_path, monkeypatch):
    from preprocess.features import FeatureExtractor

    make_project(tmp_path, n_speakers=1, n_files=1)
    pretrain = str(tmp_path / "pretrain")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    two = FeatureExtractor(FeatureSettings(f0_predictor="pm", pretrain_dir=pretrain, precision="auto"))
    assert two.files_at_once == 2 and two.encoder.session.get_session_options().intra_op_num_threads == 1
    assert FeatureExtractor(FeatureSettings(f0_predictor="pm", pretrain_dir=pretrain)).files_at_once == 1  # torch
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    one = FeatureExtractor(FeatureSettings(f0_predictor="pm", pretrain_dir=pretrain, precision="auto"))
    assert one.files_at_once == 1 and one.encoder.session.get_session_options().intra_op_num_threads == 1
