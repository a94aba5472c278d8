"""MoeVoiceStudio's model descriptor `<Name>.json` (moevoicestudio.md §C2) and the facts it is built from.

`Hubert` names the content-encoder ONNX MoeVS loads from its `hubert/` folder. 4.1 derived it from
`gin_channels` (§19.31); here it comes from the config's `speech_encoder`, and `HiddenSize` from `ssl_dim`,
the width of the features the encoder returns. Encoders MoeVS has no ONNX for are refused up front.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

from core.errors import ConfigError, SvcError
from core.fileio import atomic_path
from core.registry import ENCODER_RECORDS

# speech_encoder -> MoeVS encoder file name (without .onnx); all are ContentVec layer outputs.
HUBERT_NAMES: dict[str, str] = {name: record.moevs_name for name, record in ENCODER_RECORDS.items()
                                if record.moevs_name}


@dataclass(frozen=True)
class Speakers:
    """The config's speakers in MoeVS order (by id): `names[i]` is MoeVS character i, `ids[i]` its emb_g row."""

    names: tuple[str, ...]
    ids: tuple[int, ...]


def model_speakers(config: Mapping[str, Any]) -> Speakers:
    """Speakers of a So-VITS config, ordered by id (the `spk` order for every config 4.1 writes)."""
    spk = config.get("spk")
    if not isinstance(spk, Mapping) or not spk:
        raise ConfigError("the config has no 'spk' speaker map")
    try:
        pairs = sorted(((int(sid), str(name)) for name, sid in spk.items()), key=lambda p: p[0])
    except (TypeError, ValueError):
        raise ConfigError("the config's 'spk' map must give each speaker name an integer id") from None
    ids = [sid for sid, _ in pairs]
    n_speakers = int(config["model"].get("n_speakers", 0))
    if len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) >= n_speakers:
        raise ConfigError(f"the config's 'spk' ids {ids} must be distinct and in 0..n_speakers-1 "
                          f"(n_speakers = {n_speakers})")
    return Speakers(names=tuple(name for _, name in pairs), ids=tuple(ids))


def hubert_name(model_config: Mapping[str, Any], override: str | None = None) -> str:
    """MoeVS's `Hubert` for a model: from `speech_encoder`, or `override` (any name; the user vouches for it).

    Raises SvcError for encoders MoeVS has no ONNX for, and when `ssl_dim` disagrees with the encoder's width.
    """
    if override:
        if "/" in override or "\\" in override or override.endswith(".onnx"):
            raise SvcError(f"--hubert takes a bare name like vec-768-layer-12, not a path or file ({override!r})")
        return override
    encoder = str(model_config.get("speech_encoder", "vec768l12"))
    if encoder not in HUBERT_NAMES:
        raise SvcError(
            f"MoeVoiceStudio has no ONNX content encoder for speech_encoder '{encoder}'; exportable models use "
            f"{', '.join(sorted(set(HUBERT_NAMES)))}. If you have a matching encoder ONNX of your own "
            f"(input 'source' [1, 1, N] at 16 kHz -> [1, T, {model_config.get('ssl_dim')}]), pass its name with "
            f"--hubert NAME")
    name = HUBERT_NAMES[encoder]
    width = int(name.split("-")[1])
    ssl_dim = int(model_config.get("ssl_dim", 0))
    if ssl_dim != width:
        raise SvcError(f"the config's ssl_dim ({ssl_dim}) does not match speech_encoder '{encoder}' "
                       f"({width}-dim features); fix the config, or pass --hubert NAME to name the encoder "
                       f"ONNX yourself")
    return name


def build_descriptor(name: str, config: Mapping[str, Any], speakers: Speakers, hubert: str, chara_mix: bool,
                     cluster: str | None = None, kmeans_length: int | None = None) -> dict[str, Any]:
    """The JSON fields of §C2 for a SoVits 4.x model. `cluster` is "KMeans", "Index" or None (key left out:
    MoeVS only accepts those two values, and logs an error for 4.1's empty string)."""
    data, model = config["data"], config["model"]
    descriptor: dict[str, Any] = {
        "Folder": name,
        "Name": name,
        "Type": "SoVits",
        "Rate": int(data["sampling_rate"]),
        "Hop": int(data["hop_length"]),
        "Hubert": hubert,
        "SoVits4": True,
        "SoVits3": False,
        "CharaMix": chara_mix,
        "Volume": bool(model.get("vol_embedding", False)),
        "HiddenSize": int(model["ssl_dim"]),
        "Characters": list(speakers.names),
    }
    if cluster is not None:
        descriptor["Cluster"] = cluster
        if cluster == "KMeans" and kmeans_length is not None:
            descriptor["KMeansLength"] = int(kmeans_length)
    return descriptor


def write_descriptor(descriptor: Mapping[str, Any], path: str | os.PathLike) -> None:
    """JSON with indent 4 (as 4.1 writes it), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(descriptor, indent=4) + "\n", encoding="utf-8")
