"""Per-file features (preprocess/features.py) against 4.1's reference vectors, file formats and safe loading."""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from core import dsp
from core.errors import AudioError, SvcError, UnsafeFileError
from core.feature_io import load_aug_mel, load_f0, load_object_npy
from preprocess.features import (FeatureExtractor, FeatureSettings, augmentation_draws, feature_paths, file_seed,
                              missing_outputs, output_is_valid, process_file)
from tests.conftest import FIXTURES, VECTORS

pytestmark = pytest.mark.shared
TOL = 1e-4


@pytest.fixture(scope="module")
def pretrain(tmp_path_factory):
    """A pretrain/ folder holding the tiny ContentVec fixture under the real file name (64-dim vec768l12)."""
    folder = tmp_path_factory.mktemp("pretrain")
    shutil.copy(FIXTURES / "contentvec" / "checkpoint_best_legacy_500.pt", folder)
    return folder


@pytest.fixture(scope="module")
def extractor(pretrain):
    settings = FeatureSettings(f0_predictor="pm", use_diff=True, pretrain_dir=str(pretrain))
    return FeatureExtractor(settings, "cpu")


@pytest.fixture(scope="module")
def tone():
    return np.load(VECTORS / "in_tone_44k.npy")


@pytest.fixture
def tone_wav(tmp_path, tone):
    """in_tone_44k as a float WAV, so the samples read back are exactly the reference input."""
    path = tmp_path / "spk" / "tone.wav"
    path.parent.mkdir()
    soundfile.write(path, tone, 44100, subtype="FLOAT")
    return path


def test_load_reads_the_exact_samples(extractor, tone_wav, tone):
    np.testing.assert_array_equal(extractor.load(tone_wav), tone)


def test_features_match_4_1_vectors(extractor, tone, vector):
    values = extractor.compute(tone, ["spec", "vol", "mel", "f0"], seed=0)
    assert values["spec"].dtype == torch.float32 and tuple(values["spec"].shape) == (1025, 258)
    np.testing.assert_allclose(values["spec"].numpy(), vector("spec_tone"), atol=TOL, rtol=0)
    assert values["vol"].dtype == np.float32 and values["vol"].shape == (258,)
    np.testing.assert_allclose(values["vol"], vector("volume_tone"), atol=TOL, rtol=0)
    assert values["mel"].dtype == np.float32 and values["mel"].shape == (258, 128)
    np.testing.assert_allclose(values["mel"], vector("vocoder_mel_tone"), atol=TOL, rtol=0)
    f0 = values["f0"]
    assert f0.dtype == object and f0.shape == (2, 258)
    np.testing.assert_allclose(f0[0].astype(np.float64), vector("f0_pm_tone"), atol=1e-3, rtol=0)
    np.testing.assert_array_equal(f0[1].astype(np.float64), vector("uv_pm_tone"))


def test_keyshift_mel_matches_4_1(extractor, tone, vector):
    np.testing.assert_allclose(extractor.mel(tone, 3.7), vector("vocoder_mel_tone_keyshift3.7"), atol=TOL, rtol=0)


def test_units_match_the_encoder_reference(pretrain):
    """At 16 kHz the resampling step is the identity, so the units must equal 4.1's encoder output."""
    settings = FeatureSettings(f0_predictor="pm", sampling_rate=16000, pretrain_dir=str(pretrain))
    units = FeatureExtractor(settings).units(np.load(FIXTURES / "contentvec" / "in_16k_1s.npy"))
    reference = np.load(FIXTURES / "contentvec" / "out_vec768l12_1s.npy")
    assert units.dtype == torch.float32 and units.shape == reference.shape  # [1, 64, 49]
    np.testing.assert_allclose(units.numpy(), reference, atol=TOL, rtol=0)


