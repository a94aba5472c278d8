"""Types, ranges and required keys of config.json (So-VITS) and diffusion.yaml, checked once on loading.

Only the keys the code reads are described; any other key is allowed, since 4.1 configs carry extras. A key
that is absent is not checked here (old configs lack some; core.config fills those with 4.1's fallbacks, and
the readers use their defaults), except the few marked required. Each problem is one ConfigError naming the
file and the key's path: "config.json: model.hidden_channels must be an integer, got '16'".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from loguru import logger

from core.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """What one key must hold. `kind`: int, number, bool, str, int_list, int_lists, number_list, port,
    number_or_null; `low`/`high` bound numbers (and the items of lists), `open_low` excludes `low`."""
    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] = ()
    required: bool = False


POSITIVE = Rule("int", low=1)
POSITIVE_REQUIRED = Rule("int", low=1, required=True)
NON_NEGATIVE = Rule("int", low=0)
FLAG = Rule("bool")
TEXT = Rule("str")
POSITIVE_NUMBER = Rule("number", low=0, open_low=True)
NON_NEGATIVE_NUMBER = Rule("number", low=0)

MODEL_CONFIG_RULES: dict[str, Rule] = {
    "train.log_interval": POSITIVE, "train.eval_interval": POSITIVE, "train.seed": Rule("int"),
    "train.epochs": POSITIVE, "train.learning_rate": POSITIVE_NUMBER,
    "train.betas": Rule("number_list", low=0, high=1, open_high=True),
    "train.eps": POSITIVE_NUMBER, "train.batch_size": POSITIVE, "train.fp16_run": FLAG,
    "train.half_type": Rule("str", choices=("fp16", "bf16")),
    "train.lr_decay": Rule("number", low=0, high=1, open_low=True), "train.segment_size": POSITIVE,
    "train.warmup_epochs": NON_NEGATIVE, "train.c_mel": NON_NEGATIVE_NUMBER, "train.c_kl": NON_NEGATIVE_NUMBER,
    "train.port": Rule("port"), "train.keep_ckpts": NON_NEGATIVE, "train.all_in_mem": FLAG, "train.vol_aug": FLAG,
    "data.training_files": TEXT, "data.validation_files": TEXT, "data.max_wav_value": POSITIVE_NUMBER,
    "data.sampling_rate": POSITIVE_REQUIRED, "data.filter_length": POSITIVE, "data.hop_length": POSITIVE_REQUIRED,
    "data.win_length": POSITIVE, "data.n_mel_channels": POSITIVE, "data.mel_fmin": NON_NEGATIVE_NUMBER,
    "data.mel_fmax": Rule("number_or_null", low=0, open_low=True),
    "data.unit_interpolate_mode": Rule("str", choices=("left", "nearest", "linear")),
    "model.inter_channels": POSITIVE, "model.hidden_channels": POSITIVE, "model.filter_channels": POSITIVE,
    "model.n_heads": POSITIVE, "model.n_layers": POSITIVE, "model.kernel_size": POSITIVE,
    "model.p_dropout": Rule("number", low=0, high=1, open_high=True), "model.resblock": Rule("str_or_int"),
    "model.resblock_kernel_sizes": Rule("int_list", low=1), "model.resblock_dilation_sizes": Rule("int_lists", low=1),
    "model.upsample_rates": Rule("int_list", low=1), "model.upsample_initial_channel": POSITIVE,
    "model.upsample_kernel_sizes": Rule("int_list", low=1), "model.n_layers_q": NON_NEGATIVE,
    "model.n_layers_trans_flow": POSITIVE, "model.n_flow_layer": POSITIVE, "model.use_spectral_norm": FLAG,
    "model.gin_channels": POSITIVE, "model.ssl_dim": POSITIVE, "model.n_speakers": POSITIVE_REQUIRED,
    "model.vocoder_name": TEXT, "model.speech_encoder": TEXT, "model.speaker_embedding": FLAG,
    "model.vol_embedding": FLAG, "model.use_depthwise_conv": FLAG, "model.flow_share_parameter": FLAG,
    "model.use_automatic_f0_prediction": FLAG, "model.use_transformer_flow": FLAG,
}

DIFFUSION_CONFIG_RULES: dict[str, Rule] = {
    "data.sampling_rate": POSITIVE_REQUIRED, "data.block_size": POSITIVE_REQUIRED,
    "data.duration": POSITIVE_NUMBER, "data.encoder": Rule("str", required=True),
    "data.encoder_out_channels": POSITIVE, "data.training_files": TEXT, "data.validation_files": TEXT,
    "data.unit_interpolate_mode": Rule("str", choices=("left", "nearest", "linear")),
    "model.n_layers": POSITIVE, "model.n_chans": POSITIVE, "model.n_hidden": POSITIVE, "model.use_pitch_aug": FLAG,
    "model.timesteps": POSITIVE, "model.k_step_max": NON_NEGATIVE, "model.n_spk": POSITIVE,
    "device": TEXT, "vocoder.type": TEXT, "vocoder.ckpt": TEXT,
    "infer.speedup": POSITIVE, "infer.method": TEXT, "infer.flow_steps": POSITIVE,
    "env.expdir": TEXT, "env.gpu_id": NON_NEGATIVE,
    "train.num_workers": NON_NEGATIVE, "train.amp_dtype": Rule("str", choices=("fp32", "fp16", "bf16")),
    "train.batch_size": POSITIVE, "train.cache_all_data": FLAG, "train.cache_device": TEXT, "train.cache_fp16": FLAG,
    "train.epochs": POSITIVE, "train.interval_log": POSITIVE, "train.interval_val": POSITIVE,
    "train.interval_force_save": POSITIVE, "train.lr": POSITIVE_NUMBER, "train.decay_step": POSITIVE,
    "train.gamma": POSITIVE_NUMBER, "train.weight_decay": NON_NEGATIVE_NUMBER, "train.save_opt": FLAG,
}

LIST_KINDS = ("int_list", "int_lists", "number_list")
MODEL_SECTIONS = ("data", "model")
DIFFUSION_SECTIONS = ("data", "model")
OPTIONAL_SECTIONS = ("train", "vocoder", "infer", "env")


def describe(value: Any) -> str:
    """A short, one-line rendering of a config value for a message (never a long or nested repr)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    text = repr(value) if isinstance(value, str) else str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= 40 else text[:37] + "..."


