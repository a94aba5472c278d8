"""The config templates against spec §4.4/§4.5, HParams, and 4.1's fallbacks for old configs."""
from __future__ import annotations

import copy
import json

import pytest

from conftest import SPEC
from core.config import HParams, load_config, load_model_config, load_template, save_config
from core.errors import ConfigError

# Spec §4.4, config_template.json (the tiny template differs only where TINY_MODEL says).
TRAIN = {
    "log_interval": 200, "eval_interval": 800, "seed": 1234, "epochs": 10000, "learning_rate": 0.0001,
    "betas": [0.8, 0.99], "eps": 1e-09, "batch_size": 6, "fp16_run": False, "half_type": "fp16",
    "lr_decay": 0.999875, "segment_size": 10240, "init_lr_ratio": 1, "warmup_epochs": 0, "c_mel": 45,
    "c_kl": 1.0, "use_sr": True, "max_speclen": 512, "port": "8001", "keep_ckpts": 3, "all_in_mem": False,
    "vol_aug": False,
}
DATA = {
    "training_files": "filelists/train.txt", "validation_files": "filelists/val.txt", "max_wav_value": 32768.0,
    "sampling_rate": 44100, "filter_length": 2048, "hop_length": 512, "win_length": 2048, "n_mel_channels": 80,
    "mel_fmin": 0.0, "mel_fmax": 22050, "unit_interpolate_mode": "nearest",
}
MODEL = {
    "inter_channels": 192, "hidden_channels": 192, "filter_channels": 768, "n_heads": 2, "n_layers": 6,
    "kernel_size": 3, "p_dropout": 0.1, "resblock": "1", "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "upsample_rates": [8, 8, 2, 2, 2],
    "upsample_initial_channel": 512, "upsample_kernel_sizes": [16, 16, 4, 4, 4], "n_layers_q": 3,
    "n_layers_trans_flow": 3, "n_flow_layer": 4, "use_spectral_norm": False, "gin_channels": 768, "ssl_dim": 768,
    "n_speakers": 200, "vocoder_name": "nsf-hifigan", "speech_encoder": "vec768l12", "speaker_embedding": False,
    "vol_embedding": False, "use_depthwise_conv": False, "flow_share_parameter": False,
    "use_automatic_f0_prediction": True, "use_transformer_flow": False,
}
TINY_MODEL = {"filter_channels": 512, "upsample_initial_channel": 400, "use_depthwise_conv": True,
              "flow_share_parameter": True}
SPK = {"nyaru": 0, "huiyu": 1, "nen": 2, "paimon": 3, "yunhao": 4}

# Spec §4.5, diffusion_template.yaml, as section -> key -> default.
DIFFUSION = {
    "data": {"sampling_rate": 44100, "block_size": 512, "duration": 2, "encoder": "vec768l12",
             "cnhubertsoft_gate": 10, "encoder_sample_rate": 16000, "encoder_hop_size": 320,
             "encoder_out_channels": 768, "training_files": "filelists/train.txt",
             "validation_files": "filelists/val.txt", "extensions": ["wav"], "unit_interpolate_mode": "nearest"},
    "model": {"type": "Diffusion", "n_layers": 20, "n_chans": 512, "n_hidden": 256, "use_pitch_aug": True,
              "timesteps": 1000, "k_step_max": 0, "n_spk": 1},
    "device": "cuda",
    "vocoder": {"type": "nsf-hifigan", "ckpt": "pretrain/nsf_hifigan/model"},
    "infer": {"speedup": 10, "method": "dpm-solver++"},
    "env": {"expdir": "logs/44k/diffusion", "gpu_id": 0},
    "train": {"num_workers": 4, "amp_dtype": "fp32", "batch_size": 48, "cache_all_data": True,
              "cache_device": "cpu", "cache_fp16": True, "epochs": 100000, "interval_log": 10,
              "interval_val": 2000, "interval_force_save": 5000, "lr": 0.0001, "decay_step": 100000,
              "gamma": 0.5, "weight_decay": 0, "save_opt": False},
    "spk": {"nyaru": 0},
}


