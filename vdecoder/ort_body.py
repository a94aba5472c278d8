"""The NSF-HiFiGAN decoder body on ONNX Runtime, in float32 or int8, for faster conversion on a CPU.

The body is everything after the harmonic source (`Generator.body`): the source, with its random draws,
stays in torch, so a conversion draws the same numbers on every precision. Synthesis is ~85 % of a
conversion's time and almost all of it is the body's convolutions:
- "onnx": the body as an fp32 ONNX graph with ONNX Runtime's graph optimisations (fused conv + activation,
  its own conv kernels); the output equals torch's up to float rounding (~1e-6).
- "int8": the same graph with the wide Convs quantised statically (int8 per-channel weights, uint8
  activations, ranges calibrated once on the `calibration` inputs the caller gives, normally the model's own
  decoder inputs on a built-in sung tone); see `wide_convs` for which convs.

Graphs are built once per decoder and cached as `<cache>/decoder-<sha256 of the weights>-<kind>.onnx`
(core.onnx_cache).
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
from loguru import logger

from core.fileio import atomic_path
from core.onnx_cache import as_numpy, cache_dir, cached_session, weights_digest

MIN_INT8_CHANNELS = 32  # narrower convs stay float32 in the int8 graph (see wide_convs)
FORMAT_VERSION = 2  # bump when the exported graph changes, so old cache files are not used
KINDS = ("onnx", "int8")
OPSET = 17
INPUTS = ("x", "excitation", "g")
CalibrationItem = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # x, excitation, g as the body takes them


class _Body(nn.Module):
    """Exposes `Generator.body` as forward(x, excitation, g) for the tracer."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, x: torch.Tensor, excitation: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.generator.body(x, excitation, g)


class OrtBody:
    """Callable replacement for `Generator.body` (set it as `generator.fast_body`) running an ONNX graph.

    Its thread count follows torch's: on a quiet 2-core AMD EPYC a 5 s body took 4.6 s on one thread and 2.4 s on
    two (fp32), 2.5 s and 1.5 s (int8).
    """

    def __init__(self, path: Path, session):
        self.path = path
        self.session = session

    def __call__(self, x: torch.Tensor, excitation: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        if g is None:
            raise ValueError("the ONNX decoder body needs the speaker conditioning g")
        feed = {"x": as_numpy(x), "excitation": as_numpy(excitation), "g": as_numpy(g.expand(x.shape[0], -1, -1))}
        return torch.from_numpy(self.session.run(None, feed)[0]).to(x.device)


def build_ort_body(generator: nn.Module, kind: str,
                   calibration: Callable[[], Sequence[CalibrationItem]] | None = None,
                   threads: int | None = None, folder: Path | None = None) -> OrtBody:
    """An `OrtBody` for a weight-norm-free float32 `generator`, from the cache or exported now.

    `calibration` (needed for "int8" only, called only when the int8 graph is not cached yet): body inputs
    whose activation ranges set the int8 scales.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown decoder body kind {kind!r} (known: {', '.join(KINDS)})")
    folder = Path(folder) if folder is not None else cache_dir()
    digest = weights_digest(generator, FORMAT_VERSION)
    fp32_path = folder / f"decoder-{digest[:32]}-onnx.onnx"

    def export(path: Path) -> None:
        logger.info(f"exporting the decoder to ONNX once for this model ({path.name})")
        export_body(generator, path)

    def quantise(path: Path) -> None:
        if calibration is None:
            raise ValueError("the int8 decoder body needs calibration inputs")
        cached_session(fp32_path, 1, export, digest)  # the float32 graph it starts from, checked
        logger.info(f"quantising the decoder to int8 once for this model ({path.name})")
        quantize_body(fp32_path, path, calibration())

    threads = threads or torch.get_num_threads()
    if kind == "int8":
        path = folder / f"decoder-{digest[:32]}-int8.onnx"
        return OrtBody(path, cached_session(path, threads, quantise, digest))
    return OrtBody(fp32_path, cached_session(fp32_path, threads, export, digest))


def export_body(generator: nn.Module, path: Path) -> None:
    """Trace the body (batch, frame and speaker-frame axes dynamic) and write it atomically."""
    example = (torch.zeros(1, generator.conv_pre.in_channels, 8), torch.zeros(1, 1, 8 * generator.upp),
               torch.zeros(1, generator.cond.in_channels, 1))
    axes = {"x": {0: "batch", 2: "frames"}, "excitation": {0: "batch", 2: "samples"},
            "g": {0: "batch", 2: "speaker_frames"}, "audio": {0: "batch", 2: "samples"}}
    with atomic_path(path, suffix=".onnx") as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Body(generator).eval(), tuple(t.float() for t in example), str(tmp),
                          input_names=list(INPUTS), output_names=["audio"], dynamic_axes=axes,
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)


class _Calibration:
    """onnxruntime.quantization's data reader over our calibration inputs."""

    def __init__(self, items: Iterable[CalibrationItem]):
        self.items = iter([{name: as_numpy(t) for name, t in zip(INPUTS, item)} for item in items])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def wide_convs(path: Path) -> list[str]:
    """Names of the Conv nodes worth quantising: at least MIN_INT8_CHANNELS input channels, not a noise conv.

    Those are the resblocks of all but the last upsampling stage (with the default sizes 256, 128, 64 and 32
    channels: ~93 % of the multiply-adds). The 16-channel last stage, conv_post and the convs that read the
    harmonic excitation stay float32. On the default-size model, 8 s of three recordings, the log-mel distance
    to fp32 was 0.010-0.013 with the threshold at 64 channels, 0.016-0.022 at 32 (the body 7 % faster) and
    0.13-0.17 at 16, against seed-to-seed bounds of 0.145-0.179."""
    import onnx

    model = onnx.load(str(path))
    weights = {init.name: init.dims for init in model.graph.initializer}
    names = []
    for node in model.graph.node:
        dims = weights.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if dims is not None and dims[1] >= MIN_INT8_CHANNELS and "noise_convs" not in node.name:
            names.append(node.name)
    return names


def quantize_body(source: Path, path: Path, calibration: Sequence[CalibrationItem]) -> None:
    """Static int8 quantisation of the wide Convs (per-channel int8 weights, uint8 activations, min-max ranges)."""
    import logging

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = type("Reader", (_Calibration, CalibrationDataReader), {})(calibration)
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # the quantiser logs advice about its own pre-processing as warnings
    try:
        with tempfile.TemporaryDirectory() as work, atomic_path(path, suffix=".onnx") as tmp:
            prepared = Path(work) / "prepared.onnx"
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            nodes = wide_convs(prepared)
            if not nodes:  # a decoder too narrow to gain (an empty list would mean "all" to the quantiser)
                shutil.copyfile(source, tmp)
                return
            quantize_static(str(prepared), str(tmp), reader, quant_format=QuantFormat.QOperator,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["Conv"], nodes_to_quantize=nodes)
    finally:
        root_logger.setLevel(level)