def validate_model_config(data: Mapping[str, Any], name: str, need_train: bool = False) -> None:
    """Check a So-VITS config.json's sections, keys and speaker map; ConfigError on the first problem."""
    check_sections(data, name, MODEL_SECTIONS + (("train",) if need_train else ()))
    if "spk" not in data:
        raise ConfigError(f"{name} has no 'spk' speaker map")
    check_rules(data, MODEL_CONFIG_RULES, name)
    check_speakers(data.get("spk"), "spk", data["model"].get("n_speakers"), "model.n_speakers", name)


def validate_diffusion_config(data: Mapping[str, Any], name: str) -> None:
    """Check a diffusion.yaml's sections, keys and speaker map; ConfigError on the first problem."""
    check_sections(data, name, DIFFUSION_SECTIONS)
    check_rules(data, DIFFUSION_CONFIG_RULES, name)
    if data.get("spk") is not None:
        check_speakers(data["spk"], "spk", data["model"].get("n_spk"), "model.n_spk", name)


def check_sections(data: Mapping[str, Any], name: str, required: tuple[str, ...]) -> None:
    for section in required:
        if section not in data:
            raise ConfigError(f"{name} has no '{section}' section; is it the right kind of config?")
    for section in required + OPTIONAL_SECTIONS:
        value = data.get(section)
        if section in data and not isinstance(value, dict):
            raise ConfigError(f"{name}: '{section}' must be an object of keys, got {describe(value)}")


def check_rules(data: Mapping[str, Any], rules: Mapping[str, Rule], name: str) -> None:
    for path, rule in rules.items():
        found, value = lookup(data, path)
        if not found:
            if rule.required:
                raise ConfigError(f"{name}: {path} is missing")
            continue
        if rule.kind in LIST_KINDS:
            bad_item = check_list(value, rule)
            if bad_item:
                raise ConfigError(f"{name}: {path}{bad_item[0]} {bad_item[1]}")
            continue
        problem = check_value(value, rule)
        if problem:
            raise ConfigError(f"{name}: {path} {problem}, got {describe(value)}")


