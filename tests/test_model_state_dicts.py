"""Real-size generator state dicts against 4.1's (spec state_dicts/*.json, §9.5 and Appendix B).

Key/shape checks build the models on the meta device (no memory, no init cost); one real tiny model is
built to load a 4.1-format state dict strictly, duplicated shared-flow keys included."""
from __future__ import annotations

import functools
import json

import pytest
import torch

from conftest import SPEC
from models import SynthesizerTrn, load_generator_weights

STATE_DICTS = SPEC / "state_dicts"
pytestmark = pytest.mark.shared


def reference(name: str) -> dict:
    return json.loads((STATE_DICTS / f"state_dict_{name}.json").read_text())


def meta_model(model_config: dict) -> SynthesizerTrn:
    return _meta_model(json.dumps(model_config, sort_keys=True))


@functools.lru_cache(maxsize=None)
def _meta_model(config_json: str) -> SynthesizerTrn:
    with torch.device("meta"):
        return SynthesizerTrn(1025, 20, **json.loads(config_json))


@pytest.fixture(scope="module")
def default_config() -> dict:
    return dict(reference("G_vec768l12")["meta"]["model_config"], n_speakers=200)


@pytest.mark.parametrize("name", ["G_vec768l12", "G_vol", "G_tiny"])
def test_keys_order_and_shapes_equal_4_1(name):
    ref = reference(name)
    ours = meta_model(ref["meta"]["model_config"]).state_dict()
    assert list(ours) == list(ref["state_dict"])  # same keys in 4.1's order
    shapes = {k: list(v.shape) for k, v in ours.items()}
    assert shapes == ref["state_dict"]
    assert sum(v.numel() for v in ours.values()) == ref["meta"]["n_state_dict_elements"]


@pytest.mark.parametrize("name", ["G_vec768l12", "G_vol", "G_tiny"])
def test_unique_parameters_per_top_level_module(name):
    """Shared modules count once here (tiny: the flow WN), as in param_counts.json."""
    counts = json.loads((STATE_DICTS / "param_counts.json").read_text())[name]
    model = meta_model(reference(name)["meta"]["model_config"])
    per_module = {child: sum(p.numel() for p in module.parameters()) for child, module in model.named_children()}
    assert per_module == counts["per_top_level_module_params"]
    assert sum(p.numel() for p in model.parameters()) == counts["n_parameters"]


# (overrides of the default template with 200 speakers, state-dict entries, numel) from spec §9.5.
VARIANTS = {
    "default": ({}, 751, 52_402_957),
    "vol_embedding": ({"vol_embedding": True}, 753, 52_402_957 + 384),
    "transformer_flow": ({"use_transformer_flow": True}, 855, 64_057_357),
    "transformer_flow_shared": ({"use_transformer_flow": True, "flow_share_parameter": True}, 908, 69_892_045),
    "no_f0_decoder": ({"use_automatic_f0_prediction": False}, 647, 45_935_436),
    "snake": ({"vocoder_name": "nsf-snake-hifigan"}, 1135, 52_425_133),
    "tiny_template": ({"filter_channels": 512, "upsample_initial_channel": 400, "use_depthwise_conv": True,
                       "flow_share_parameter": True}, 886, 35_638_904),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_counts_match_spec(variant, default_config):
    overrides, entries, numel = VARIANTS[variant]
    state = meta_model({**default_config, **overrides}).state_dict()
    assert len(state) == entries
    assert sum(v.numel() for v in state.values()) == numel


def test_tiny_template_unique_parameters(default_config):
    overrides = VARIANTS["tiny_template"][0]
    model = meta_model({**default_config, **overrides})
    assert sum(p.numel() for p in model.parameters()) == 28_651_640


def test_variant_key_layouts_follow_appendix_b(default_config):
    snake = meta_model({**default_config, "vocoder_name": "nsf-snake-hifigan"}).state_dict()
    assert [tuple(snake[f"dec.snakes.{i}.act.alpha"].shape) for i in range(5)] == [(512,), (256,), (128,), (64,),
                                                                                   (32,)]
    assert tuple(snake["dec.snake_post.act.beta"].shape) == (16,)
    assert tuple(snake["dec.resblocks.14.activations.5.downsample.lowpass.filter"].shape) == (1, 1, 12)
    assert tuple(snake["dec.snakes.0.upsample.filter"].shape) == (1, 1, 12)
    flow = meta_model({**default_config, "use_transformer_flow": True, "flow_share_parameter": True}).state_dict()
    assert tuple(flow["flow.flows.0.enc.cond_pre.weight"].shape) == (384, 192, 1)
    assert tuple(flow["flow.flows.6.enc.cond_layer.weight_v"].shape) == (1152, 768, 1)
    assert tuple(flow["flow.wn.ffn_layers.2.conv_1.weight"].shape) == (768, 192, 5)
    assert "flow.wn.self_attn_layers.0.emb_rel_k" not in flow
    assert not any(k.startswith("f0_decoder.") for k in
                   meta_model({**default_config, "use_automatic_f0_prediction": False}).state_dict())


def test_random_4_1_tiny_state_dict_loads_strictly():
    """A dict with exactly 4.1's keys and shapes (random values) loads with strict=True, the shared flow WN
    stays one module, and every non-duplicated tensor arrives unchanged."""
    ref = reference("G_tiny")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = SynthesizerTrn(1025, 20, **ref["meta"]["model_config"])
        gen = torch.Generator().manual_seed(0)
        state = {k: torch.randn(shape, generator=gen) for k, shape in ref["state_dict"].items()}
        for key in [k for k in state if k.startswith("flow.flows.")]:  # 4.1 writes the shared WN identically
            if ".enc." in key:
                state[key] = state["flow.wn." + key.split(".enc.", 1)[1]]
        model.load_state_dict(state, strict=True)
        assert model.flow.flows[0].enc is model.flow.wn and model.flow.flows[6].enc is model.flow.wn
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
        compressed = {k: v.half() for k, v in state.items() if not k.startswith("enc_q.")}
        report = load_generator_weights(model, compressed)
        assert report.skipped_prefixes == ["enc_q."]
        torch.testing.assert_close(model.pre.weight, state["pre.weight"].half().float())
    finally:
        torch.set_num_threads(threads)
