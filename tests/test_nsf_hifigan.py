"""NSF-HiFiGAN mel vocoder: mel extraction against 4.1's vectors, the tiny real-format fixture against
the reference generator's outputs, loading and error messages."""
from __future__ import annotations

import json
import shutil

import librosa
import numpy as np
import pytest
import torch

from conftest import ASSETS, FIXTURES
from core.audio import resample
from core.errors import ConfigError, MissingPretrainedError, SvcError
from core.fileio import torch_save
from vdecoder.nsf_hifigan import NSF_HIFIGAN_44K, MelExtractor, NsfHifiGAN, VocoderConfig
from vdecoder.nsf_hifigan.models import fuse_weight_norm

FIXTURE = FIXTURES / "nsf_hifigan"


def fixture_array(name: str) -> np.ndarray:
    return np.load(FIXTURE / name, allow_pickle=False)


@pytest.fixture(scope="module")
def vocoder() -> NsfHifiGAN:
    vocoder = NsfHifiGAN(FIXTURE / "model", "cpu")
    vocoder.load()
    return vocoder


@pytest.fixture
def tone(vector) -> torch.Tensor:
    return torch.from_numpy(vector("in_tone_44k"))[None]  # [1, 132300]


@pytest.mark.shared
def test_default_config_equals_openvpi_config():
    assert VocoderConfig.load(ASSETS / "nsf_hifigan" / "config.json") == NSF_HIFIGAN_44K
    assert MelExtractor.from_config(None).config == NSF_HIFIGAN_44K


@pytest.mark.shared
@pytest.mark.parametrize("keyshift, name", [(0, "vocoder_mel_tone"), (3.7, "vocoder_mel_tone_keyshift3.7")])
def test_mel_matches_vectors(tone, vector, keyshift, name):
    mel = MelExtractor()(tone, 44100, keyshift=keyshift)
    assert mel.shape == (1, 132300 // 512, 128)
    np.testing.assert_allclose(mel[0].numpy(), vector(name), rtol=0, atol=1e-4)


@pytest.mark.shared
def test_mel_of_resampled_input(tone, vector):
    """22.05 kHz input is resampled to 44.1 kHz with soxr (4.1: torchaudio, input made by resampy).

    Bins wholly below 9.5 kHz agree to 1e-2 (measured max 7.7e-3, mean 1.2e-5); above ~10.5 kHz the
    22.05 kHz signal has no content and each resampler's stop-band residue differs (up to 1.8 in ln),
    both near the 1e-5 floor.
    """
    x22 = torch.from_numpy(resample(tone[0].numpy(), 44100, 22050))[None]
    mel = MelExtractor()(x22, 22050)[0].numpy()
    reference = vector("vocoder_mel_tone22k_resampled")
    assert mel.shape == reference.shape
    upper_edges = librosa.mel_frequencies(130, fmin=40, fmax=16000)[2:]
    below = upper_edges < 9500
    np.testing.assert_allclose(mel[:, below], reference[:, below], rtol=0, atol=1e-2)
    assert mel[:, -8:].max() < -9 and reference[:, -8:].max() < -9


def test_mel_short_input_uses_constant_padding():
    mel = MelExtractor()(torch.ones(1, 700) * 0.1, 44100)
    assert mel.shape == (1, 1, 128) and torch.isfinite(mel).all()


@pytest.mark.shared
def test_fixture_mel(vocoder):
    mel = vocoder.extract_mel(torch.from_numpy(fixture_array("in_tone_44k.npy"))[None], 44100)
    np.testing.assert_allclose(mel.numpy(), fixture_array("out_mel.npy"), rtol=0, atol=1e-4)


@pytest.mark.shared
def test_source_without_randomness(vocoder):
    f0 = torch.from_numpy(fixture_array("in_f0.npy"))
    with torch.no_grad():
        source = vocoder.generator.m_source(f0, 512, deterministic=True)
    np.testing.assert_allclose(source.numpy(), fixture_array("out_source_norand.npy"), rtol=0, atol=1e-4)


@pytest.mark.shared
def test_audio_without_randomness(vocoder):
    mel = torch.from_numpy(fixture_array("out_mel.npy"))
    f0 = torch.from_numpy(fixture_array("in_f0.npy"))
    audio = vocoder.vocode(mel, f0, deterministic=True)
    assert audio.shape == (1, 86 * 512)
    np.testing.assert_allclose(audio.numpy(), fixture_array("out_audio_norand.npy")[:, 0], rtol=0, atol=1e-4)


@pytest.mark.shared
def test_audio_and_source_with_seed0(vocoder):
    """Same RNG draws in the same order as 4.1: rand(B, 9) phases, then randn_like([B, T*512, 9]) noise."""
    mel = torch.from_numpy(fixture_array("out_mel.npy"))
    f0 = torch.from_numpy(fixture_array("in_f0.npy"))
    torch.manual_seed(0)
    audio = vocoder.vocode(mel, f0[..., None])
    np.testing.assert_allclose(audio.numpy(), fixture_array("out_audio_seed0.npy")[:, 0], rtol=0, atol=1e-4)
    torch.manual_seed(0)
    with torch.no_grad():
        source = vocoder.generator.m_source(f0, 512)
    np.testing.assert_allclose(source.numpy(), fixture_array("out_source_seed0.npy"), rtol=0, atol=1e-4)
    assert not np.allclose(source.numpy(), fixture_array("out_source_norand.npy"), atol=1e-3)


@pytest.mark.shared
def test_log10_type_scales_mel(tmp_path):
    mel = torch.from_numpy(fixture_array("out_mel.npy"))[:, :16]
    f0 = torch.from_numpy(fixture_array("in_f0.npy"))[:, :16]
    log10 = NsfHifiGAN.from_type("nsf-hifigan-log10", FIXTURE / "model", "cpu")
    plain = NsfHifiGAN.from_type("nsf-hifigan", FIXTURE / "model", "cpu")
    assert log10.log10_mel and not plain.log10_mel
    torch.testing.assert_close(log10.vocode(mel, f0, deterministic=True),
                               plain.vocode(mel * 0.434294, f0, deterministic=True))
    with pytest.raises(ConfigError, match="unknown vocoder type"):
        NsfHifiGAN.from_type("hifigan", FIXTURE / "model")


@pytest.mark.shared
def test_vocoder_properties_and_f0_checks(vocoder):
    assert (vocoder.sample_rate, vocoder.hop_size, vocoder.num_mels) == (44100, 512, 128)
    with pytest.raises(SvcError, match="f0 frames"):
        vocoder.vocode(torch.zeros(1, 10, 128), torch.zeros(1, 9))
    longer_f0 = torch.full((1, 14), 220.0)
    assert vocoder.vocode(torch.zeros(1, 10, 128) - 5, longer_f0, deterministic=True).shape == (1, 5120)


def test_missing_vocoder_names_the_expected_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingPretrainedError, match="pretrain/nsf_hifigan/model") as info:
        NsfHifiGAN()
    assert "nsf_hifigan_20221211.zip" in str(info.value)


