"""One pure-torch wav2vec2/HuBERT-style encoder that all HuBERT-family checkpoints load into.

fairseq HuBERT (ContentVec, Chinese HuBERT large), bshall's HuBERT-Soft, DPHuBERT (pruned, per-layer
sizes) and WavLM (gated relative position bias) share one computation:

    conv feature extractor -> LayerNorm -> Linear -> x + GELU(pos_conv(x)) -> transformer layers

Each format module reads its file's hyper-parameters into `Wav2Vec2Dims` and renames its state-dict keys
to this module's names (see `Wav2Vec2Model.state_dict()`).
"""
from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import AudioError, ConfigError


@dataclass(frozen=True)
class LayerDims:
    """Sizes of one transformer layer; 0 heads = no attention block, 0 ffn_dim = no feed-forward block."""
    heads: int
    head_dim: int
    ffn_dim: int


@dataclass(frozen=True)
class RelativePositionDims:
    """WavLM's bucketed relative position bias (table in layer 0), optionally gated per layer."""
    num_buckets: int = 320
    max_distance: int = 800
    gated: bool = True


@dataclass(frozen=True)
class Wav2Vec2Dims:
    conv_layers: tuple[tuple[int, int, int], ...]  # (channels, kernel, stride) per feature-extractor conv
    extractor_mode: str                      # "group_norm": GroupNorm after conv 0 only;
                                             # "layer_norm": LayerNorm after every conv
    conv_bias: bool                          # feature-extractor convs have a bias
    embed_dim: int                           # transformer width D
    layers: tuple[LayerDims, ...]
    layer_norm_first: bool                   # pre-LN layers + final encoder norm (large models); else post-LN
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    feature_proj: bool = True                # Linear(C_last, D) after the feature norm (fairseq: only if C_last != D)
    final_dim: int = 0                       # size of final_proj (0: no final_proj)
    channel_scale: bool = False              # DPHuBERT: per-channel scale on the conv features
    relative_position: RelativePositionDims | None = None


def extractor_norm(config: dict[str, Any]) -> str:
    """The feature extractor's norm for fairseq's `extractor_mode`, after checking the activation we support."""
    if config["activation_fn"] != "gelu":
        raise ConfigError(f"activation '{config['activation_fn']}' is not supported (only gelu)")
    modes = {"default": "group_norm", "layer_norm": "layer_norm"}
    if config["extractor_mode"] not in modes:
        raise ConfigError(f"unknown extractor_mode '{config['extractor_mode']}'")
    return modes[config["extractor_mode"]]


def parse_conv_layers(spec: str) -> tuple[tuple[int, int, int], ...]:
    """Parse fairseq's `conv_feature_layers` string, e.g. "[(512,10,5)] + [(512,3,2)] * 4", without eval.

    Only list/tuple literals of ints, `+` between lists and `* int` repeats are accepted.
    """
    try:
        value = _literal_list(ast.parse(spec.strip(), mode="eval").body)
        layers = tuple((int(c), int(k), int(s)) for c, k, s in value)
    except (SyntaxError, ValueError, TypeError) as error:
        raise ConfigError(f"cannot parse conv_feature_layers {spec!r}: {error}") from None
    if not layers:
        raise ConfigError(f"conv_feature_layers {spec!r} defines no layers")
    return layers


def _literal_list(node: ast.AST) -> list:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _literal_list(node.left) + _literal_list(node.right)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        count = ast.literal_eval(node.right)
        if not isinstance(count, int) or not 0 <= count <= 1000:
            raise ValueError("a list may only be repeated by a small int")
        return _literal_list(node.left) * count
    value = ast.literal_eval(node)
    if not isinstance(value, list):
        raise ValueError("expected a list of (channels, kernel, stride) tuples")
    return value


def conv_output_length(dims: Wav2Vec2Dims, samples: int) -> int:
    """Frames the feature extractor gives for `samples` inputs (0 if too short)."""
    length = samples
    for _, kernel, stride in dims.conv_layers:
        if length < kernel:
            return 0
        length = (length - kernel) // stride + 1
    return length


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a `[B, C, T]` tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ConvBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, kernel: int, stride: int, bias: bool, norm: str | None):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, channels, kernel, stride=stride, bias=bias)
        if norm == "group_norm":  # groups == channels: each channel normalized over the whole utterance
            self.norm = nn.GroupNorm(channels, channels)
        elif norm == "layer_norm":
            self.norm = ChannelLayerNorm(channels)
        else:
            self.norm = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.gelu(x)


