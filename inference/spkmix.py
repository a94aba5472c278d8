"""Dynamic speaker mix: a timeline of per-speaker weights over the output (spec §4.9).

The timeline maps each speaker (id or name) to contiguous segments `[t_start, t_end, w_start, w_end]`,
times as fractions 0..1 of the output, the weight ramping linearly inside each segment. It is read
from JSON, or from a 4.1 `spkmix.py` without executing it (the dict literal is parsed with `ast`).
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from core.config import parse_config_text, read_config_text
from core.errors import ConfigError

Timeline = dict[int, list[list[float]]]


def load_timeline(path: str | Path, speakers: Mapping[str, int]) -> Timeline:
    """Read and validate a timeline file (.json, or a 4.1 spkmix.py holding `spk_mix_map = {...}`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"speaker-mix timeline not found: {path}")
    text = read_config_text(path, "speaker-mix timeline")
    raw = _parse_python_map(text, path) if path.suffix == ".py" else _parse_json(text, path)
    return validate_timeline(raw, speakers, source=str(path))


def _parse_json(text: str, path: Path) -> dict:
    data = parse_config_text(text, path, "speaker-mix timeline")
    if not isinstance(data, dict):
        raise ConfigError(f"speaker-mix timeline {path} must hold an object mapping speakers to segments")
    return data


def _parse_python_map(text: str, path: Path) -> dict:
    """Find `spk_mix_map = {...}` in a spkmix.py and evaluate only its literal."""
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as error:
        raise ConfigError(f"cannot parse {path}: {error.msg} (line {error.lineno})") from None
    except (RecursionError, MemoryError, ValueError):
        raise ConfigError(f"cannot parse {path}: it is nested too deeply or holds a null byte") from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "spk_mix_map" for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
                raise ConfigError(f"spk_mix_map in {path} must be a plain literal (numbers, lists, dict)") from None
            if isinstance(value, dict):
                return value
    raise ConfigError(f"{path} defines no dict 'spk_mix_map'")


def validate_timeline(raw: Mapping, speakers: Mapping[str, int], source: str = "timeline") -> Timeline:
    """Check the rules of spec §4.9 and return {speaker id: segments}; every problem is one clear message."""
    n_speakers = len(speakers)
    timeline: Timeline = {}
    for key, segments in raw.items():
        sid = _speaker_id(key, speakers, source)
        if sid in timeline:
            raise ConfigError(f"{source}: speaker {key!r} appears twice")
        timeline[sid] = _validate_segments(segments, key, source)
    missing = sorted(set(range(n_speakers)) - set(timeline))
    if missing:
        names = {v: k for k, v in speakers.items()}
        raise ConfigError(f"{source}: every speaker of the model must appear; missing "
                          f"{', '.join(str(names.get(m, m)) for m in missing)} (use [[0, 1, 0, 0]] for an unused one)")
    return timeline


def _speaker_id(key: object, speakers: Mapping[str, int], source: str) -> int:
    if isinstance(key, str) and key in speakers:
        return int(speakers[key])
    try:
        sid = int(key)  # JSON object keys are strings: "0", "1", ...
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{source}: unknown speaker {key!r}; the model has {', '.join(speakers)}") from None
    if not 0 <= sid < len(speakers):
        raise ConfigError(f"{source}: speaker id {sid} is out of range 0..{len(speakers) - 1}")
    return sid


def _validate_segments(segments: object, key: object, source: str) -> list[list[float]]:
    where = f"{source}: speaker {key!r}"
    if not isinstance(segments, Sequence) or isinstance(segments, str) or len(segments) == 0:
        raise ConfigError(f"{where}: expected a non-empty list of [t_start, t_end, w_start, w_end] segments")
    checked: list[list[float]] = []
    for i, segment in enumerate(segments):
        if not isinstance(segment, Sequence) or len(segment) != 4:
            raise ConfigError(f"{where}: segment {i} must be [t_start, t_end, w_start, w_end]")
        try:
            t0, t1, w0, w1 = (float(v) for v in segment)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{where}: segment {i} holds a value that is not a number") from None
        if not all(np.isfinite([t0, t1, w0, w1])):
            raise ConfigError(f"{where}: segment {i} holds NaN or infinity")
        if not 0.0 <= t0 < t1 <= 1.0:
            raise ConfigError(f"{where}: segment {i} needs 0 <= t_start < t_end <= 1, got {t0}, {t1}")
        if w0 < 0 or w1 < 0:
            raise ConfigError(f"{where}: segment {i} has a negative weight")
        expected_start = checked[-1][1] if checked else 0.0
        if abs(t0 - expected_start) > 1e-9:
            raise ConfigError(f"{where}: segment {i} starts at {t0} but must start where the previous one "
                              f"ends ({expected_start}); segments must be contiguous from 0")
        checked.append([t0, t1, w0, w1])
    if abs(checked[-1][1] - 1.0) > 1e-9:
        raise ConfigError(f"{where}: the last segment must end at 1, got {checked[-1][1]}")
    return checked


def mix_weights(timeline: Timeline, n_frames: int) -> np.ndarray:
    """Per-frame speaker weights `[n_frames, S]`, each row summing to 1 (all-zero rows become uniform)."""
    n_speakers = max(timeline) + 1
    weights = np.zeros((n_frames, n_speakers), dtype=np.float32)
    positions = (np.arange(n_frames) + 0.5) / max(n_frames, 1)
    for sid, segments in timeline.items():
        for t0, t1, w0, w1 in segments:
            inside = (positions >= t0) & (positions < t1) if t1 < 1.0 else (positions >= t0)
            weights[inside, sid] = w0 + (w1 - w0) * (positions[inside] - t0) / (t1 - t0)
    totals = weights.sum(axis=1, keepdims=True)
    uniform = np.full_like(weights, 1.0 / n_speakers)
    return np.where(totals > 0, weights / np.where(totals > 0, totals, 1.0), uniform)
