"""WavLM Base+ (`WavLM-Base+.pt`): `{cfg, model}` with a plain-dict WavLMConfig and fairseq-style weight names.

WavLM is HuBERT plus a bucketed relative position bias (table in layer 0, shared by all layers) that each
layer gates from its own attention input (`gru_rel_pos`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.errors import ConfigError
from core.pretrained import require_pretrained
from vencoder.encoder import SpeechEncoder
from vencoder.hubert import FAIRSEQ_RENAMES
from vencoder.safe_pickle import load_checkpoint, to_plain
from vencoder.wav2vec2 import (LayerDims, RelativePositionDims, Wav2Vec2Dims, Wav2Vec2Model, build_model,
                               extractor_norm, parse_conv_layers, rename_keys)

# WavLMConfig defaults, used for fields a file does not carry.
WAVLM_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default",
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_norm_first": False,
    "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    "conv_bias": False,
    "normalize": False,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "relative_position_embedding": False,
    "num_buckets": 320,
    "max_distance": 1280,
    "gru_rel_pos": False,
}
TRAINING_ONLY_KEYS = ("mask_emb",)


def wavlm_dims(cfg: dict[str, Any]) -> Wav2Vec2Dims:
    cfg = {**WAVLM_DEFAULTS, **cfg}
    norm = extractor_norm(cfg)
    conv_layers = parse_conv_layers(str(cfg["conv_feature_layers"]))
    dim, heads = int(cfg["encoder_embed_dim"]), int(cfg["encoder_attention_heads"])
    relative = None
    if cfg["relative_position_embedding"]:
        relative = RelativePositionDims(num_buckets=int(cfg["num_buckets"]), max_distance=int(cfg["max_distance"]),
                                        gated=bool(cfg["gru_rel_pos"]))
    return Wav2Vec2Dims(
        conv_layers=conv_layers,
        extractor_mode=norm,
        conv_bias=bool(cfg["conv_bias"]),
        embed_dim=dim,
        layers=(LayerDims(heads=heads, head_dim=dim // heads, ffn_dim=int(cfg["encoder_ffn_embed_dim"])),)
        * int(cfg["encoder_layers"]),
        layer_norm_first=bool(cfg["layer_norm_first"]),
        pos_conv_kernel=int(cfg["conv_pos"]),
        pos_conv_groups=int(cfg["conv_pos_groups"]),
        feature_proj=conv_layers[-1][0] != dim,
        relative_position=relative,
    )


def load_wavlm(path: Path, device: torch.device, what: str) -> tuple[Wav2Vec2Model, bool]:
    """The model and whether the waveform is layer-normed first (cfg normalize)."""
    checkpoint = load_checkpoint(require_pretrained(path, what))
    if not isinstance(checkpoint, dict) or not {"cfg", "model"} <= checkpoint.keys():
        raise ConfigError(f"{path} is not a WavLM checkpoint (expected keys 'cfg' and 'model')")
    cfg = to_plain(checkpoint["cfg"])
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: 'cfg' is not a dict")
    renamed = rename_keys(checkpoint["model"], FAIRSEQ_RENAMES, TRAINING_ONLY_KEYS)
    normalize = bool({**WAVLM_DEFAULTS, **cfg}["normalize"])
    return build_model(wavlm_dims(cfg), renamed, device, str(path)), normalize


class WavLMBasePlus(SpeechEncoder):
    """wavlmbase+: output of the last layer (768-dim), T = (N - 400) // 320 + 1."""

    def __init__(self, name: str, path: Path, device: torch.device):
        super().__init__(name, path, device)
        self.model, self.normalize = load_wavlm(self.path, self.device, f"speech encoder {name}")

    def encode(self, wav16k: torch.Tensor) -> torch.Tensor:
        wav = wav16k[None]  # [1, N]
        if self.normalize:
            wav = F.layer_norm(wav, wav.shape[-1:])
        return self.model(wav).transpose(1, 2)