class FeatureExtractor(nn.Module):
    """Strided conv stack, waveform `[B, N]` -> features `[B, C_last, T]` (no padding: T = conv_output_length)."""

    def __init__(self, dims: Wav2Vec2Dims):
        super().__init__()
        blocks, in_channels = [], 1
        for index, (channels, kernel, stride) in enumerate(dims.conv_layers):
            norm = dims.extractor_mode if dims.extractor_mode == "layer_norm" or index == 0 else None
            blocks.append(ConvBlock(in_channels, channels, kernel, stride, dims.conv_bias, norm))
            in_channels = channels
        self.convs = nn.ModuleList(blocks)
        self.channel_scale = nn.Parameter(torch.ones(in_channels)) if dims.channel_scale else None

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = wav[:, None, :]  # [B, 1, N]
        for block in self.convs:
            x = block(x)
        if self.channel_scale is not None:
            x = x * self.channel_scale[:, None]
        return x  # [B, C_last, T]


class PositionalConv(nn.Module):
    """Grouped conv over time with weight normalization (dim 2), even kernel: the last output frame is dropped."""

    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        self.kernel, self.groups = kernel, groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        bound = (dim // groups * kernel) ** -0.5
        self.weight_v = nn.Parameter(nn.init.uniform_(torch.empty(dim, dim // groups, kernel), -bound, bound))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, T, D] -> GELU(conv(x)) [B, T, D]."""
        weight = self.weight_g * self.weight_v / self.weight_v.norm(dim=(0, 1), keepdim=True)
        y = F.conv1d(x.transpose(1, 2), weight, self.bias, padding=self.kernel // 2, groups=self.groups)
        if self.kernel % 2 == 0:
            y = y[:, :, :-1]
        return F.gelu(y.transpose(1, 2))


class RelativePositionBias(nn.Module):
    """WavLM bias[h, i, j] from a table indexed by the bucket of (j - i); computed once, shared by all layers."""

    def __init__(self, heads: int, dims: RelativePositionDims):
        super().__init__()
        self.dims = dims
        self.table = nn.Parameter(torch.zeros(dims.num_buckets, heads))  # [buckets, H]

    def bucket(self, relative: torch.Tensor) -> torch.Tensor:
        """Bucket index of each relative position (key index minus query index)."""
        half = self.dims.num_buckets // 2  # one half per direction
        exact = half // 2                  # distances below this get their own bucket
        distance = relative.abs()
        far = exact + (torch.log(distance.float().clamp(min=1) / exact)
                       / math.log(self.dims.max_distance / exact) * (half - exact)).long()
        far = far.clamp(max=half - 1)
        return (relative > 0).long() * half + torch.where(distance < exact, distance, far)

    def forward(self, frames: int) -> torch.Tensor:
        positions = torch.arange(frames, device=self.table.device)
        relative = positions[None, :] - positions[:, None]  # [T, T]
        return self.table[self.bucket(relative)].permute(2, 0, 1)  # [H, T, T]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, relative: RelativePositionDims | None = None,
                 bias_table: bool = False):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)
        self.relative_bias = RelativePositionBias(heads, relative) if bias_table else None
        gated = relative is not None and relative.gated
        self.gate = nn.Linear(head_dim, 8) if gated else None
        self.gate_scale = nn.Parameter(torch.ones(1, heads, 1, 1)) if gated else None

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.heads, -1).transpose(1, 2)  # [B, H, T, hd]

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, T, D]; position_bias: [H, T, T] additive (WavLM) or None -> [B, T, D]."""
        B, T, _ = x.shape
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(x)), self._split(self.v_proj(x))
        mask = None
        if position_bias is not None:
            mask = position_bias[None] if self.gate is None else self._gate(x) * position_bias[None]  # [B, H, T, T]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, T, hd]
        return self.out_proj(y.transpose(1, 2).reshape(B, T, -1))

    def _gate(self, x: torch.Tensor) -> torch.Tensor:
        """WavLM's per-query gate from the attention input: [B, T, D] -> [B, H, T, 1]."""
        B, T, _ = x.shape
        logits = self.gate(self._split(x)).view(B, self.heads, T, 2, 4).sum(-1)  # [B, H, T, 2]
        gate_a, gate_b = torch.sigmoid(logits).chunk(2, dim=-1)
        return gate_a * (gate_b * self.gate_scale - 1.0) + 2.0


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerLayer(nn.Module):
    """Post-LN (base) or pre-LN (large) layer; a pruned layer may lack attention and/or feed-forward."""

    def __init__(self, dim: int, layer: LayerDims, pre_norm: bool, relative: RelativePositionDims | None = None,
                 bias_table: bool = False):
        super().__init__()
        self.pre_norm = pre_norm
        self.attention = (SelfAttention(dim, layer.heads, layer.head_dim, relative, bias_table)
                          if layer.heads > 0 else None)
        self.attention_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, layer.ffn_dim) if layer.ffn_dim > 0 else None
        self.ffn_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.pre_norm:
            if self.attention is not None:
                x = x + self.attention(self.attention_norm(x), position_bias)
            if self.ffn is not None:
                x = x + self.ffn(self.ffn_norm(x))
            return x
        if self.attention is not None:
            x = x + self.attention(x, position_bias)
        x = self.attention_norm(x)
        if self.ffn is not None:
            x = x + self.ffn(x)
        return self.ffn_norm(x)


