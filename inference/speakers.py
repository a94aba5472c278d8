"""Speaker lookup by name or id, without importing torch (the pre-load checks use it)."""
from __future__ import annotations

from typing import Mapping

from core.errors import ConfigError


def speaker_id(spk2id: Mapping[str, int], speaker: str | int) -> int:
    """The id of `speaker`, given by name or as an id; an unknown one is a ConfigError listing the names."""
    if isinstance(speaker, str) and speaker in spk2id:
        return spk2id[speaker]
    try:
        sid = int(speaker)
    except (TypeError, ValueError):
        sid = -1
    if sid not in spk2id.values():
        raise ConfigError(f"unknown speaker {speaker!r}; this model has: {', '.join(spk2id)}")
    return sid