def lookup(data: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def check_value(value: Any, rule: Rule) -> str | None:
    """What is wrong with `value` under `rule` ("must be ..."), or None."""
    kind = rule.kind
    if kind == "bool":
        return None if isinstance(value, bool) or value in (0, 1) and _is_int(value) else "must be true or false"
    if kind == "str":
        if not isinstance(value, str):
            return "must be a string"
        return None if not rule.choices or value in rule.choices else f"must be one of {', '.join(rule.choices)}"
    if kind == "str_or_int":
        return None if isinstance(value, str) or _is_int(value) else "must be a string"
    if kind == "port":
        return None if _is_port(value) else "must be a port number 1..65535"
    if kind == "number_or_null" and value is None:
        return None
    if kind in ("int", "number", "number_or_null"):
        return _check_number(value, rule, integer=kind == "int")
    raise ValueError(f"unknown rule kind {kind!r}")


def check_list(value: Any, rule: Rule) -> tuple[str, str] | None:
    """Where in a list the first problem is and what it is, ("[1][0]", "must be at least 1, got 0"), the
    place "" when the value is not a non-empty list; None when it is fine."""
    if not isinstance(value, list) or not value:
        return "", f"must be a non-empty list, got {describe(value)}"
    if rule.kind == "int_lists":
        inner = Rule("int_list", low=rule.low)
        for i, item in enumerate(value):
            bad_item = check_list(item, inner)
            if bad_item:
                return f"[{i}]{bad_item[0]}", bad_item[1]
        return None
    integer = rule.kind == "int_list"
    for i, item in enumerate(value):
        problem = _check_number(item, rule, integer)
        if problem:
            return f"[{i}]", f"{problem}, got {describe(item)}"
    return None


def _check_number(value: Any, rule: Rule, integer: bool) -> str | None:
    if integer and not _is_int(value):
        return "must be an integer"
    if not integer and not (_is_int(value) or isinstance(value, float)):
        return "must be a number"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    low_bad = rule.low is not None and (value <= rule.low if rule.open_low else value < rule.low)
    high_bad = rule.high is not None and (value >= rule.high if rule.open_high else value > rule.high)
    return f"must be {bounds_text(rule)}" if low_bad or high_bad else None


def bounds_text(rule: Rule) -> str:
    if rule.low == 1 and rule.high is None and not rule.open_low:
        return "at least 1"
    low = f"{'>' if rule.open_low else '>='} {rule.low:g}" if rule.low is not None else ""
    high = f"{'<' if rule.open_high else '<='} {rule.high:g}" if rule.high is not None else ""
    return " and ".join(part for part in (low, high) if part)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_port(value: Any) -> bool:
    text = str(value) if _is_int(value) or isinstance(value, str) else ""
    return text.isdigit() and 1 <= int(text) <= 65535


def check_speakers(spk: Any, path: str, n_speakers: Any, n_path: str, name: str) -> None:
    """A speaker map {name: id}: ids are distinct integers 0 <= id < the model's speaker count."""
    if not isinstance(spk, dict):
        raise ConfigError(f"{name}: {path} must be an object mapping speaker names to ids, got {describe(spk)}")
    for speaker, sid in spk.items():
        if not _is_int(sid) or sid < 0:
            raise ConfigError(f"{name}: {path}.{speaker} must be a speaker id (an integer >= 0), got {describe(sid)}")
        if _is_int(n_speakers) and sid >= n_speakers:
            raise ConfigError(f"{name}: {path}.{speaker} is speaker id {sid}, but {n_path} is {n_speakers} "
                              f"(ids must be below it)")


def choose_speech_encoder(model: dict[str, Any], name: str, dims: Mapping[str, int]) -> None:
    """Fill a missing model.speech_encoder as 4.1 advises for old configs, and check it against ssl_dim.

    4.1 reads a missing encoder as vec768l12; a 4.0 config (ssl_dim 256) needs vec256l9, which 4.1's README
    tells users to add by hand, so it is chosen here, and said so. `dims`: encoder name -> feature width.
    An ssl_dim that is another known encoder's width cannot work with this one: ConfigError. Any other width
    is a custom encoder's (the weights decide), so it is only warned about."""
    ssl_dim = model.get("ssl_dim")
    if model.get("speech_encoder") is None:
        model["speech_encoder"] = "vec256l9" if ssl_dim == 256 else "vec768l12"
        logger.info(f"{name} names no model.speech_encoder (a config older than 4.1); using "
                    f"{model['speech_encoder']}{' for its ssl_dim 256 (a 4.0 model)' if ssl_dim == 256 else ''}")
    encoder = model["speech_encoder"]
    width = dims.get(encoder) if isinstance(encoder, str) else None  # other types: validate_model_config
    if width is None or not _is_int(ssl_dim) or ssl_dim == width:
        return
    fitting = [other for other, dim in dims.items() if dim == ssl_dim]  # the registry lists the usual first
    if fitting:
        raise ConfigError(f"{name}: model.speech_encoder {encoder} gives {width} features, but model.ssl_dim is "
                          f"{ssl_dim} (the width of {', '.join(fitting[:3])}); set speech_encoder to the encoder "
                          f"the model was trained with")
    logger.warning(f"{name}: model.ssl_dim is {ssl_dim}, but speech encoder {encoder} gives {width} features; "
                   "the model will not accept its units unless its weights were trained that way")
