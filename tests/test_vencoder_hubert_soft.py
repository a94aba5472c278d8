"""HuBERT-Soft against the spec fixture (tiny model, 4 heads) and the real-size format card."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import FIXTURES, SPEC
from vencoder.hubert_soft import SOFT_RENAMES, TRAINING_ONLY_KEYS, HubertSoft, soft_dims, split_in_proj
from vencoder.wav2vec2 import Wav2Vec2Model, check_state_dict, rename_keys

FIXTURE = FIXTURES / "hubert_soft"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def encoder() -> HubertSoft:
    return HubertSoft("hubertsoft", FIXTURE / "hubert-soft-0d54a1f4.pt", torch.device("cpu"), heads=4)


def reference(name: str) -> np.ndarray:
    return np.load(FIXTURE / name)


@pytest.mark.shared
@pytest.mark.parametrize("tag", ["1s", "odd"])
def test_units_match_fixture(encoder, tag):
    wav = torch.from_numpy(reference(f"in_16k_{tag}.npy"))
    units = encoder(wav)
    assert units.shape == (1, 16, len(wav) // 320)
    assert np.abs(units.numpy() - reference(f"out_units_{tag}.npy")).max() < TOLERANCE


@pytest.mark.shared
@pytest.mark.parametrize("tag", ["1s", "odd"])
def test_intermediates_match_fixture(encoder, tag):
    padded = F.pad(torch.from_numpy(reference(f"in_16k_{tag}.npy"))[None], (40, 40))
    with torch.inference_mode():
        conv = encoder.model.conv_features(padded)
        hidden = encoder.model(padded)
    assert np.abs(conv.numpy() - reference(f"out_conv_features_{tag}.npy")).max() < TOLERANCE
    assert np.abs(hidden.numpy() - reference(f"out_encoder_{tag}.npy")).max() < TOLERANCE


@pytest.mark.shared
def test_card_key_list_matches_our_model():
    card = json.loads((SPEC / "formats" / "hubert_soft.json").read_text())
    state_dict = {key.removeprefix("module."): torch.empty(shape, device="meta")
                  for key, shape in card["state_dict"].items()}
    dims = soft_dims(state_dict, heads=card["real_size"]["heads"])
    assert (dims.embed_dim, len(dims.layers), dims.final_dim) == (768, 12, 256)
    renamed = rename_keys(split_in_proj(state_dict), SOFT_RENAMES, TRAINING_ONLY_KEYS)
    with torch.device("meta"):
        ours = {key: tuple(value.shape) for key, value in Wav2Vec2Model(dims).state_dict().items()}
    check_state_dict(ours, {key: tuple(value.shape) for key, value in renamed.items()}, "hubert_soft card")
