"""WavLM Base+ against the spec fixture and the format card (relative position buckets included)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import FIXTURES, SPEC
from vencoder.hubert import FAIRSEQ_RENAMES
from vencoder.wav2vec2 import (RelativePositionBias, RelativePositionDims, Wav2Vec2Model, check_state_dict,
                               rename_keys)
from vencoder.wavlm import TRAINING_ONLY_KEYS, WavLMBasePlus, wavlm_dims

FIXTURE = FIXTURES / "wavlm"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def encoder() -> WavLMBasePlus:
    return WavLMBasePlus("wavlmbase+", FIXTURE / "WavLM-Base+.pt", torch.device("cpu"))


@pytest.mark.shared
@pytest.mark.parametrize("tag", ["1s", "odd"])
def test_units_and_layers_match_fixture(encoder, tag):
    wav = torch.from_numpy(np.load(FIXTURE / f"in_16k_{tag}.npy"))
    units = encoder(wav)
    assert units.shape == (1, 64, (len(wav) - 400) // 320 + 1)
    assert np.abs(units.numpy() - np.load(FIXTURE / f"out_units_{tag}.npy")).max() < TOLERANCE
    layers = np.load(FIXTURE / f"out_layers_1to12_{tag}.npy")
    with torch.inference_mode():
        for layer, output in enumerate(encoder.model.layer_outputs(wav[None])):
            assert np.abs(output[0].numpy() - layers[layer]).max() < TOLERANCE, layer + 1


def test_relative_position_buckets_follow_the_card_formula():
    """bucket = 160*(rel > 0) + (|rel| if |rel| < 80 else min(159, 80 + int(log(|rel|/80)/log(800/80)*80)))."""
    bias = RelativePositionBias(heads=1, dims=RelativePositionDims(num_buckets=320, max_distance=800))
    relative = torch.tensor([0, 1, -1, 79, -79, 80, 100, -100, 400, 799, 800, -5000])
    expected = [0, 161, 1, 239, 79, 240, 247, 87, 295, 319, 319, 159]  # log(1.25)/log(10)*80 = 7.75 -> 87
    assert bias.bucket(relative).tolist() == expected


@pytest.mark.shared
def test_card_key_list_matches_our_model():
    card = json.loads((SPEC / "formats" / "wavlm.json").read_text())
    dims = wavlm_dims(card["real_size_cfg_assumed"])
    renamed = rename_keys({key: torch.empty(shape, device="meta") for key, shape in card["state_dict"].items()},
                          FAIRSEQ_RENAMES, TRAINING_ONLY_KEYS)
    with torch.device("meta"):
        ours = {key: tuple(value.shape) for key, value in Wav2Vec2Model(dims).state_dict().items()}
    check_state_dict(ours, {key: tuple(value.shape) for key, value in renamed.items()}, "wavlm card")


@pytest.mark.shared
def test_cfg_normalize_layer_norms_the_waveform(encoder, tmp_path):
    checkpoint = torch.load(FIXTURE / "WavLM-Base+.pt", weights_only=True)
    checkpoint["cfg"]["normalize"] = True
    torch.save(checkpoint, tmp_path / "WavLM-Base+.pt")
    normalizing = WavLMBasePlus("wavlmbase+", tmp_path / "WavLM-Base+.pt", torch.device("cpu"))
    wav = torch.from_numpy(np.load(FIXTURE / "in_16k_odd.npy"))
    normalized = (wav - wav.mean()) / torch.sqrt(wav.var(unbiased=False) + 1e-5)
    assert torch.allclose(normalizing(wav), encoder(normalized), atol=TOLERANCE)
    assert normalizing.normalize and not encoder.normalize  # (GroupNorm after conv 0 hides most of the effect)
