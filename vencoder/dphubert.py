"""DPHuBERT (`DPHuBERT-sp0.75.pth`): `{config, state_dict}` of a structurally pruned HuBERT-base.

`config` holds the keyword arguments of the torchaudio-style wav2vec2 builder, with per-layer lists
(heads, FFN widths, which sub-layers survive pruning) and pruned conv channel counts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.errors import ConfigError
from core.pretrained import require_pretrained
from vencoder.encoder import SpeechEncoder
from vencoder.safe_pickle import load_checkpoint
from vencoder.wav2vec2 import LayerDims, Wav2Vec2Dims, Wav2Vec2Model, build_model, rename_keys

DPHUBERT_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.convs.\1.conv."),
    (r"^feature_extractor\.conv_layers\.(\d+)\.layer_norm\.", r"feature_extractor.convs.\1.norm."),
    (r"^feature_extractor\.dummy_weight$", "feature_extractor.channel_scale"),
    (r"^encoder\.feature_projection\.layer_norm\.", "feature_norm."),
    (r"^encoder\.feature_projection\.projection\.", "feature_proj."),
    (r"^encoder\.transformer\.pos_conv_embed\.conv\.", "pos_conv."),
    (r"^encoder\.transformer\.layer_norm\.", "encoder_norm."),
    (r"^encoder\.transformer\.layers\.(\d+)\.layer_norm\.", r"layers.\1.attention_norm."),
    (r"^encoder\.transformer\.layers\.(\d+)\.final_layer_norm\.", r"layers.\1.ffn_norm."),
    (r"^encoder\.transformer\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"layers.\1.ffn.fc1."),
    (r"^encoder\.transformer\.layers\.(\d+)\.feed_forward\.output_dense\.", r"layers.\1.ffn.fc2."),
    (r"^encoder\.transformer\.layers\.(\d+)\.attention\.", r"layers.\1.attention."),
)
PRUNING_FLAGS = ("extractor_prune_conv_channels", "encoder_prune_attention_heads", "encoder_prune_attention_layer",
                 "encoder_prune_feed_forward_intermediate", "encoder_prune_feed_forward_layer")


def dphubert_dims(config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> Wav2Vec2Dims:
    """Wav2Vec2Dims from a DPHuBERT builder config (per-layer pruned sizes)."""
    if "encoder_remaining_heads" in config:
        raise ConfigError("this is a pruned WavLM (DPWavLM) file, not DPHuBERT")
    if any(config.get(flag) for flag in PRUNING_FLAGS):
        raise ConfigError("this DPHuBERT file still has pruning gates (a training checkpoint); use the final "
                          "pruned model DPHuBERT-sp0.75.pth")
    try:
        count = int(config["encoder_num_layers"])
        heads = [int(h) if use else 0 for h, use in zip(config["encoder_num_heads"], config["encoder_use_attention"])]
        ffn = [int(f) if use else 0
               for f, use in zip(config["encoder_ff_interm_features"], config["encoder_use_feed_forward"])]
        if not len(heads) == len(ffn) == count:
            raise ConfigError(f"DPHuBERT config lists per-layer sizes for {len(heads)}/{len(ffn)} of {count} layers")
        head_dim = int(config["encoder_head_dim"])
        layers = tuple(LayerDims(heads=h, head_dim=head_dim, ffn_dim=f) for h, f in zip(heads, ffn))
        conv_layers = tuple((int(c), int(k), int(s)) for c, k, s in config["extractor_conv_layer_config"])
        mode = config["extractor_mode"]
        if mode not in ("group_norm", "layer_norm"):
            raise ConfigError(f"unknown extractor_mode '{mode}'")
        return Wav2Vec2Dims(
            conv_layers=conv_layers,
            extractor_mode=mode,
            conv_bias=bool(config["extractor_conv_bias"]),
            embed_dim=int(config["encoder_embed_dim"]),
            layers=layers,
            layer_norm_first=bool(config["encoder_layer_norm_first"]),
            pos_conv_kernel=int(config["encoder_pos_conv_kernel"]),
            pos_conv_groups=int(config["encoder_pos_conv_groups"]),
            channel_scale="feature_extractor.dummy_weight" in state_dict,
        )
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise ConfigError(f"DPHuBERT config is incomplete or malformed ({type(error).__name__}: {error})") from None


def load_dphubert(path: Path, device: torch.device, what: str) -> tuple[Wav2Vec2Model, bool]:
    """The model and whether the waveform is layer-normed first (config normalize_waveform)."""
    checkpoint = load_checkpoint(require_pretrained(path, what))
    if not isinstance(checkpoint, dict) or not {"config", "state_dict"} <= checkpoint.keys():
        raise ConfigError(f"{path} is not a DPHuBERT file (expected keys 'config' and 'state_dict')")
    config, state_dict = checkpoint["config"], checkpoint["state_dict"]
    dims = dphubert_dims(config, state_dict)
    renamed = rename_keys(state_dict, DPHUBERT_RENAMES)
    # The reference loads non-strictly: leftover entries (e.g. pruning log_alpha) are ignored.
    with torch.device("meta"):
        wanted = Wav2Vec2Model(dims).state_dict().keys()
    renamed = {key: value for key, value in renamed.items() if key in wanted}
    return build_model(dims, renamed, device, str(path)), bool(config.get("normalize_waveform", False))


class DPHubert(SpeechEncoder):
    """dphubert: last-layer output (768-dim), T = (N - 400) // 320 + 1."""

    def __init__(self, name: str, path: Path, device: torch.device):
        super().__init__(name, path, device)
        self.model, self.normalize = load_dphubert(self.path, self.device, f"speech encoder {name}")

    def encode(self, wav16k: torch.Tensor) -> torch.Tensor:
        wav = wav16k[None]  # [1, N]
        if self.normalize:
            wav = F.layer_norm(wav, wav.shape[-1:])
        return self.model(wav).transpose(1, 2)
