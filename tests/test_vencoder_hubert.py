"""fairseq HuBERT encoders (vec768l12, vec256l9, cnhubertlarge) against the spec fixture and format cards."""
from __future__ import annotations

import argparse
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.errors import MissingPretrainedError
from conftest import FIXTURES, SPEC
from vencoder import get_speech_encoder
from vencoder.hubert import (FAIRSEQ_RENAMES, TRAINING_ONLY_KEYS, CNHubertLarge, ContentVec256L9, ContentVec768L12,
                             fairseq_dims)
from vencoder.safe_pickle import FairseqDictionary, load_checkpoint, FAIRSEQ_STAND_INS
from vencoder.wav2vec2 import Wav2Vec2Model, check_state_dict, parse_conv_layers, rename_keys

CONTENTVEC = FIXTURES / "contentvec"
CONTENTVEC_FILE = CONTENTVEC / "checkpoint_best_legacy_500.pt"
TOLERANCE = 1e-4


def expected_frames(samples: int) -> int:
    return (samples - 400) // 320 + 1


def load_input(tag: str) -> torch.Tensor:
    return torch.from_numpy(np.load(CONTENTVEC / f"in_16k_{tag}.npy"))


def max_error(actual: torch.Tensor, reference_file: Path) -> float:
    return float(np.abs(actual.detach().numpy() - np.load(reference_file)).max())


# --- ContentVec fixture --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vec768() -> ContentVec768L12:
    return ContentVec768L12("vec768l12", CONTENTVEC_FILE, torch.device("cpu"))


@pytest.mark.shared
@pytest.mark.parametrize("tag", ["1s", "odd"])
def test_contentvec_matches_fixture(vec768, tag):
    wav = load_input(tag)
    vec256 = ContentVec256L9("vec256l9", CONTENTVEC_FILE, torch.device("cpu"))
    out768, out256 = vec768(wav), vec256(wav)
    frames = expected_frames(len(wav))
    assert out768.shape == (1, 64, frames) and out256.shape == (1, 16, frames)
    assert max_error(out768, CONTENTVEC / f"out_vec768l12_{tag}.npy") < TOLERANCE
    assert max_error(out256, CONTENTVEC / f"out_vec256l9_{tag}.npy") < TOLERANCE


@pytest.mark.shared
@pytest.mark.parametrize("tag", ["1s", "odd"])
def test_contentvec_intermediates_match_fixture(vec768, tag):
    model = vec768.model
    wav = load_input(tag)[None]
    layers = np.load(CONTENTVEC / f"out_layers_1to12_{tag}.npy")
    with torch.inference_mode():
        assert max_error(model.conv_features(wav), CONTENTVEC / f"out_conv_features_{tag}.npy") < TOLERANCE
        outputs = model.layer_outputs(wav)
        assert torch.equal(outputs[8], model(wav, output_layer=9))
        for layer, output in enumerate(outputs):
            assert np.abs(output[0].numpy() - layers[layer]).max() < TOLERANCE, layer + 1


@pytest.mark.shared
def test_registry_builds_contentvec_from_pretrain_dir():
    encoder = get_speech_encoder("vec768l12", device="cpu", pretrain_dir=CONTENTVEC)
    wav = load_input("odd")
    stereo = torch.stack([wav, wav], dim=1)  # [N, 2]: averaged to mono
    assert isinstance(encoder, ContentVec768L12)
    assert torch.allclose(encoder(stereo), encoder(wav))


def test_missing_file_names_file_and_source(tmp_path):
    with pytest.raises(MissingPretrainedError) as error:
        get_speech_encoder("vec256l9", device="cpu", pretrain_dir=tmp_path)
    message = str(error.value)
    assert "checkpoint_best_legacy_500.pt" in message and "speech encoder vec256l9" in message
    assert str(tmp_path) in message


def test_parse_conv_layers_never_evaluates_code():
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == (
        (512, 10, 5), (512, 3, 2), (512, 3, 2), (512, 3, 2), (512, 3, 2), (512, 2, 2), (512, 2, 2))
    from core.errors import ConfigError
    with pytest.raises(ConfigError):
        parse_conv_layers("__import__('os').system('true')")


# --- Structure at real size, from the format cards --------------------------------------------------------------

def card(name: str) -> dict:
    return json.loads((SPEC / "formats" / f"{name}.json").read_text())