@pytest.mark.shared
def test_missing_config_is_named(tmp_path):
    shutil.copy(FIXTURE / "model", tmp_path / "model")
    with pytest.raises(MissingPretrainedError, match="config.json"):
        NsfHifiGAN(tmp_path / "model", "cpu")


@pytest.mark.shared
def test_checkpoint_not_fitting_config(tmp_path):
    shutil.copy(FIXTURE / "model", tmp_path / "model")
    config = json.loads((FIXTURE / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "upsample_initial_channel": 512}))
    with pytest.raises(SvcError, match="does not fit the config.json"):
        NsfHifiGAN(tmp_path / "model", "cpu").load()
    torch_save({"model": {}}, tmp_path / "model")
    with pytest.raises(SvcError, match="no 'generator'"):
        NsfHifiGAN(tmp_path / "model", "cpu").load()


def test_bad_config_values():
    with pytest.raises(ConfigError, match="hop_size"):
        VocoderConfig.from_dict({"hop_size": 480})


@pytest.mark.filterwarnings("ignore:.*weight_norm.*is deprecated:FutureWarning")
def test_fuse_weight_norm_matches_torch():
    """The checkpoint's legacy weight_g / weight_v names come from torch.nn.utils.weight_norm."""
    conv = torch.nn.utils.weight_norm(torch.nn.ConvTranspose1d(4, 3, 5))
    fused = fuse_weight_norm(conv.state_dict())
    assert set(fused) == {"weight", "bias"}
    torch.nn.utils.remove_weight_norm(conv)
    torch.testing.assert_close(fused["weight"], conv.weight.detach())
