"""Reading request fields (multipart form strings or JSON values) into checked numbers and options.

Every field is checked for type, finiteness and range, so that a bad value is a 400 naming the field
instead of a failure deep in the conversion.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from core.config_schema import describe
from inference.preflight import check_f0_predictor
from inference.svc import ConversionOptions
from server.errors import RequestError
from server.pool import LoadedModel

MAX_TRANSPOSE = 48.0      # semitones, four octaves either way, as inference_main.py allows
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Bounds:
    default: float
    low: float
    high: float


# The numeric ConversionOptions a request may set, with inference_main.py's defaults and the accepted range.
NUMERIC_OPTIONS = {
    "trans": Bounds(0.0, -MAX_TRANSPOSE, MAX_TRANSPOSE),
    "cluster_infer_ratio": Bounds(0.0, 0.0, 1.0),
    "noice_scale": Bounds(0.4, 0.0, 5.0),
    "f0_filter_threshold": Bounds(0.05, 0.0, 1.0),
    "loudness_envelope_adjustment": Bounds(1.0, 0.0, 1.0),
    "slice_db": Bounds(-40.0, -120.0, 0.0),
    "pad_seconds": Bounds(0.5, 0.0, 5.0),
}


def number(fields: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    """Field `name` as a finite float within low..high; `default` when absent or empty."""
    value = fields.get(name)
    if value is None or value == "":
        return default
    try:
        if isinstance(value, bool):
            raise ValueError
        parsed = float(value)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(f"{name} must be a number, got {describe(value)}") from None
    if not math.isfinite(parsed):
        raise RequestError(f"{name} must be a finite number, got {describe(value)}")
    if not low <= parsed <= high:
        raise RequestError(f"{name} must lie within {low:g}..{high:g}, got {describe(value)}")
    return parsed


def integer(fields: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    """Field `name` as a whole number within low..high ('44100.0' is accepted, as 4.1 does)."""
    parsed = number(fields, name, default, low, high)
    if parsed != int(parsed):
        raise RequestError(f"{name} must be a whole number, got {describe(fields.get(name))}")
    return int(parsed)


def flag(fields: Mapping[str, Any], name: str, default: bool = False) -> bool:
    """Field `name` as true/false (1/0, yes/no, on/off as well); `default` when absent or empty."""
    value = fields.get(name)
    if isinstance(value, bool):
        return value
    word = str(value if value is not None else "").strip().lower()
    if not word:
        return default
    if word in TRUE_WORDS | FALSE_WORDS:
        return word in TRUE_WORDS
    raise RequestError(f"{name} must be true or false, got {describe(value)}")


def text(fields: Mapping[str, Any], name: str, default: str) -> str:
    value = fields.get(name)
    if value is None or value == "":
        return default
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise RequestError(f"{name} must be a string, got {describe(value)}")
    return str(value)


def conversion_options(fields: Mapping[str, Any], model: LoadedModel, **fixed: Any) -> ConversionOptions:
    """inference_main.py's options from request fields (named as its long flags), checked against `model`.

    `fixed` overrides fields, for endpoints with their own field names (4.1's /voiceChangeModel).
    """
    f0_predictor = text(fields, "f0_predictor", "pm")
    check_f0_predictor(f0_predictor, model.pretrain_dir)
    options: dict[str, Any] = {name: number(fields, name, bounds.default, bounds.low, bounds.high)
                               for name, bounds in NUMERIC_OPTIONS.items()}
    options.update(speaker=text(fields, "speaker", model.speakers[0]), f0_predictor=f0_predictor,
                   auto_predict_f0=flag(fields, "auto_predict_f0"), cleanup=flag(fields, "cleanup", default=True),
                   f0_repair=flag(fields, "f0_repair"))
    options.update(fixed)
    chosen = ConversionOptions(**options)
    model.svc.speaker_id(chosen.speaker)  # an unknown speaker is a 400 listing the model's speakers
    model.check(chosen)
    return chosen