class Wav2Vec2Model(nn.Module):
    def __init__(self, dims: Wav2Vec2Dims):
        super().__init__()
        self.dims = dims
        channels = dims.conv_layers[-1][0]
        self.feature_extractor = FeatureExtractor(dims)
        self.feature_norm = nn.LayerNorm(channels)
        self.feature_proj = nn.Linear(channels, dims.embed_dim) if dims.feature_proj else None
        self.pos_conv = PositionalConv(dims.embed_dim, dims.pos_conv_kernel, dims.pos_conv_groups)
        self.encoder_norm = nn.LayerNorm(dims.embed_dim)
        self.layers = nn.ModuleList(
            TransformerLayer(dims.embed_dim, layer, dims.layer_norm_first, dims.relative_position,
                             bias_table=dims.relative_position is not None and index == 0)
            for index, layer in enumerate(dims.layers))
        self.final_proj = nn.Linear(dims.embed_dim, dims.final_dim) if dims.final_dim > 0 else None

    def conv_features(self, wav: torch.Tensor) -> torch.Tensor:
        """wav: [B, N] -> [B, C_last, T]; a clear AudioError when N is shorter than the receptive field."""
        if conv_output_length(self.dims, wav.shape[-1]) < 1:
            raise AudioError(f"audio of {wav.shape[-1]} samples is too short for the speech encoder "
                             f"(needs at least {self.receptive_field()} samples at 16 kHz)")
        return self.feature_extractor(wav)

    def receptive_field(self) -> int:
        field = 1
        for _, kernel, stride in reversed(self.dims.conv_layers):
            field = (field - 1) * stride + kernel
        return field

    def forward(self, wav: torch.Tensor, output_layer: int | None = None) -> torch.Tensor:
        """wav: [B, N] -> [B, T, D].

        output_layer=None runs every layer (plus the final encoder norm of a pre-LN model);
        output_layer=n (1-based) stops after layer n and skips that final norm, as fairseq does.
        """
        if output_layer is not None and not 1 <= output_layer <= len(self.layers):
            raise ConfigError(f"this model has {len(self.layers)} layers; layer {output_layer} was asked for")
        x = self._embed(wav)
        position_bias = self._position_bias(x.shape[1])
        for layer in self.layers[:output_layer]:
            x = layer(x, position_bias)
        if self.dims.layer_norm_first and output_layer is None:
            x = self.encoder_norm(x)
        return x

    def layer_outputs(self, wav: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's output `[B, T, D]`, i.e. forward(wav, output_layer=n) for n = 1..L in one pass."""
        x = self._embed(wav)
        position_bias = self._position_bias(x.shape[1])
        outputs = []
        for layer in self.layers:
            x = layer(x, position_bias)
            outputs.append(x)
        return outputs

    def _embed(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [B, N] -> input of the first transformer layer [B, T, D]."""
        x = self.feature_norm(self.conv_features(wav).transpose(1, 2))  # [B, T, C]
        if self.feature_proj is not None:
            x = self.feature_proj(x)  # [B, T, D]
        x = x + self.pos_conv(x)
        return x if self.dims.layer_norm_first else self.encoder_norm(x)

    def _position_bias(self, frames: int) -> torch.Tensor | None:
        if self.dims.relative_position is None:
            return None
        return self.layers[0].attention.relative_bias(frames)  # [H, T, T]


def build_model(dims: Wav2Vec2Dims, state_dict: dict[str, torch.Tensor], device: torch.device,
                what: str) -> Wav2Vec2Model:
    """Build the model without allocating weights twice and load `state_dict` (already in our key names).

    Every key the model needs must be present with the right shape (else ConfigError naming the first
    problems); extra keys must have been removed by the caller.
    """
    with torch.device("meta"):
        model = Wav2Vec2Model(dims)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    check_state_dict(expected, {key: tuple(value.shape) for key, value in state_dict.items()}, what)
    model.load_state_dict({key: value.float() for key, value in state_dict.items()}, assign=True)
    return model.to(device).eval()


def check_state_dict(expected: dict[str, tuple], found: dict[str, tuple], what: str) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(key for key in set(expected) & set(found) if expected[key] != found[key])
    if missing or unexpected or wrong:
        details = [f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                   for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                   if keys]
        raise ConfigError(f"{what} does not match the model its hyper-parameters describe ({'; '.join(details)})")


def rename_keys(state_dict: dict[str, torch.Tensor], renames: tuple[tuple[str, str], ...],
                drop: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Map a foreign state dict onto our key names; keys in `drop` go, keys no rule matches stay as they are
    (so that build_model reports them as unexpected)."""
    result = {}
    for key, value in state_dict.items():
        if key in drop:
            continue
        for pattern, replacement in renames:
            new_key, count = re.subn(pattern, replacement, key)
            if count:
                key = new_key
                break
        result[key] = value
    return result
