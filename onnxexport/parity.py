"""Parity check: the exported graph under ONNX Runtime against the torch model's own inference path.

The inputs are built the way MoeVoiceStudio builds them (§C3): units at 50 frames/s with a 1-based `mel2ph`,
f0 interpolated through unvoiced frames with `uv` from the raw f0, noise drawn and pre-scaled, a per-frame
character mix matrix. The reference is `SynthesizerTrn.infer` on the same data with its two random
sources pinned: the prior noise is the graph's `noise` input, and the decoder's sine source is 4.1's
sample-rate algorithm (float64 phase sum) with the graph's start phases and noise — zero for a
deterministic graph, or the values the graph's random ops drew, read back as extra graph outputs.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime
import torch
import torch.nn as nn
from loguru import logger

from core.errors import SvcError
from onnxexport.source import SourceDraws, reference_sines

UNIT_RATE = 50.0  # content units per second (16 kHz, hop 320)
TOLERANCE = 1e-3


@dataclass(frozen=True)
class GraphShape:
    """What the inputs of one exported graph look like."""

    ssl_dim: int
    inter_channels: int
    characters: int
    chara_mix: bool
    volume: bool
    sampling_rate: int
    hop: int


def moevs_inputs(shape: GraphShape, frames: int, seed: int = 0, noise_scale: float = 0.4) -> dict[str, np.ndarray]:
    """A MoeVS-style input set for `frames` frames, in graph input order (see module doc)."""
    rng = np.random.default_rng(seed)
    units = max(1, int(np.ceil(frames * UNIT_RATE * shape.hop / shape.sampling_rate)))
    mel2ph = np.minimum(np.arange(frames) * units // frames + 1, units).astype(np.int64)[None]  # [1, F]
    raw_f0 = melody(frames, rng)
    inputs = {
        "c": rng.standard_normal((1, units, shape.ssl_dim)).astype(np.float32),
        "f0": interpolate_unvoiced(raw_f0)[None],
        "mel2ph": mel2ph,
        "uv": (raw_f0 >= 0.001).astype(np.float32)[None],
        "noise": (rng.standard_normal((1, shape.inter_channels, frames)) * noise_scale).astype(np.float32),
    }
    if shape.chara_mix:
        weights = rng.random((frames, shape.characters)) ** 2 + 1e-3
        inputs["sid"] = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)  # rows sum to 1
    else:
        inputs["sid"] = np.array([shape.characters - 1], dtype=np.int64)
    if shape.volume:
        inputs["vol"] = rng.uniform(0.0, 0.3, (1, frames)).astype(np.float32)
    return inputs


def melody(frames: int, rng: np.random.Generator) -> np.ndarray:
    """A sung-like f0 contour in Hz `[F]`: notes between 110 and 880 Hz with vibrato, and unvoiced gaps (0)."""
    steps = rng.integers(-5, 6, size=max(1, frames // 12 + 1)).cumsum()
    notes = 220.0 * 2 ** (np.repeat(steps, 12)[:frames] / 12)
    t = np.arange(frames) / 86.0
    f0 = np.clip(notes * 2 ** (0.3 * np.sin(2 * np.pi * 5.5 * t) / 12), 110.0, 880.0)
    f0[(np.arange(frames) % 29) >= 24] = 0.0
    return f0.astype(np.float32)


def interpolate_unvoiced(f0: np.ndarray) -> np.ndarray:
    """Linear interpolation across unvoiced frames, edges held (what MoeVS sends as f0)."""
    voiced = np.flatnonzero(f0 >= 0.001)
    if voiced.size == 0:
        return np.zeros_like(f0)
    return np.interp(np.arange(f0.size), voiced, f0[voiced]).astype(np.float32)


@dataclass
class OnnxRunner:
    """An ONNX Runtime CPU session for a graph; a graph with random ops gets their outputs added as extra
    graph outputs (in memory), so the reference can reuse the very numbers a run drew."""

    session: onnxruntime.InferenceSession
    random_ops: tuple[str, ...]

    @classmethod
    def open(cls, path: str | os.PathLike) -> "OnnxRunner":
        model = onnx.load(str(path))
        random_nodes = [node for node in model.graph.node if node.op_type.startswith("Random")]
        for node in random_nodes:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # as many threads as torch is allowed
        source = model.SerializeToString() if random_nodes else str(path)
        session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        return cls(session, tuple(node.op_type for node in random_nodes))

    def run(self, inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, SourceDraws | None]:
        """-> (audio `[1, 1, N]`, the source's random draws or None)."""
        feed = {arg.name: inputs[arg.name] for arg in self.session.get_inputs()}
        outputs = self.session.run(None, feed)
        if not self.random_ops:
            return outputs[0], None
        drawn = dict(zip(self.random_ops, outputs[1:]))
        if sorted(self.random_ops) != ["RandomNormalLike", "RandomUniformLike"]:
            raise SvcError(f"unexpected random ops in the graph: {list(self.random_ops)}")
        return outputs[0], SourceDraws(torch.from_numpy(drawn["RandomUniformLike"]),
                                       torch.from_numpy(drawn["RandomNormalLike"]))


@contextlib.contextmanager
def pinned_randomness(model: nn.Module, noise: torch.Tensor, draws: SourceDraws | None) -> Iterator[None]:
    """Within the block, `model.infer` uses `noise` as the (pre-scaled) prior noise and the reference
    sine source with `draws`, through hooks on `enc_p` and `dec.m_source`."""
    hop, sampling_rate = model.config.hop_length, model.config.sampling_rate

    def prior_noise(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args[:3], {**kwargs, "noise": noise, "noise_scale": 1.0}

    def sine_source(module: nn.Module, args: tuple, kwargs: dict, output: tuple) -> tuple:
        f0 = args[0] if args else kwargs["f0"]
        excitation = torch.tanh(module.l_linear(reference_sines(f0, hop, sampling_rate, draws)))
        return (excitation, *output[1:])

    handles = [model.enc_p.register_forward_pre_hook(prior_noise, with_kwargs=True),
               model.dec.m_source.register_forward_hook(sine_source, with_kwargs=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def reference_audio(model: nn.Module, inputs: Mapping[str, np.ndarray], speaker_ids: Sequence[int],
                    chara_mix: bool, draws: SourceDraws | None = None) -> np.ndarray:
    """`model.infer` on the MoeVS inputs (units aligned by mel2ph outside any graph): -> audio `[1, 1, N]`."""
    units = inputs["c"][0]  # [T_units, H]
    padded = np.concatenate([np.zeros_like(units[:1]), units], axis=0)
    c = torch.from_numpy(padded[inputs["mel2ph"][0]].T[None].copy())  # [1, H, F]
    if chara_mix:
        weights = np.zeros((inputs["sid"].shape[0], max(speaker_ids) + 1), dtype=np.float32)
        weights[:, list(speaker_ids)] = inputs["sid"]  # character columns -> emb_g rows
        g = torch.from_numpy(weights)
    else:
        g = torch.tensor([[speaker_ids[int(inputs["sid"][0])]]], dtype=torch.long)
    vol = torch.from_numpy(inputs["vol"]) if "vol" in inputs else None
    with pinned_randomness(model, torch.from_numpy(inputs["noise"]), draws):
        audio, _ = model.infer(c, torch.from_numpy(inputs["f0"]), torch.from_numpy(inputs["uv"]), g=g,
                               noice_scale=1.0, vol=vol)
    return audio.numpy()


def check_parity(model: nn.Module, onnx_path: str | os.PathLike, shape: GraphShape, speaker_ids: Sequence[int],
                 frames: Sequence[int] = (57, 131), tolerance: float = TOLERANCE) -> list[float]:
    """Max |onnx − torch| for each length in `frames`; SvcError when one exceeds `tolerance`."""
    runner = OnnxRunner.open(onnx_path)
    diffs = []
    for index, n_frames in enumerate(frames):
        inputs = moevs_inputs(shape, n_frames, seed=1000 + index)
        audio, draws = runner.run(inputs)
        expected = reference_audio(model, inputs, speaker_ids, shape.chara_mix, draws)
        if audio.shape != expected.shape or audio.shape != (1, 1, n_frames * shape.hop):
            raise SvcError(f"parity check: the ONNX model returned audio of shape {audio.shape} for {n_frames} "
                           f"frames; expected {(1, 1, n_frames * shape.hop)}")
        diffs.append(max_difference(audio, expected, "model", f"{n_frames} frames", tolerance))
    return diffs


def max_difference(onnx_out: np.ndarray, torch_out: np.ndarray, what: str, where: str, tolerance: float) -> float:
    """Print the max |onnx - torch| and raise SvcError when it exceeds `tolerance` (or is not finite)."""
    diff = float(np.max(np.abs(onnx_out - torch_out)))
    logger.info(f"{what} parity at {where}: max |onnx - torch| = {diff:.3g}")
    print(f"{'' if what == 'model' else what + ' '}parity ({where}): max abs difference {diff:.3g}")
    if not np.isfinite(diff) or diff > tolerance:
        raise SvcError(f"{what} parity check failed: the ONNX {what} differs from the torch {what} by {diff:.3g} "
                       f"(> {tolerance:g}) at {where}; the exported file must not be used")
    return diff
