"""fairseq HuBERT checkpoints: ContentVec (vec768l12, vec256l9) and Chinese HuBERT large (cnhubertlarge).

The file is a fairseq checkpoint: `cfg` (plain dict, or omegaconf) or, in old files, `args` (argparse
Namespace) with the hyper-parameters, and `model` with the HubertModel state dict. It is read with the
restricted unpickler (vencoder.safe_pickle); fairseq itself is never imported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from core.errors import ConfigError
from core.pretrained import require_pretrained
from vencoder.encoder import SpeechEncoder
from vencoder.safe_pickle import FAIRSEQ_STAND_INS, Namespace, load_checkpoint, to_plain
from vencoder.wav2vec2 import (LayerDims, Wav2Vec2Dims, Wav2Vec2Model, build_model, extractor_norm,
                               parse_conv_layers, rename_keys)

# fairseq HubertConfig defaults, used for fields a file does not carry.
HUBERT_DEFAULTS: dict[str, Any] = {
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_norm_first": False,
    "extractor_mode": "default",
    "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    "conv_bias": False,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "conv_pos_batch_norm": False,
    "layer_type": "transformer",
}

# fairseq key -> our key (vencoder.wav2vec2 names); applied in order, first match wins.
FAIRSEQ_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.", r"feature_extractor.convs.\1.conv."),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.(1\.)?", r"feature_extractor.convs.\1.norm."),
    (r"^layer_norm\.", "feature_norm."),
    (r"^post_extract_proj\.", "feature_proj."),
    (r"^encoder\.pos_conv\.0\.", "pos_conv."),
    (r"^encoder\.layer_norm\.", "encoder_norm."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.relative_attention_bias\.weight$",
     r"layers.\1.attention.relative_bias.table"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.grep_linear\.", r"layers.\1.attention.gate."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.grep_a$", r"layers.\1.attention.gate_scale"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.", r"layers.\1.attention."),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"layers.\1.attention_norm."),
    (r"^encoder\.layers\.(\d+)\.fc([12])\.", r"layers.\1.ffn.fc\2."),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.", r"layers.\1.ffn_norm."),
    (r"^final_proj\.", "final_proj."),
)
TRAINING_ONLY_KEYS = ("mask_emb", "label_embs_concat")


def fairseq_model_config(checkpoint: dict) -> dict[str, Any]:
    """The model hyper-parameters of a fairseq checkpoint: cfg['model'] if present, else vars(args)."""
    cfg = to_plain(checkpoint.get("cfg"))
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        return cfg["model"]
    args = checkpoint.get("args")
    if isinstance(args, Namespace):
        return to_plain(args)
    raise ConfigError("the checkpoint has neither 'cfg' with a 'model' section nor 'args'; is it a fairseq file?")


def fairseq_dims(config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> Wav2Vec2Dims:
    """Wav2Vec2Dims from fairseq hyper-parameters (HubertConfig defaults for missing ones); final_proj's
    size is read from its weight."""
    config = {**HUBERT_DEFAULTS, **config}
    if config["layer_type"] != "transformer" or config["conv_pos_batch_norm"] or config.get("pos_conv_depth", 1) > 1:
        raise ConfigError("this fairseq checkpoint uses a transformer variant (conformer, batch-norm or deep "
                          "positional conv) that is not supported")
    norm = extractor_norm(config)
    conv_layers = parse_conv_layers(str(config["conv_feature_layers"]))
    dim, heads = int(config["encoder_embed_dim"]), int(config["encoder_attention_heads"])
    layer = LayerDims(heads=heads, head_dim=dim // heads, ffn_dim=int(config["encoder_ffn_embed_dim"]))
    final_proj = state_dict.get("final_proj.weight")
    return Wav2Vec2Dims(
        conv_layers=conv_layers,
        extractor_mode=norm,
        conv_bias=bool(config["conv_bias"]),
        embed_dim=dim,
        layers=(layer,) * int(config["encoder_layers"]),
        layer_norm_first=bool(config["layer_norm_first"]),
        pos_conv_kernel=int(config["conv_pos"]),
        pos_conv_groups=int(config["conv_pos_groups"]),
        feature_proj=conv_layers[-1][0] != dim,
        final_dim=int(final_proj.shape[0]) if final_proj is not None else 0,
    )


def load_fairseq_hubert(path: Path, device: torch.device, what: str) -> Wav2Vec2Model:
    """Load a fairseq HuBERT checkpoint (cfg/args + model) into our Wav2Vec2Model."""
    checkpoint = load_checkpoint(require_pretrained(path, what), FAIRSEQ_STAND_INS)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise ConfigError(f"{path} is not a fairseq checkpoint (no 'model' state dict)")
    state_dict = checkpoint["model"]
    dims = fairseq_dims(fairseq_model_config(checkpoint), state_dict)
    return build_model(dims, rename_keys(state_dict, FAIRSEQ_RENAMES, TRAINING_ONLY_KEYS), device, f"{path}")


class LayerFeatures(nn.Module):
    """wav `[1, N]` -> `[1, D, T]`: one layer's output of a HuBERT model (all layers when `output_layer` is None),
    optionally through final_proj."""

    def __init__(self, model: Wav2Vec2Model, output_layer: int | None, project: bool):
        super().__init__()
        self.model = model
        self.output_layer = output_layer
        self.project = project

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = self.model(wav, output_layer=self.output_layer)  # [1, T, D]
        if self.project:
            x = self.model.final_proj(x)  # [1, T, final_dim]
        return x.transpose(1, 2)


class FairseqHubertEncoder(SpeechEncoder):
    """A fairseq HuBERT checkpoint read as `[1, D, T]` features, T = (N - 400) // 320 + 1 for N >= 400."""

    output_layer: int | None = None  # 1-based layer whose output is taken; None = all layers (+ final norm)
    project: bool = False            # pass the features through final_proj
    runs_on_onnx = True

    def __init__(self, name: str, path: Path, device: torch.device):
        super().__init__(name, path, device)
        self.model = load_fairseq_hubert(self.path, self.device, f"speech encoder {name}")
        if self.project and self.model.final_proj is None:
            raise ConfigError(f"{self.path} has no final_proj, which speech encoder {name} needs")
        self.features = LayerFeatures(self.model, self.output_layer, self.project)

    def encode(self, wav16k: torch.Tensor) -> torch.Tensor:
        return self.features(wav16k[None])

    def traceable(self) -> nn.Module:
        return self.features


class ContentVec768L12(FairseqHubertEncoder):
    """vec768l12: output of transformer layer 12 (768-dim)."""
    output_layer = 12


class ContentVec256L9(FairseqHubertEncoder):
    """vec256l9: layer-9 output through final_proj (256-dim)."""
    output_layer = 9
    project = True


class CNHubertLarge(FairseqHubertEncoder):
    """cnhubertlarge: all 24 layers plus the final encoder layer norm (1024-dim)."""
    output_layer = None
