"""Small tensor helpers shared by the So-VITS model parts: masks, gated activations, segment slicing,
weight norm with 4.1's parameter names, and random draws that take an optional `torch.Generator`.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import remove_weight_norm as _remove_weight_norm
from torch.overrides import TorchFunctionMode
from torch.nn.utils import weight_norm as _weight_norm


class SkipRandomInit(TorchFunctionMode):
    """Inside `with SkipRandomInit():`, building a model draws no random initial weights: torch.nn.init's
    random initialisers and the in-place `uniform_`/`normal_` fill zeros instead.

    For a model whose every weight is about to be overwritten by a checkpoint: the draws cost ~0.5 s of a
    default-size generator's 1 s build. (Zeros rather than untouched memory: weight norm reads the weights at
    build time, and writing pages first read as untouched costs more than the draws did.) Torch function
    modes are per thread, so models built meanwhile in other threads are initialised as usual.
    """

    SKIPPED = frozenset([torch.Tensor.uniform_, torch.Tensor.normal_, nn.init.uniform_, nn.init.normal_,
                         nn.init.kaiming_uniform_, nn.init.kaiming_normal_, nn.init.xavier_uniform_,
                         nn.init.xavier_normal_, nn.init.trunc_normal_])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.SKIPPED:
            tensor = args[0] if args else kwargs["tensor"]
            with torch.no_grad():
                return tensor.zero_()
        return func(*args, **(kwargs or {}))


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """'Same' padding of an odd-kernel dilated convolution."""
    return (kernel_size * dilation - dilation) // 2


def weight_norm(module: nn.Module) -> nn.Module:
    """Weight norm that stores `weight_g`/`weight_v` (the names in 4.1 checkpoints).

    The parametrisation API would name them `parametrizations.weight.original0/1`, so the older
    `torch.nn.utils.weight_norm` is used; its deprecation warning is silenced here only.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return _weight_norm(module, name="weight")


def remove_weight_norm(module: nn.Module) -> nn.Module:
    """Fold `weight_g`/`weight_v` back into a plain `weight` (for export or faster inference)."""
    return _remove_weight_norm(module, name="weight")


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """Boolean mask `[B, T]` that is True for frames inside each length."""
    if max_length is None:
        max_length = int(lengths.max())
    frames = torch.arange(max_length, dtype=lengths.dtype, device=lengths.device)
    return frames.unsqueeze(0) < lengths.unsqueeze(1)


def subsequent_mask(length: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
                    ) -> torch.Tensor:
    """Causal attention mask `[1, 1, T, T]`: position i may attend to positions <= i."""
    return torch.tril(torch.ones(length, length, device=device, dtype=dtype))[None, None]


def gated_activation(x: torch.Tensor, cond: torch.Tensor, channels: int) -> torch.Tensor:
    """WaveNet gate: tanh of the first `channels` of x+cond times sigmoid of the rest. `[B, 2C, T] -> [B, C, T]`."""
    summed = x + cond
    return torch.tanh(summed[:, :channels]) * torch.sigmoid(summed[:, channels:])


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like x, from `generator` or (None) the global RNG."""
    if generator is None:
        return torch.randn_like(x)
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def rand(*shape: int, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform [0, 1) noise of `shape` on like's device and dtype, from `generator` or the global RNG."""
    return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)


def slice_segments(x: torch.Tensor, starts: torch.Tensor, segment_size: int) -> torch.Tensor:
    """Cut `segment_size` frames from each item along the last axis: `[B, ..., T] -> [B, ..., segment_size]`."""
    return torch.stack([x[i, ..., int(s):int(s) + segment_size] for i, s in enumerate(starts)])


def rand_slice_segments_with_pitch(z: torch.Tensor, f0: torch.Tensor, lengths: torch.Tensor | None,
                                   segment_size: int, generator: torch.Generator | None = None
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One random window per item, the same frames for latent and pitch.

    z `[B, C, T]`, f0 `[B, T]` -> (z slice `[B, C, S]`, f0 slice `[B, S]`, start frames `[B]` int64);
    each start is uniform over [0, length - S].
    """
    if lengths is None:
        lengths = torch.full((z.shape[0],), z.shape[-1], device=z.device)
    max_start = (lengths - segment_size + 1).to(z.device)
    starts = (rand(z.shape[0], like=z, generator=generator) * max_start).long()
    return slice_segments(z, starts, segment_size), slice_segments(f0, starts, segment_size), starts


def causal_or_same_pad(x: torch.Tensor, kernel_size: int, causal: bool) -> torch.Tensor:
    """Pad the time axis so a stride-1 conv keeps the length: all on the left (causal) or split (same)."""
    if kernel_size == 1:
        return x
    if causal:
        return F.pad(x, (kernel_size - 1, 0))
    return F.pad(x, ((kernel_size - 1) // 2, kernel_size // 2))
