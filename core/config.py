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


def load_config(path: str | os.PathLike) -> HParams:
    """Read a .json or .yaml/.yml config into HParams."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot parse config {path}: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} does not hold a mapping at the top level")
    return HParams(data)


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


def load_model_config(path: str | os.PathLike) -> HParams:
    """Load a So-VITS config.json and fill the keys that 4.0/early-4.1 configs lack, as 4.1 does."""
    config = load_config(path)
    for section in ("data", "model"):
        if section not in config:
            raise ConfigError(f"config {path} has no '{section}' section; is it a So-VITS config.json?")
    for key, value in MODEL_FALLBACKS.items():
        if config.model.get(key) is None:
            config.model[key] = value
    for key, value in DATA_FALLBACKS.items():
        if config.data.get(key) is None:
            config.data[key] = value
    if "spk" not in config:
        raise ConfigError(f"config {path} has no 'spk' speaker map")
    return config
