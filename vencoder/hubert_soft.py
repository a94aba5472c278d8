"""bshall's HuBERT-Soft (`hubert-soft-0d54a1f4.pt`): a plain state dict with `module.` key prefixes.

The file carries no hyper-parameters: sizes are read from weight shapes, and the head count (not
derivable from shapes) is 12, as in the released model.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

from core.errors import ConfigError
from core.pretrained import require_pretrained
from vencoder.encoder import SpeechEncoder
from vencoder.safe_pickle import load_checkpoint
from vencoder.wav2vec2 import LayerDims, Wav2Vec2Dims, Wav2Vec2Model, build_model, rename_keys

# Kernel/stride of the seven feature-extractor convs (fixed in the model code, as in HuBERT-base).
CONV_KERNELS_STRIDES = ((10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2))
PAD = 40  # zero samples added on each side: (400 - 320) // 2, so that T = N // 320

SOFT_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^feature_extractor\.conv(\d+)\.", r"feature_extractor.convs.\1.conv."),
    (r"^feature_extractor\.norm0\.", "feature_extractor.convs.0.norm."),
    (r"^feature_projection\.norm\.", "feature_norm."),
    (r"^feature_projection\.projection\.", "feature_proj."),
    (r"^positional_embedding\.conv\.", "pos_conv."),
    (r"^norm\.", "encoder_norm."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"layers.\1.attention.out_proj."),
    (r"^encoder\.layers\.(\d+)\.linear([12])\.", r"layers.\1.ffn.fc\2."),
    (r"^encoder\.layers\.(\d+)\.norm1\.", r"layers.\1.attention_norm."),
    (r"^encoder\.layers\.(\d+)\.norm2\.", r"layers.\1.ffn_norm."),
    (r"^proj\.", "final_proj."),
)
TRAINING_ONLY_KEYS = ("masked_spec_embed", "label_embedding.weight")


def split_in_proj(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """nn.MultiheadAttention's stacked in_proj ([3D, D], rows q, k, v) -> separate q/k/v projections."""
    result = {}
    for key, value in state_dict.items():
        match = re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.in_proj_(weight|bias)", key)
        if match is None:
            result[key] = value
            continue
        for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
            result[f"layers.{match[1]}.attention.{name}.{match[2]}"] = part
    return result


def soft_dims(state_dict: dict[str, torch.Tensor], heads: int) -> Wav2Vec2Dims:
    """HuBERT-Soft sizes from the (prefix-free) state dict's shapes."""
    try:
        dim = state_dict["norm.weight"].shape[0]
        channels = [state_dict[f"feature_extractor.conv{i}.weight"].shape[0]
                    for i in range(len(CONV_KERNELS_STRIDES))]
        layer_count = 1 + max(int(m[1]) for key in state_dict if (m := re.match(r"encoder\.layers\.(\d+)\.", key)))
        ffn = state_dict["encoder.layers.0.linear1.weight"].shape[0]
        proj = state_dict["proj.weight"].shape[0]
        pos_kernel = state_dict["positional_embedding.conv.weight_v"].shape[-1]
        pos_groups = dim // state_dict["positional_embedding.conv.weight_v"].shape[1]
    except (KeyError, ValueError) as error:
        raise ConfigError(f"not a HuBERT-Soft state dict (missing {error})") from None
    if dim % heads:
        raise ConfigError(f"HuBERT-Soft width {dim} is not divisible by {heads} heads")
    return Wav2Vec2Dims(
        conv_layers=tuple((c, k, s) for c, (k, s) in zip(channels, CONV_KERNELS_STRIDES)),
        extractor_mode="group_norm",
        conv_bias=False,
        embed_dim=dim,
        layers=(LayerDims(heads=heads, head_dim=dim // heads, ffn_dim=ffn),) * layer_count,
        layer_norm_first=False,
        pos_conv_kernel=pos_kernel,
        pos_conv_groups=pos_groups,
        final_dim=proj,
    )


def load_hubert_soft(path: Path, device: torch.device, what: str, heads: int = 12) -> Wav2Vec2Model:
    state_dict = load_checkpoint(require_pretrained(path, what))
    if not isinstance(state_dict, dict):
        raise ConfigError(f"{path} is not a HuBERT-Soft state dict")
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    dims = soft_dims(state_dict, heads)
    renamed = rename_keys(split_in_proj(state_dict), SOFT_RENAMES, TRAINING_ONLY_KEYS)
    return build_model(dims, renamed, device, str(path))


class HubertSoft(SpeechEncoder):
    """hubertsoft: 256-dim soft units, T = N // 320 (the waveform is zero-padded by 40 samples each side)."""

    def __init__(self, name: str, path: Path, device: torch.device, heads: int = 12):
        super().__init__(name, path, device)
        self.model = load_hubert_soft(self.path, self.device, f"speech encoder {name}", heads)

    def encode(self, wav16k: torch.Tensor) -> torch.Tensor:
        wav = F.pad(wav16k[None], (PAD, PAD))  # [1, N + 80]
        units = self.model.final_proj(self.model(wav))  # [1, T, 256]
        return units.transpose(1, 2)
