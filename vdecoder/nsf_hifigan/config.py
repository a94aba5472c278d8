"""The vocoder's `config.json`: the settings the generator and its mel extraction read."""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from core.errors import ConfigError


@dataclass(frozen=True)
class VocoderConfig:
    sampling_rate: int = 44100
    num_mels: int = 128                       # mel bins = conv_pre input channels
    n_fft: int = 2048
    win_size: int = 2048
    hop_size: int = 512                       # equals prod(upsample_rates)
    fmin: float = 40.0
    fmax: float = 16000.0
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4, 4)
    upsample_initial_channel: int = 512       # conv_pre width; halves at every stage
    resblock: str = "1"                       # "1": two convs per dilation, "2": one
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "VocoderConfig":
        """Read the known keys (others, e.g. training settings, are ignored); missing ones keep the defaults."""
        known = {f.name for f in fields(cls)}
        kwargs = {key: _freeze(value) for key, value in values.items() if key in known}
        try:
            config = cls(**kwargs)
        except TypeError as error:
            raise ConfigError(f"bad NSF-HiFiGAN config: {error}") from None
        config.check()
        return config

    @classmethod
    def load(cls, path: str | Path) -> "VocoderConfig":
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"cannot read the NSF-HiFiGAN config {path}: {error}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path} is not a JSON object")
        return cls.from_dict(values)

    def check(self) -> None:
        upsampled = 1
        for rate in self.upsample_rates:
            upsampled *= rate
        if upsampled != self.hop_size:
            raise ConfigError(f"NSF-HiFiGAN config: upsample_rates {list(self.upsample_rates)} multiply to "
                              f"{upsampled}, not hop_size {self.hop_size}")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ConfigError("NSF-HiFiGAN config: upsample_rates and upsample_kernel_sizes differ in length")
        if str(self.resblock) not in ("1", "2"):
            raise ConfigError(f"NSF-HiFiGAN config: resblock must be '1' or '2', not {self.resblock!r}")


def _freeze(value: Any) -> Any:
    """JSON lists -> tuples, so the config stays hashable and immutable."""
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


# openvpi's nsf_hifigan_20221211 (44.1 kHz, 128 mels, hop 512): lets preprocessing compute the
# vocoder mel without the vocoder files.
NSF_HIFIGAN_44K = VocoderConfig()
