"""So-VITS-SVC 4.1 generator `SynthesizerTrn` (spec §9), file-compatible with 4.1's `G_<step>.pth`.

content units + f0 + uv (+ volume) -> prior encoder `enc_p` -> flow⁻¹ -> NSF-HiFiGAN `dec` -> 44.1 kHz audio;
in training the posterior encoder `enc_q` encodes the linear spectrogram and the flow maps it to the prior.
Sizes live in `SynthesizerConfig`; the constructor keeps 4.1's `SynthesizerTrn(spec_channels, segment_size,
**config.model)` form (unknown keys ignored). Submodule names and registration order are the state-dict
format (top-level order: emb_g, emb_vol, pre, enc_p, dec, enc_q, flow, f0_decoder, emb_uv).

Random numbers at inference (spec §9.6): `infer` seeds a local `torch.Generator` on the input's device with
`seed` on every call and passes it to every draw, in 4.1's order (prior noise, initial sine phases, sine noise,
source-noise branch). On CPU the numbers equal those of 4.1's `torch.manual_seed(seed)`, so the output is
sample-exact; the global RNG is left untouched (4.1 reseeded it, and on `cuda:0` did not seed at all).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
from loguru import logger

from modules.attentions import Encoder as TransformerEncoder
from modules.commons import SkipRandomInit, rand_slice_segments_with_pitch, randn_like, sequence_mask
from modules.discriminator import MultiPeriodDiscriminator
from core.checkpoint import LoadReport, load_weights, state_dict_of
from core.dsp import f0_to_coarse
from modules.f0_decoder import F0Decoder, f0_to_lf0, lf0_to_f0, normalize_f0
from modules.flows import WN, ResidualCouplingBlock, TransformerCouplingBlock
from vdecoder.hifigan.models import Generator as NsfHifiganGenerator
from vdecoder.hifiganwithsnake.models import Generator as NsfSnakeHifiganGenerator

__all__ = ["SynthesizerConfig", "SynthesizerTrn", "MultiPeriodDiscriminator", "TextEncoder", "PosteriorEncoder",
           "LoadReport", "load_generator_weights", "build_decoder", "VOCODERS"]

VOCODERS = {"nsf-hifigan": NsfHifiganGenerator, "nsf-snake-hifigan": NsfSnakeHifiganGenerator}
POSTERIOR_WN_LAYERS = 16  # 4.1 hard-codes this; the config's n_layers_q is unused
INFER_SEED = 52468


@dataclass(frozen=True)
class SynthesizerConfig:
    """Every size and switch of `SynthesizerTrn`; defaults are 4.1's normal template (config_template.json)."""

    spec_channels: int = 1025  # linear spectrogram bins = filter_length // 2 + 1
    segment_size: int = 20  # frames per training slice = train.segment_size // hop_length
    inter_channels: int = 192  # latent z channels
    hidden_channels: int = 192  # encoder width
    filter_channels: int = 768  # transformer FFN width
    n_heads: int = 2
    n_layers: int = 6  # transformer layers of enc_p and the F0 decoder
    kernel_size: int = 3  # FFN kernel of enc_p and the F0 decoder
    p_dropout: float = 0.1
    resblock: str = "1"  # "1" = ResBlock1 (three dilated pairs), else ResBlock2
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2, 2)  # product = hop length
    upsample_initial_channel: int = 512
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4, 4)
    gin_channels: int = 768  # speaker embedding width
    ssl_dim: int = 768  # content feature channels
    n_speakers: int = 200  # rows of emb_g
    sampling_rate: int = 44100  # sine source rate; never in 4.1 configs, so always 44100 there
    vol_embedding: bool = False  # adds emb_vol (volume per frame)
    vocoder_name: str = "nsf-hifigan"  # or "nsf-snake-hifigan"
    use_depthwise_conv: bool = False  # depthwise-separable WN convs in enc_q and the flow
    use_automatic_f0_prediction: bool = True  # builds f0_decoder
    flow_share_parameter: bool = False  # one coupling network shared by all couplings
    n_flow_layer: int = 4  # WN layers per coupling, or number of couplings with the transformer flow
    n_layers_trans_flow: int = 3  # FFT layers per transformer coupling
    use_transformer_flow: bool = False

    @classmethod
    def from_kwargs(cls, spec_channels: int, segment_size: int, **model: Any) -> "SynthesizerConfig":
        """4.1's constructor arguments; keys that are not fields (speech_encoder, n_layers_q, ...) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: _freeze(v) for k, v in model.items() if k in names and v is not None}
        config = cls(spec_channels=int(spec_channels), segment_size=int(segment_size), **values)
        if config.vocoder_name not in VOCODERS:
            logger.warning(f"unknown vocoder_name {config.vocoder_name!r}; using nsf-hifigan "
                           f"(known: {', '.join(VOCODERS)})")
            config = dataclasses.replace(config, vocoder_name="nsf-hifigan")
        return config

    @classmethod
    def from_hparams(cls, hps: Mapping[str, Any]) -> "SynthesizerConfig":
        """From a whole So-VITS config (`data`, `train` and `model` sections)."""
        data, train = hps["data"], hps["train"]
        return cls.from_kwargs(data["filter_length"] // 2 + 1, train["segment_size"] // data["hop_length"],
                               **dict(hps["model"]))

    @property
    def hop_length(self) -> int:
        return _product(self.upsample_rates)


def _freeze(value: Any) -> Any:
    """Lists from JSON become tuples so the config stays hashable and immutable."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _product(values: Sequence[int]) -> int:
    result = 1
    for v in values:
        result *= v
    return result


