"""Configs: JSON/YAML load and save, attribute access, and 4.1's fallbacks for old configs.

Nothing here is read at import time: every script loads its config from the path it is given.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, MutableMapping

import yaml

from core.errors import ConfigError
from core.fileio import atomic_path

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "configs_template"

# Keys that configs written before 4.1 lack, and the value 4.1's inference assumes for them.
MODEL_FALLBACKS = {"speech_encoder": "vec768l12", "vol_embedding": False}
DATA_FALLBACKS = {"unit_interpolate_mode": "left"}


class HParams(MutableMapping[str, Any]):
    """A nested dict whose keys also read as attributes (`hps.train.batch_size`).

    Nested dicts become HParams; `to_dict()` gives plain containers back for saving.
    """

    def __init__(self, data: Mapping[str, Any] | None = None, **kwargs: Any):
        object.__setattr__(self, "_data", {})
        for key, value in {**(data or {}), **kwargs}.items():
            self[key] = value

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key] = HParams(value) if isinstance(value, Mapping) and not isinstance(value, HParams) else value

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __getattr__(self, key: str) -> Any:
        try:
            return self._data[key]
        except KeyError:
            raise AttributeError(f"config has no key '{key}'") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"HParams({self.to_dict()!r})"

    def __deepcopy__(self, memo: dict) -> "HParams":
        return HParams(copy.deepcopy(self.to_dict(), memo))

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() if isinstance(v, HParams) else copy.deepcopy(v) for k, v in self._data.items()}


MAX_CONFIG_BYTES = 16 << 20  # a config is a few kB; anything this big is the wrong file
BINARY_MAGIC = {b"PK\x03\x04": "a zip file, like a torch checkpoint (G_*.pth)", b"\x80": "a pickled torch checkpoint"}


def read_config_text(path: str | os.PathLike, what: str = "config") -> str:
    """The text of a small UTF-8 config file; ConfigError for a missing, huge, binary or non-UTF-8 file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} {path} is {size / (1 << 20):.0f} MiB; a config is at most "
                          f"{MAX_CONFIG_BYTES >> 20} MiB (is it the right file?)")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror or error}") from None
    looks_like = next((kind for magic, kind in BINARY_MAGIC.items() if raw.startswith(magic)), None)
    if looks_like is None and b"\x00" in raw[:4096]:
        looks_like = "a binary file"
    if looks_like is not None:
        raise ConfigError(f"{what} {path} looks like {looks_like}, not a text config (JSON/YAML)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset "
                          f"{error.start}); save it as UTF-8") from None


def parse_config_text(text: str, path: str | os.PathLike, what: str = "config") -> Any:
    """JSON, or YAML for .yaml/.yml; ConfigError with one line for any syntax problem or absurd nesting."""
    try:
        return yaml.safe_load(text) if Path(path).suffix in (".yaml", ".yml") else json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"cannot parse {what} {path}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"cannot parse {what} {path}: {_yaml_problem(error)}") from None
    except RecursionError:
        raise ConfigError(f"cannot parse {what} {path}: it is nested too deeply") from None
    except (ValueError, TypeError) as error:
        raise ConfigError(f"cannot parse {what} {path}: {' '.join(str(error).split())}") from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    problem = getattr(error, "problem", None) or getattr(error, "context", None)
    mark = getattr(error, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem or ' '.join(str(error).split())}{where}"


def read_config_file(path: str | os.PathLike, what: str = "config") -> dict[str, Any]:
    """A config file's top-level mapping, as plain containers (see read_config_text, parse_config_text)."""
    data = parse_config_text(read_config_text(path, what), path, what)
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} does not hold a mapping at the top level")
    return data


def load_config(path: str | os.PathLike) -> HParams:
    """Read a .json or .yaml/.yml config into HParams (no key checked: see load_model_config)."""
    return _hparams(read_config_file(path), path)


def _hparams(data: dict[str, Any], path: str | os.PathLike) -> HParams:
    try:
        return HParams(data)
    except RecursionError:
        raise ConfigError(f"config {path} is nested too deeply") from None


def save_config(config: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a config atomically: JSON with indent 2, or YAML (keys sorted) for .yaml/.yml."""
    path = Path(path)
    data = config.to_dict() if isinstance(config, HParams) else dict(config)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            if path.suffix in (".yaml", ".yml"):
                yaml.safe_dump(data, f, sort_keys=True, allow_unicode=True)
            else:
                json.dump(data, f, indent=2, ensure_ascii=False)
                f.write("\n")


def load_template(name: str) -> HParams:
    """One of configs_template/: config_template.json, config_tiny_template.json, diffusion_template.yaml."""
    return load_config(TEMPLATE_DIR / name)


def load_model_config(path: str | os.PathLike, need_train: bool = False) -> HParams:
    """Load and check a So-VITS config.json, filling the keys that 4.0/early-4.1 configs lack, as 4.1 does.

    `need_train`: the train section must be there too (train.py). Every problem is one ConfigError."""
    from core.config_schema import check_sections, choose_speech_encoder, validate_model_config
    from core.registry import ENCODER_RECORDS

    data = read_config_file(path)
    check_sections(data, str(path), ("data", "model"))
    choose_speech_encoder(data["model"], str(path), {name: record.dim for name, record in ENCODER_RECORDS.items()})
    for key, value in MODEL_FALLBACKS.items():
        if data["model"].get(key) is None:
            data["model"][key] = value
    for key, value in DATA_FALLBACKS.items():
        if data["data"].get(key) is None:
            data["data"][key] = value
    validate_model_config(data, str(path), need_train)
    return _hparams(data, path)


def load_diffusion_config(path: str | os.PathLike) -> HParams:
    """Load and check a diffusion.yaml (types, ranges and the keys it must have); one ConfigError per problem."""
    from core.config_schema import validate_diffusion_config

    data = read_config_file(path, "diffusion config")
    validate_diffusion_config(data, str(path))
    return _hparams(data, path)


def load_speaker_map(path: str | os.PathLike) -> dict[str, int]:
    """Only the `spk` map of a config.json (train_index.py needs nothing else), checked as load_model_config
    checks it: ids are integers >= 0 and below model.n_speakers where the config has it."""
    from core.config_schema import check_sections, check_speakers

    data = read_config_file(path)
    check_sections(data, str(path), ())
    if "spk" not in data:
        raise ConfigError(f"{path} has no 'spk' speaker map")
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    check_speakers(data["spk"], "spk", model.get("n_speakers"), "model.n_speakers", str(path))
    return dict(data["spk"])
