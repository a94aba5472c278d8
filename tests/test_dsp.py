import numpy as np
import pytest
import torch

from core import dsp

pytestmark = pytest.mark.shared


def tone() -> torch.Tensor:
    from conftest import VECTORS
    return torch.from_numpy(np.load(VECTORS / "in_tone_44k.npy"))


def test_spectrogram_matches_reference(vector):
    spec = dsp.spectrogram(tone()[None])[0]
    expected = vector("spec_tone")
    assert spec.shape == expected.shape
    np.testing.assert_allclose(spec.numpy(), expected, atol=1e-4)


def test_loss_mel_matches_reference(vector):
    np.testing.assert_allclose(dsp.mel_filterbank(44100, 2048, 80, 0.0, 22050.0, torch.float32, "cpu").numpy(),
                               vector("mel_basis_80_44100_2048"), atol=1e-6)
    mel = dsp.mel_spectrogram(tone()[None])[0]
    np.testing.assert_allclose(mel.numpy(), vector("mel80_tone"), atol=1e-4)


def test_volume_matches_reference(vector):
    np.testing.assert_allclose(dsp.volume(tone()[None])[0].numpy(), vector("volume_tone"), atol=1e-6)
    short = dsp.volume(tone()[:44400])
    assert short.shape == (86,)
    np.testing.assert_allclose(short.numpy(), vector("volume_tone_1s300"), atol=1e-6)


def test_f0_to_coarse_matches_reference(vector):
    coarse = dsp.f0_to_coarse(torch.from_numpy(vector("in_f0_values")))
    np.testing.assert_array_equal(coarse.numpy(), vector("f0_coarse"))
    sample = dsp.f0_to_coarse(torch.tensor([0.0, 50.0, 100.0, 440.0, 1100.0, 2000.0]))
    assert sample.tolist() == [1, 1, 20, 122, 255, 0]


@pytest.mark.parametrize("mode", ["left", "nearest", "linear"])
@pytest.mark.parametrize("src,dst", [(149, 258), (10, 17), (17, 10), (5, 5), (1, 4)])
def test_repeat_expand_matches_reference(vector, mode, src, dst):
    content = torch.from_numpy(vector(f"in_content_8x{src}"))
    out = dsp.repeat_expand_2d(content, dst, mode)
    np.testing.assert_allclose(out.numpy(), vector(f"repeat_expand_{mode}_{src}to{dst}"), atol=1e-6)