def build_decoder(config: SynthesizerConfig, onnx_mode: bool = False) -> nn.Module:
    """The NSF-HiFiGAN generator (plain or snake) for `config.vocoder_name`."""
    return VOCODERS[config.vocoder_name](
        inter_channels=config.inter_channels, upsample_initial_channel=config.upsample_initial_channel,
        upsample_rates=config.upsample_rates, upsample_kernel_sizes=config.upsample_kernel_sizes,
        resblock=config.resblock, resblock_kernel_sizes=config.resblock_kernel_sizes,
        resblock_dilation_sizes=config.resblock_dilation_sizes, gin_channels=config.gin_channels,
        sampling_rate=config.sampling_rate, onnx_mode=onnx_mode)


class TextEncoder(nn.Module):
    """Prior encoder: content x + coarse-pitch embedding -> transformer -> (z, mean, log-std, mask)."""

    def __init__(self, out_channels: int, hidden_channels: int, filter_channels: int, n_heads: int,
                 n_layers: int, kernel_size: int, p_dropout: float):
        super().__init__()
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)
        self.f0_emb = nn.Embedding(256, hidden_channels)
        self.enc_ = TransformerEncoder(hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, f0_coarse: torch.Tensor, noise_scale: float = 1.0,
                noise: torch.Tensor | None = None, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x `[B, hidden, T]`, x_mask `[B, 1, T]`, f0_coarse `[B, T]` int64 in [0, 255].

        z = (m + noise·exp(logs)·noise_scale)·mask, noise drawn from `generator` unless given (the ONNX
        form passes its own, already scaled, noise `[B, out, T]` with noise_scale 1). Returns z, m, logs,
        x_mask, each `[B, out, T]` (mask `[B, 1, T]`).
        """
        x = x + self.f0_emb(f0_coarse).transpose(1, 2)
        x = self.enc_(x * x_mask, x_mask)
        m, logs = torch.split(self.proj(x) * x_mask, self.proj.out_channels // 2, dim=1)
        if noise is None:
            noise = randn_like(m, generator)
        z = (m + noise * torch.exp(logs) * noise_scale) * x_mask
        return z, m, logs, x_mask


class PosteriorEncoder(nn.Module):
    """`enc_q`: linear spectrogram -> WN(g) -> (z sampled from N(m, exp(logs)), m, logs, mask)."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int, kernel_size: int,
                 dilation_rate: int, n_layers: int, gin_channels: int = 0, depthwise: bool = False):
        super().__init__()
        self.pre = nn.Conv1d(in_channels, hidden_channels, 1)
        self.enc = WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels,
                      depthwise=depthwise)
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(self, spec: torch.Tensor, lengths: torch.Tensor, g: torch.Tensor | None = None,
                generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """spec `[B, F, T]`, lengths `[B]`, g `[B, gin, 1]` -> z, m, logs `[B, out, T]`, mask `[B, 1, T]`."""
        x_mask = sequence_mask(lengths, spec.shape[2]).unsqueeze(1).to(spec.dtype)
        x = self.enc(self.pre(spec) * x_mask, x_mask, g=g)
        m, logs = torch.split(self.proj(x) * x_mask, self.proj.out_channels // 2, dim=1)
        z = (m + randn_like(m, generator) * torch.exp(logs)) * x_mask
        return z, m, logs, x_mask


class SynthesizerTrn(nn.Module):
    """The So-VITS generator. `SynthesizerTrn(spec_channels, segment_size, **config.model)` as in 4.1, or
    `SynthesizerTrn.from_config(hps)` / `SynthesizerTrn.from_dims(SynthesizerConfig(...))`."""

    def __init__(self, spec_channels: int, segment_size: int, **model: Any):
        super().__init__()
        cfg = SynthesizerConfig.from_kwargs(spec_channels, segment_size, **model)
        self.config = cfg
        self.segment_size = cfg.segment_size
        self.emb_g = nn.Embedding(cfg.n_speakers, cfg.gin_channels)
        if cfg.vol_embedding:
            self.emb_vol = nn.Linear(1, cfg.hidden_channels)
        self.pre = nn.Conv1d(cfg.ssl_dim, cfg.hidden_channels, kernel_size=5, padding=2)
        self.enc_p = TextEncoder(cfg.inter_channels, cfg.hidden_channels, cfg.filter_channels, cfg.n_heads,
                                 cfg.n_layers, cfg.kernel_size, cfg.p_dropout)
        self.dec = build_decoder(cfg)
        self.enc_q = self.build_part("enc_q", cfg)
        self.flow = self._build_flow(cfg)
        if cfg.use_automatic_f0_prediction:
            self.f0_decoder = self.build_part("f0_decoder", cfg)
        self.emb_uv = nn.Embedding(2, cfg.hidden_channels)

    @staticmethod
    def build_part(name: str, cfg: SynthesizerConfig) -> nn.Module:
        """A freshly initialised part a checkpoint may lack: "enc_q" (compressed models) or "f0_decoder"."""
        if name == "enc_q":
            return PosteriorEncoder(cfg.spec_channels, cfg.inter_channels, cfg.hidden_channels, 5, 1,
                                    POSTERIOR_WN_LAYERS, cfg.gin_channels, cfg.use_depthwise_conv)
        if name == "f0_decoder":
            return F0Decoder(1, cfg.hidden_channels, cfg.filter_channels, cfg.n_heads, cfg.n_layers,
                             cfg.kernel_size, cfg.p_dropout, spk_channels=cfg.gin_channels)
        raise ValueError(f"no optional part {name!r}")

    @staticmethod
    def _build_flow(cfg: SynthesizerConfig) -> nn.Module:
        if cfg.use_transformer_flow:
            return TransformerCouplingBlock(cfg.inter_channels, cfg.hidden_channels, cfg.filter_channels,
                                            cfg.n_heads, cfg.n_layers_trans_flow, 5, cfg.p_dropout,
                                            n_flows=cfg.n_flow_layer, gin_channels=cfg.gin_channels,
                                            share_parameter=cfg.flow_share_parameter)
        return ResidualCouplingBlock(cfg.inter_channels, cfg.hidden_channels, 5, 1, cfg.n_flow_layer,
                                     gin_channels=cfg.gin_channels, share_parameter=cfg.flow_share_parameter,
                                     depthwise=cfg.use_depthwise_conv)

    @classmethod
    def from_config(cls, hps: Mapping[str, Any]) -> "SynthesizerTrn":
        """From a whole So-VITS config: spec_channels = filter_length//2+1, segment = segment_size//hop."""
        return cls.from_dims(SynthesizerConfig.from_hparams(hps))

    @classmethod
    def from_dims(cls, config: SynthesizerConfig) -> "SynthesizerTrn":
        return cls(**dataclasses.asdict(config))

    def speaker_embedding(self, g: torch.Tensor) -> torch.Tensor:
        """Speaker conditioning from ids or mix weights.

        int ids `[B]` or `[B, 1]` -> `[B, gin, 1]`; float weights `[T, S]` (per-frame mix of speakers 0..S-1,
        4.1's speaker mix) -> `[1, gin, T]` = Σ_s w[t, s]·emb_g[s].
        """
        if g.is_floating_point():
            table = self.emb_g.weight[:g.shape[1]]  # [S, gin]
            return (g.unsqueeze(-1) * table.unsqueeze(0)).sum(dim=1).transpose(0, 1).unsqueeze(0)
        if g.dim() == 1:
            g = g.unsqueeze(1)
        return self.emb_g(g).transpose(1, 2)

    def content_embedding(self, c: torch.Tensor, uv: torch.Tensor, x_mask: torch.Tensor,
                          vol: torch.Tensor | None = None) -> torch.Tensor:
        """x = pre(c)·mask + emb_uv(uv) (+ emb_vol(vol)): c `[B, ssl_dim, T]`, uv/vol `[B, T]` -> `[B, hidden, T]`."""
        x = self.pre(c) * x_mask + self.emb_uv(uv.long()).transpose(1, 2)
        if vol is not None and self.config.vol_embedding:
            x = x + self.emb_vol(vol.unsqueeze(-1)).transpose(1, 2)
        return x

    def forward(self, c: torch.Tensor, f0: torch.Tensor, uv: torch.Tensor, spec: torch.Tensor, g: torch.Tensor,
                c_lengths: torch.Tensor, spec_lengths: torch.Tensor, vol: torch.Tensor | None = None) -> tuple:
        """Training step. c `[B, ssl_dim, T]`, f0 `[B, T]` Hz, uv `[B, T]`, spec `[B, F, T]`, g `[B, 1]` ids,
        lengths `[B]`, vol `[B, T]` or None.

        Returns (audio slice `[B, 1, segment_size·hop]`, slice starts `[B]`, spec mask `[B, 1, T]`,
        (z, z_p, m_p, logs_p, m_q, logs_q) each `[B, inter, T]`, predicted lf0 `[B, 1, T]`,
        normalised lf0 `[B, 1, T]`, lf0 `[B, 1, T]`); the last three are 0 without an F0 decoder.
        """
        g = self.speaker_embedding(g)
        x_mask = sequence_mask(c_lengths, c.shape[2]).unsqueeze(1).to(c.dtype)
        x = self.content_embedding(c, uv, x_mask, vol)
        lf0 = norm_lf0 = pred_lf0 = 0
        if self.config.use_automatic_f0_prediction:
            lf0 = f0_to_lf0(f0)
            norm_lf0 = normalize_f0(lf0, x_mask, uv)
            pred_lf0 = self.f0_decoder(x, norm_lf0, x_mask, spk_emb=g)
        _, m_p, logs_p, _ = self.enc_p(x, x_mask, f0_to_coarse(f0))
        z, m_q, logs_q, spec_mask = self.enc_q(spec, spec_lengths, g=g)
        z_p = self.flow(z, spec_mask, g=g)
        z_slice, f0_slice, starts = rand_slice_segments_with_pitch(z, f0, spec_lengths, self.segment_size)
        audio = self.dec(z_slice, f0_slice, g=g)
        return audio, starts, spec_mask, (z, z_p, m_p, logs_p, m_q, logs_q), pred_lf0, norm_lf0, lf0

    def predict_f0(self, x: torch.Tensor, f0: torch.Tensor, uv: torch.Tensor, x_mask: torch.Tensor,
                   g: torch.Tensor) -> torch.Tensor:
        """The F0 decoder's f0 in Hz `[B, T]` for content x `[B, hidden, T]` and the input f0/uv `[B, T]`."""
        norm_lf0 = normalize_f0(f0_to_lf0(f0), x_mask, uv, random_scale=False)
        return lf0_to_f0(self.f0_decoder(x, norm_lf0, x_mask, spk_emb=g))

    @torch.no_grad()
    def infer(self, c: torch.Tensor, f0: torch.Tensor, uv: torch.Tensor, g: torch.Tensor | None = None,
              noice_scale: float = 0.35, seed: int = INFER_SEED, predict_f0: bool = False,
              vol: torch.Tensor | None = None, frames: tuple[int, int] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert. c `[B, ssl_dim, T]`, f0 `[B, T]` Hz, uv `[B, T]`, g ids `[B]`/`[B, 1]` or mix weights
        `[T, S]` (float), vol `[B, T]`. Returns (audio `[B, 1, T·hop]`, the f0 used `[B, T]`).

        `noice_scale` (4.1's spelling) scales the prior noise; `seed` seeds this call's draws (see module doc).
        `frames` = (start, stop): only those frames' samples are wanted, the rest of the audio is 0 (the decoder
        skips what they do not depend on; see the decoder's `forward`).
        """
        if g is None:
            g = torch.zeros(c.shape[0], 1, dtype=torch.long, device=c.device)
        generator = torch.Generator(device=c.device).manual_seed(seed)
        g = self.speaker_embedding(g)
        x_mask = torch.ones(c.shape[0], 1, c.shape[2], dtype=c.dtype, device=c.device)
        x = self.content_embedding(c, uv, x_mask, vol)
        if predict_f0 and self.config.use_automatic_f0_prediction:
            f0 = self.predict_f0(x, f0, uv, x_mask, g)
        z_p, _, _, _ = self.enc_p(x, x_mask, f0_to_coarse(f0), noise_scale=noice_scale, generator=generator)
        z = self.flow(z_p, x_mask, g=g, reverse=True)
        audio = self.dec(z * x_mask, f0, g=g, generator=generator, frames=frames)
        return audio, f0

    def remove_weight_norm(self) -> None:
        """Fold weight norm into plain weights everywhere (state-dict keys change: load weights first)."""
        self.dec.remove_weight_norm()
        self.enc_q.enc.remove_weight_norm()
        self.flow.remove_weight_norm()


def load_generator_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                           optional_prefixes: Sequence[str] = ("enc_q.",),
                           reinit_mismatched: Sequence[str] = ()) -> LoadReport:
    """Load a 4.1 generator state dict (or a whole `G_*.pth` dict with a "model" entry) strictly.

    Tolerated: a prefix in `optional_prefixes` entirely absent from the checkpoint (compressed models drop
    every `enc_q.*`; those weights keep their current values), and shape-mismatched keys under a
    `reinit_mismatched` prefix (e.g. "emb_g." to fine-tune a base model with another speaker count).
    Anything else missing, unexpected or shape-mismatched raises SvcError naming the keys. fp16 tensors
    are converted to the model's dtype.
    """
    return load_weights(model, state_dict_of(state_dict), allow_missing=tuple(optional_prefixes),
                        reinit_mismatched=tuple(reinit_mismatched), describe=LoadReport.listing)


def generator_for_weights(hps: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], *,
                          optional_prefixes: Sequence[str] = ("enc_q.",)) -> tuple[SynthesizerTrn, LoadReport]:
    """`SynthesizerTrn.from_config(hps)` holding `state_dict` (loaded as `load_generator_weights` does), built
    without drawing the random initial weights the load replaces (half of a default-size model's 1 s build).
    An optional part the file lacks is built again with its usual random weights, as the plain build has it."""
    with SkipRandomInit():
        model = SynthesizerTrn.from_config(hps)
    report = load_generator_weights(model, state_dict, optional_prefixes=optional_prefixes)
    for prefix in report.skipped_prefixes:
        name = prefix.rstrip(".")
        setattr(model, name, SynthesizerTrn.build_part(name, model.config))
    return model, report