def meta_state_dict(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


def model_shapes(dims) -> dict[str, tuple]:
    with torch.device("meta"):
        return {key: tuple(value.shape) for key, value in Wav2Vec2Model(dims).state_dict().items()}


@pytest.mark.shared
@pytest.mark.parametrize("name, values", [("contentvec", "real_size_values"),
                                          ("cnhubertlarge", "real_size_values_assumed")])
def test_fairseq_card_key_list_matches_our_model(name, values):
    spec = card(name)
    state_dict = meta_state_dict(spec["state_dict"])
    dims = fairseq_dims(spec[values], state_dict)
    renamed = rename_keys(state_dict, FAIRSEQ_RENAMES, TRAINING_ONLY_KEYS)
    check_state_dict(model_shapes(dims), {key: tuple(value.shape) for key, value in renamed.items()}, name)
    assert len(spec["state_dict"]) == spec["n_state_dict_keys"]


# --- Chinese HuBERT large: tiny checkpoint in the real container ------------------------------------------------

TINY_LARGE_CFG = {
    "_name": "hubert", "extractor_mode": "layer_norm", "encoder_layers": 24, "encoder_embed_dim": 32,
    "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 4, "activation_fn": "gelu", "layer_norm_first": True,
    "conv_feature_layers": "[(16,10,5)] + [(16,3,2)] * 4 + [(16,2,2)] * 2", "conv_bias": False, "conv_pos": 128,
    "conv_pos_groups": 16, "final_dim": 24, "untie_final_proj": True, "layer_type": "transformer",
    "required_seq_len_multiple": 2,
}

# our key -> fairseq key, for writing test checkpoints in the real naming
TO_FAIRSEQ = (
    (r"^feature_extractor\.convs\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"^feature_extractor\.convs\.(\d+)\.norm\.", r"feature_extractor.conv_layers.\1.2.1."),
    (r"^feature_norm\.", "layer_norm."),
    (r"^feature_proj\.", "post_extract_proj."),
    (r"^pos_conv\.", "encoder.pos_conv.0."),
    (r"^encoder_norm\.", "encoder.layer_norm."),
    (r"^layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"^layers\.(\d+)\.attention_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"^layers\.(\d+)\.ffn\.", r"encoder.layers.\1."),
    (r"^layers\.(\d+)\.ffn_norm\.", r"encoder.layers.\1.final_layer_norm."),
)


def tiny_large_state_dict() -> dict[str, torch.Tensor]:
    """Random weights for TINY_LARGE_CFG in fairseq naming; norm gains and biases random too, so they matter."""
    generator = torch.Generator().manual_seed(0)
    dims = fairseq_dims(TINY_LARGE_CFG, {"final_proj.weight": torch.empty(24, 32)})
    with torch.device("meta"):
        shapes = {key: value.shape for key, value in Wav2Vec2Model(dims).state_dict().items()}
    state_dict = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=generator)
        if key.endswith("bias"):
            value = 0.05 * noise
        elif len(shape) == 1 or key.endswith("weight_g"):
            value = 1 + 0.1 * noise
        else:
            value = noise / shape[1:].numel() ** 0.5
        state_dict[_to_fairseq(key)] = value
    state_dict["mask_emb"] = torch.zeros(32)
    state_dict["label_embs_concat"] = torch.zeros(504, 24)
    return state_dict


def _to_fairseq(key: str) -> str:
    for pattern, replacement in TO_FAIRSEQ:
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            return new_key
    return key


@pytest.fixture
def fake_fairseq(monkeypatch):
    """Register stand-in `fairseq.data.dictionary.Dictionary` so torch.save pickles it by that name."""
    for name in ("fairseq", "fairseq.data", "fairseq.data.dictionary"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    dictionary_class = type("Dictionary", (), {"__module__": "fairseq.data.dictionary"})
    sys.modules["fairseq.data.dictionary"].Dictionary = dictionary_class
    dictionary = dictionary_class()
    dictionary.symbols = ["<s>", "<pad>", "</s>", "<unk>", *map(str, range(500))]
    return dictionary


def write_fairseq_checkpoint(path: Path, state_dict: dict, dictionary, style: str) -> None:
    task = {"_name": "hubert_pretraining", "normalize": True}
    checkpoint = {"args": None, "cfg": {"model": TINY_LARGE_CFG, "task": task},
                  "model": state_dict, "criterion": None, "optimizer_history": [], "extra_state": {},
                  "task_state": {"dictionaries": [dictionary]}}
    if style == "args":  # pre-hydra fairseq: flat argparse.Namespace
        checkpoint["args"] = argparse.Namespace(**TINY_LARGE_CFG, arch="hubert", task="hubert_pretraining")
        checkpoint["cfg"] = None
    torch.save(checkpoint, path, _use_new_zipfile_serialization=style != "legacy")


def reference_pre_ln(state_dict: dict[str, torch.Tensor], wav: torch.Tensor, heads: int) -> torch.Tensor:
    """Pre-LN fairseq HuBERT written out from the format card's forward notes: [N] -> [T, D]."""
    sd = state_dict
    x = wav[None, None]
    for i in range(7):
        stride = 5 if i == 0 else 2
        x = F.conv1d(x, sd[f"feature_extractor.conv_layers.{i}.0.weight"], stride=stride)
        x = F.layer_norm(x.transpose(1, 2), x.shape[1:2], sd[f"feature_extractor.conv_layers.{i}.2.1.weight"],
                         sd[f"feature_extractor.conv_layers.{i}.2.1.bias"]).transpose(1, 2)
        x = F.gelu(x)
    x = x[0].T  # [T, C]
    x = F.layer_norm(x, x.shape[-1:], sd["layer_norm.weight"], sd["layer_norm.bias"])
    x = x @ sd["post_extract_proj.weight"].T + sd["post_extract_proj.bias"]
    v, g = sd["encoder.pos_conv.0.weight_v"], sd["encoder.pos_conv.0.weight_g"]
    weight = g * v / torch.sqrt((v ** 2).sum(dim=(0, 1), keepdim=True))
    pos = F.conv1d(x.T[None], weight, sd["encoder.pos_conv.0.bias"], padding=64, groups=16)[0, :, :-1]
    x = x + F.gelu(pos.T)
    T, D = x.shape
    for i in range(24):
        p = f"encoder.layers.{i}."
        h = F.layer_norm(x, (D,), sd[p + "self_attn_layer_norm.weight"], sd[p + "self_attn_layer_norm.bias"])
        q, k, v_ = (h @ sd[p + f"self_attn.{n}_proj.weight"].T + sd[p + f"self_attn.{n}_proj.bias"] for n in "qkv")
        q = q.view(T, heads, -1).transpose(0, 1) * (D // heads) ** -0.5
        k, v_ = k.view(T, heads, -1).transpose(0, 1), v_.view(T, heads, -1).transpose(0, 1)
        attention = torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v_  # [H, T, hd]
        attention = attention.transpose(0, 1).reshape(T, D)
        x = x + attention @ sd[p + "self_attn.out_proj.weight"].T + sd[p + "self_attn.out_proj.bias"]
        h = F.layer_norm(x, (D,), sd[p + "final_layer_norm.weight"], sd[p + "final_layer_norm.bias"])
        x = x + F.gelu(h @ sd[p + "fc1.weight"].T + sd[p + "fc1.bias"]) @ sd[p + "fc2.weight"].T + sd[p + "fc2.bias"]
    return F.layer_norm(x, (D,), sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"])


@pytest.mark.shared
@pytest.mark.parametrize("style", ["cfg", "args", "legacy"])
def test_cnhubertlarge_tiny_checkpoint_in_real_format(tmp_path, fake_fairseq, style):
    state_dict = tiny_large_state_dict()
    card_keys = card("cnhubertlarge")["state_dict"].keys()
    assert set(state_dict) == set(card_keys)  # the test file really has the real key names
    path = tmp_path / "chinese-hubert-large-fairseq-ckpt.pt"
    write_fairseq_checkpoint(path, state_dict, fake_fairseq, style)

    encoder = CNHubertLarge("cnhubertlarge", path, torch.device("cpu"))
    wav = torch.from_numpy(np.load(CONTENTVEC / "in_16k_odd.npy"))
    features = encoder(wav)
    assert features.shape == (1, 32, expected_frames(len(wav)))
    reference = reference_pre_ln(state_dict, wav, heads=4)
    assert torch.allclose(features[0].T, reference, atol=TOLERANCE)


@pytest.mark.shared
def test_fairseq_dictionary_becomes_inert_stand_in(tmp_path, fake_fairseq):
    path = tmp_path / "ckpt.pt"
    write_fairseq_checkpoint(path, tiny_large_state_dict(), fake_fairseq, "cfg")
    checkpoint = load_checkpoint(path, FAIRSEQ_STAND_INS)
    dictionary = checkpoint["task_state"]["dictionaries"][0]
    assert type(dictionary) is FairseqDictionary
    assert len(dictionary.attributes()["symbols"]) == 504


def test_short_audio_is_a_clear_error():
    from core.errors import AudioError
    dims = fairseq_dims(TINY_LARGE_CFG, {})
    model = Wav2Vec2Model(dims).eval()
    with pytest.raises(AudioError, match="too short"):
        model(torch.zeros(1, 399))
    assert model(torch.zeros(1, 400)).shape == (1, 1, 32)
