"""Whisper PPG: the tiny real-format fixture against 4.1's outputs, and the real Whisper-base encoder."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ASSETS, FIXTURES
from core.audio import load_audio
from core.errors import MissingPretrainedError, SvcError
from core.fileio import torch_save
from vencoder import get_speech_encoder
from vencoder.whisper import WhisperPPG, load_audio_encoder, log_mel_spectrogram, sinusoids, window_starts

FIXTURE = FIXTURES / "whisper_ppg"
BASE_ENCODER = ASSETS / "whisper" / "base_encoder.pt"


def fixture_array(name: str) -> np.ndarray:
    return np.load(FIXTURE / name, allow_pickle=False)


@pytest.fixture(scope="module")
def tiny_ppg() -> WhisperPPG:
    return get_speech_encoder("whisper-ppg", "cpu", pretrain_dir=FIXTURE)


@pytest.mark.shared
def test_log_mel_matches_reference():
    wav = torch.from_numpy(fixture_array("in_16k_1s.npy"))
    mel = log_mel_spectrogram(F.pad(wav, (0, 480000 - wav.shape[0])))
    np.testing.assert_allclose(mel.numpy(), fixture_array("out_mel_1s_padded30s.npy"), rtol=0, atol=1e-5)


@pytest.mark.shared
def test_full_encoder_output_matches_reference(tiny_ppg):
    mel = torch.from_numpy(fixture_array("out_mel_1s_padded30s.npy"))
    with torch.inference_mode():
        out = tiny_ppg.model(mel[None])
    np.testing.assert_allclose(out.numpy(), fixture_array("out_encoder_full_1s.npy"), rtol=0, atol=1e-4)


@pytest.mark.shared
@pytest.mark.parametrize("case", ["1s", "odd"])
def test_ppg_matches_reference(tiny_ppg, case):
    ppg = tiny_ppg(torch.from_numpy(fixture_array(f"in_16k_{case}.npy")))
    reference = fixture_array(f"out_ppg_{case}.npy")
    assert ppg.shape == reference.shape
    np.testing.assert_allclose(ppg.numpy(), reference, rtol=0, atol=1e-4)


@pytest.mark.shared
def test_fixture_dims_read_from_file(tiny_ppg):
    assert tiny_ppg.hidden_dim == 64
    assert (tiny_ppg.dims.n_audio_head, tiny_ppg.dims.n_audio_layer, tiny_ppg.dims.n_mels) == (4, 2, 80)


@pytest.mark.shared
def test_encoder_only_file_without_dims(tmp_path):
    """Dims come from tensor shapes (heads = width // 64) when the file has none; decoder keys are ignored."""
    state = torch.load(FIXTURE / "medium.pt", weights_only=True)["model_state_dict"]
    encoder_only = {k: v for k, v in state.items() if k.startswith("encoder.")}
    torch_save({"model_state_dict": encoder_only}, tmp_path / "small.pt")
    encoder = load_audio_encoder(tmp_path / "small.pt")
    assert (encoder.dims.n_audio_state, encoder.dims.n_audio_head, encoder.dims.n_audio_layer) == (64, 1, 2)
    torch_save({"dims": {"n_audio_head": 4}, "model_state_dict": encoder_only}, tmp_path / "base.pt")
    ppg = get_speech_encoder("whisper-ppg-base", "cpu", pretrain_dir=tmp_path)
    reference = fixture_array("out_ppg_1s.npy")
    np.testing.assert_allclose(ppg(torch.from_numpy(fixture_array("in_16k_1s.npy"))).numpy(), reference, atol=1e-4)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(MissingPretrainedError, match="large-v2.pt") as info:
        get_speech_encoder("whisper-ppg-large", "cpu", pretrain_dir=tmp_path)
    assert "speech encoder whisper-ppg-large" in str(info.value)


def test_not_a_whisper_file(tmp_path):
    torch_save({"model": {"x": torch.zeros(2)}}, tmp_path / "medium.pt")
    with pytest.raises(SvcError, match="no 'encoder"):
        get_speech_encoder("whisper-ppg", "cpu", pretrain_dir=tmp_path)


@pytest.mark.shared
def test_dims_not_fitting_tensors(tmp_path):
    checkpoint = torch.load(FIXTURE / "medium.pt", weights_only=True)
    torch_save({**checkpoint, "dims": {**checkpoint["dims"], "n_audio_layer": 3}}, tmp_path / "medium.pt")
    with pytest.raises(SvcError, match="does not match a Whisper encoder.*blocks.2"):
        load_audio_encoder(tmp_path / "medium.pt")


def test_sinusoids_layout():
    table = sinusoids(1500, 64)
    assert table.shape == (1500, 64)
    assert torch.equal(table[0, :32], torch.zeros(32)) and torch.equal(table[0, 32:], torch.ones(32))
    assert torch.isclose(table[7, 0], torch.sin(torch.tensor(7.0)))
    assert torch.isclose(table[7, 31], torch.sin(torch.tensor(7e-4)))  # slowest timescale 1/10000


def test_window_starts_cover_every_frame():
    assert window_starts(0) == [0] and window_starts(1500) == [0]
    assert window_starts(1501) == [0, 1250]
    assert window_starts(2750) == [0, 1250] and window_starts(2751) == [0, 1250, 2500]


@pytest.fixture(scope="module")
def base_ppg() -> WhisperPPG:
    return WhisperPPG("whisper-ppg-base", BASE_ENCODER, torch.device("cpu"))


@pytest.mark.shared
def test_real_base_encoder_on_speech(base_ppg):
    wav, _ = load_audio(ASSETS / "audio" / "speech" / "cmu_us_awb_arctic_a0007.wav", sr=16000)
    wav = torch.from_numpy(wav[:32123])
    ppg = base_ppg(wav)
    assert ppg.shape == (1, 512, 32123 // 320)
    assert torch.isfinite(ppg).all() and ppg.std() > 0.1
    # the same encoder gives different features for a different utterance
    other = base_ppg(torch.roll(wav, 8000))
    assert (other - ppg).abs().mean() > 0.05


@pytest.mark.shared
@pytest.mark.slow
def test_real_base_encoder_beyond_30s(base_ppg):
    """35 s: N // 320 frames; the first window's frames are exactly the 30 s result."""
    parts = [load_audio(ASSETS / "audio" / "singing" / f"{name}.wav", sr=16000)[0]
             for name in ("vocadito_1", "vocadito_10")]
    wav = torch.from_numpy(np.concatenate(parts)[:35 * 16000 + 77])
    long = base_ppg(wav)
    first = base_ppg(wav[:480000])
    assert long.shape == (1, 512, wav.shape[0] // 320) and first.shape == (1, 512, 1500)
    assert torch.isfinite(long).all()
    join = (1250 + 1500) // 2  # the second window takes over in the middle of the overlap
    torch.testing.assert_close(long[..., :join], first[..., :join], rtol=0, atol=1e-4)
    assert not torch.allclose(long[..., join:1500], first[..., join:1500], atol=1e-2)