def _same(actual, expected) -> bool:
    """Equal values with equal types (True is not 1, "8001" is not 8001); 1e-09 == 1e-9."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and actual.keys() == expected.keys() and all(
            _same(actual[k], expected[k]) for k in expected)
    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) == len(expected) and all(
            _same(a, e) for a, e in zip(actual, expected))
    return type(actual) is type(expected) and actual == expected


def test_normal_template_has_every_key_and_default():
    config = load_template("config_template.json").to_dict()
    assert config.keys() == {"train", "data", "model", "spk"}
    for section, expected in (("train", TRAIN), ("data", DATA), ("model", MODEL), ("spk", SPK)):
        assert _same(config[section], expected), section


def test_tiny_template_differs_only_in_the_tiny_model_keys():
    config = load_template("config_tiny_template.json").to_dict()
    assert _same(config["train"], TRAIN) and _same(config["data"], DATA) and _same(config["spk"], SPK)
    assert _same(config["model"], {**MODEL, **TINY_MODEL})


def test_diffusion_template_has_every_key_and_default():
    assert _same(load_template("diffusion_template.yaml").to_dict(), DIFFUSION)


def _spec_first_column(section: str) -> list[str]:
    """First cells of the table rows in one section of the 4.1 spec (headers and rules left out)."""
    text = (SPEC / "so-vits-svc-4.1.md").read_text(encoding="utf-8")
    body = text.split(f"\n### {section} ", 1)[1].split("\n### ", 1)[0]
    cells = [line.split("|")[1].strip() for line in body.splitlines() if line.startswith("|")]
    return [c.strip("`") for c in cells if c not in ("key", "section.key") and not c.startswith("---")]


@pytest.mark.shared
def test_expected_tables_cover_every_key_the_spec_lists():
    """Guards the hand-written tables above against drift from the spec's §4.4 and §4.5."""
    assert set(_spec_first_column("4.4")) == set(TRAIN) | set(DATA) | set(MODEL)
    listed = set()
    for entry in _spec_first_column("4.5"):
        section, _, keys = entry.partition(".")
        listed |= {(section, key.strip()) for key in keys.split(" / ")} if keys else {(section, None)}
    expected = {(section, key) for section, value in DIFFUSION.items() if section != "spk" and isinstance(value, dict)
                for key in value} | {("device", None), ("spk", None)}
    assert listed == expected


def test_hparams_attribute_and_item_access_nest():
    hps = HParams({"train": {"batch_size": 6, "betas": [0.8, 0.99]}, "spk": {"a": 0}})
    assert hps.train.batch_size == 6 and hps["train"]["betas"] == [0.8, 0.99]
    assert isinstance(hps.train, HParams) and "spk" in hps and len(hps) == 2
    hps.model = {"ssl_dim": 256}
    assert isinstance(hps.model, HParams) and hps.model.ssl_dim == 256
    with pytest.raises(AttributeError, match="no key 'missing'"):
        _ = hps.missing
    assert hps.get("missing") is None and hps.setdefault("extra", 3) == 3 and hps.extra == 3


def test_hparams_to_dict_round_trips_and_copies_are_independent():
    data = {"a": {"b": [1, 2], "c": {"d": True}}}
    hps = HParams(data)
    assert hps.to_dict() == data and type(hps.to_dict()["a"]) is dict
    clone = copy.deepcopy(hps)
    clone.a.c.d = False
    assert hps.a.c.d is True
    out = hps.to_dict()
    out["a"]["b"].append(3)
    assert hps.a.b == [1, 2]


def test_save_and_load_round_trip_json_and_yaml(tmp_path):
    config = load_template("config_template.json")
    save_config(config, tmp_path / "c" / "config.json")
    text = (tmp_path / "c" / "config.json").read_text(encoding="utf-8")
    assert json.loads(text) == config.to_dict() and text.startswith('{\n  "train": {')
    save_config(load_template("diffusion_template.yaml"), tmp_path / "d.yaml")
    assert load_config(tmp_path / "d.yaml").to_dict() == DIFFUSION


def test_load_config_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(tmp_path / "bad.json")


def test_load_model_config_fills_what_old_configs_lack(tmp_path):
    config = load_template("config_template.json").to_dict()
    for key in ("speech_encoder", "vol_embedding"):
        del config["model"][key]
    del config["data"]["unit_interpolate_mode"]
    config["model"]["ssl_dim"] = 256
    (tmp_path / "old.json").write_text(json.dumps(config), encoding="utf-8")
    loaded = load_model_config(tmp_path / "old.json")
    assert loaded.model.speech_encoder == "vec256l9"  # a 4.0 model (ssl_dim 256), as 4.1's README advises
    assert loaded.model.vol_embedding is False
    assert loaded.data.unit_interpolate_mode == "left"
    assert loaded.model.ssl_dim == 256


def test_load_model_config_keeps_present_values_and_refuses_non_model_configs(tmp_path):
    config = load_template("config_template.json").to_dict()
    config["model"]["speech_encoder"], config["model"]["ssl_dim"] = "vec256l9", 256  # they must agree
    config["data"]["unit_interpolate_mode"] = "nearest"
    (tmp_path / "new.json").write_text(json.dumps(config), encoding="utf-8")
    loaded = load_model_config(tmp_path / "new.json")
    assert loaded.model.speech_encoder == "vec256l9" and loaded.data.unit_interpolate_mode == "nearest"
    (tmp_path / "diff.json").write_text(json.dumps({"data": {}, "model": {}}), encoding="utf-8")
    with pytest.raises(ConfigError, match="spk"):
        load_model_config(tmp_path / "diff.json")
    (tmp_path / "x.json").write_text(json.dumps({"train": {}}), encoding="utf-8")
    with pytest.raises(ConfigError, match="no 'data' section"):
        load_model_config(tmp_path / "x.json")