def test_units_at_44k(extractor, tone):
    units = extractor.units(tone)
    assert units.shape[:2] == (1, 64) and abs(units.shape[2] - 48000 // 320) <= 1


def test_augmentation_is_seeded_and_in_range(extractor, tone):
    s1, k1 = augmentation_draws(tone, file_seed("spk/a.wav"))
    assert (s1, k1) == augmentation_draws(tone, file_seed("spk/a.wav"))
    assert (s1, k1) != augmentation_draws(tone, file_seed("spk/b.wav"))
    peak = float(np.abs(tone).max())
    assert -1.0 <= s1 <= min(1.0, math.log10(1.0 / (peak + 1e-5)))
    assert -5.0 <= k1 <= 5.0
    values = extractor.compute(tone, ["aug_mel", "aug_vol"], seed=file_seed("spk/a.wav"))
    mel, keyshift = values["aug_mel"]
    assert keyshift == k1 and type(keyshift) is float
    scaled = (tone * 10.0 ** s1).astype(np.float32)
    np.testing.assert_allclose(mel, extractor.mel(scaled, k1), atol=1e-6)
    np.testing.assert_allclose(values["aug_vol"], dsp.volume(torch.from_numpy(scaled)).numpy(), atol=1e-7)


def test_file_names():
    paths = feature_paths(Path("d/spk/x.wav"), FeatureSettings(use_diff=True))
    assert {k: str(v) for k, v in paths.items()} == {
        "soft": "d/spk/x.wav.soft.pt", "f0": "d/spk/x.wav.f0.npy", "spec": "d/spk/x.spec.pt",
        "vol": "d/spk/x.wav.vol.npy", "mel": "d/spk/x.wav.mel.npy", "aug_mel": "d/spk/x.wav.aug_mel.npy",
        "aug_vol": "d/spk/x.wav.aug_vol.npy"}
    assert set(feature_paths(Path("x.wav"), FeatureSettings())) == {"soft", "f0", "spec"}
    assert set(feature_paths(Path("x.wav"), FeatureSettings(write_volume=True))) == {"soft", "f0", "spec", "vol"}


def test_the_encoder_runs_on_onnx_runtime_with_torch_features(extractor, pretrain, tone):
    from vencoder.ort_encoder import OrtEncoder
    fast = FeatureExtractor(FeatureSettings(f0_predictor="pm", pretrain_dir=str(pretrain), precision="auto"), "cpu")
    assert isinstance(fast.encoder, OrtEncoder) and not isinstance(extractor.encoder, OrtEncoder)  # default fp32
    np.testing.assert_allclose(fast.units(tone).numpy(), extractor.units(tone).numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(SvcError, match="unknown precision 'int8' \\(choose one of: auto, fp32, onnx\\)"):
        FeatureExtractor(FeatureSettings(f0_predictor="pm", pretrain_dir=str(pretrain), precision="int8"), "cpu")


def test_written_files_load_the_4_1_way(extractor, tone_wav):
    written = process_file(extractor, tone_wav, seed=file_seed("spk/tone.wav"))
    assert sorted(written) == sorted(feature_paths(tone_wav, extractor.settings))
    paths = feature_paths(tone_wav, extractor.settings)
    soft = torch.load(paths["soft"], weights_only=True)
    assert isinstance(soft, torch.Tensor) and soft.dtype == torch.float32 and soft.dim() == 3 and soft.shape[1] == 64
    spec = torch.load(paths["spec"], weights_only=True)
    assert spec.dtype == torch.float32 and tuple(spec.shape) == (1025, 258)
    f0 = np.load(paths["f0"], allow_pickle=True)
    assert f0.dtype == object and f0.shape == (2, 258)
    aug = np.load(paths["aug_mel"], allow_pickle=True)
    assert aug.shape == (2,) and aug[0].dtype == np.float32 and aug[0].shape == (258, 128)
    assert isinstance(aug[1], float)
    for kind, shape in (("vol", (258,)), ("mel", (258, 128)), ("aug_vol", (258,))):
        array = np.load(paths[kind])
        assert array.dtype == np.float32 and array.shape == shape
    # the safe loaders read the same values
    f0_safe, uv_safe = load_f0(paths["f0"])
    np.testing.assert_array_equal(f0_safe, f0[0].astype(np.float64))
    np.testing.assert_array_equal(uv_safe, f0[1].astype(np.float64))
    mel_safe, keyshift = load_aug_mel(paths["aug_mel"])
    np.testing.assert_array_equal(mel_safe, aug[0])
    assert keyshift == aug[1]
    assert missing_outputs(tone_wav, extractor.settings) == {}
    assert process_file(extractor, tone_wav, seed=0) == []  # complete: nothing recomputed


def test_only_broken_outputs_are_rewritten(extractor, tone_wav):
    seed = file_seed("spk/tone.wav")
    process_file(extractor, tone_wav, seed)
    paths = feature_paths(tone_wav, extractor.settings)
    before = {k: p.read_bytes() for k, p in paths.items()}
    mel, (aug_mel, keyshift) = np.load(paths["mel"]), load_aug_mel(paths["aug_mel"])
    paths["soft"].write_bytes(before["soft"][:100])        # truncated zip
    paths["aug_mel"].write_bytes(before["aug_mel"][:-50])  # truncated pickle
    paths["mel"].write_bytes(before["mel"][:-512])         # truncated array data
    paths["vol"].unlink()
    assert set(missing_outputs(tone_wav, extractor.settings)) == {"soft", "aug_mel", "mel", "vol"}
    assert sorted(process_file(extractor, tone_wav, seed)) == ["aug_mel", "mel", "soft", "vol"]
    np.testing.assert_array_equal(np.load(paths["mel"]), mel)
    again_mel, again_keyshift = load_aug_mel(paths["aug_mel"])  # same seed: the same augmentation
    np.testing.assert_array_equal(again_mel, aug_mel)
    assert again_keyshift == keyshift
    assert paths["f0"].read_bytes() == before["f0"]
    assert all(output_is_valid(k, p) for k, p in paths.items())


@pytest.mark.parametrize("case", ["short", "silent", "nan", "garbage"])
def test_bad_audio_is_refused(extractor, tmp_path, case):
    path = tmp_path / f"{case}.wav"
    if case == "garbage":
        path.write_bytes(b"RIFF not really a wave file")
    else:
        audio = {"short": np.full(1000, 0.1), "silent": np.zeros(44100),
                 "nan": np.where(np.arange(44100) == 5, np.nan, 0.1)}[case]
        soundfile.write(path, audio.astype(np.float32), 44100, subtype="FLOAT")
    with pytest.raises(AudioError, match={"short": "too short", "silent": "silent", "nan": "NaN",
                                          "garbage": "cannot read"}[case]):
        extractor.load(path)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_object_npy_loader_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = np.empty(2, dtype=object)
    evil[0], evil[1] = _Payload(marker), 1.0
    np.save(tmp_path / "evil.npy", evil, allow_pickle=True)
    with pytest.raises(UnsafeFileError, match="not loaded"):
        load_object_npy(tmp_path / "evil.npy")
    assert not marker.exists()
    assert not output_is_valid("aug_mel", tmp_path / "evil.npy")
    assert not marker.exists()


def test_object_npy_loader_reads_plain_arrays_and_rejects_junk(tmp_path):
    np.save(tmp_path / "plain.npy", np.arange(4, dtype=np.float32))
    np.testing.assert_array_equal(load_object_npy(tmp_path / "plain.npy"), np.arange(4, dtype=np.float32))
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY junk")
    with pytest.raises(SvcError):
        load_object_npy(tmp_path / "junk.npy")
