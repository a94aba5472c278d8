"""A speech encoder on ONNX Runtime, float32, for faster encoding on a CPU.

ONNX Runtime fuses the encoder's layer norms, GELUs and attention and has its own convolution kernels for
the waveform front end: on a quiet 2-core AMD EPYC (AVX2, 2 threads) a ContentVec (vec768l12) encoding of 10 s
took 1.24-1.34 s against torch's 1.62-1.71 s, of 5 s 0.67-0.73 s against 0.72-0.78 s, with features equal to
torch's up to float rounding (relative difference ~1e-6). Encoders whose class sets `runs_on_onnx` (the fairseq
HuBERT family: vec768l12, vec256l9, cnhubertlarge) can run here; the others stay in torch.

The graph is exported once per weight file and cached as `<cache>/encoder-<name>-<sha256 of the file>-onnx.onnx`
with its weights in `<that name>.data` (core.onnx_cache). With the graph cached, the torch model is never built:
loading is quicker and the weights are held once.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from loguru import logger

from core.errors import SvcError
from core.onnx_cache import as_numpy, cache_dir, cached_session, file_digest
from core.pretrained import require_pretrained
from core.registry import encoder_record
from vencoder import encoder_class, get_speech_encoder
from vencoder.encoder import SpeechEncoder

FORMAT_VERSION = 2  # bump when the exported graph changes, so old cache files are not used
OPSET = 17
TRACE_SAMPLES = 16000  # one second at 16 kHz; the sample axis is dynamic


class OrtEncoder(SpeechEncoder):
    """Features of a speech encoder computed by its ONNX graph `graph` (CPU)."""

    def __init__(self, name: str, path: Path, graph: Path, session):
        super().__init__(name, path, torch.device("cpu"))
        self.graph = graph
        self.session = session

    def encode(self, wav16k: torch.Tensor) -> torch.Tensor:
        features = self.session.run(None, {"wav": as_numpy(wav16k[None])})[0]  # [1, D, T]
        return torch.from_numpy(features)


def speech_encoder(name: str, device: str | torch.device, pretrain_dir: str | Path, onnx: bool,
                   threads: int | None = None) -> SpeechEncoder:
    """Encoder `name` from `pretrain_dir`: on ONNX Runtime (with `threads` threads per call, default torch's)
    when `onnx` is asked for and its class supports it, else in torch. A failed export falls back to torch with a
    warning saying why; a weight file that cannot be read (missing, unsafe, damaged) is refused as torch would
    refuse it."""
    if onnx and encoder_class(name).runs_on_onnx:
        require_pretrained(Path(pretrain_dir) / encoder_record(name).file, f"speech encoder {name}")
        try:
            return load_ort_encoder(name, pretrain_dir, threads)
        except SvcError:
            raise
        except Exception as error:  # noqa: BLE001 - any export failure: the torch encoder still works
            logger.warning(f"the speech encoder {name} could not be prepared for ONNX Runtime "
                           f"({type(error).__name__}: {error}); it runs in torch")
    return get_speech_encoder(name, device, pretrain_dir)


def load_ort_encoder(name: str, pretrain_dir: str | Path, threads: int | None = None,
                     folder: Path | None = None) -> OrtEncoder:
    """Encoder `name` (a class with `runs_on_onnx`) on ONNX Runtime, its graph exported now if not cached yet."""
    path = Path(pretrain_dir) / encoder_record(name).file
    folder = Path(folder) if folder is not None else cache_dir()

    def export(graph: Path) -> None:
        logger.info(f"exporting the speech encoder {name} to ONNX once for this weight file ({graph.name})")
        export_encoder(get_speech_encoder(name, "cpu", pretrain_dir).traceable(), graph)

    digest = file_digest(path, FORMAT_VERSION, folder)
    graph = folder / f"encoder-{name}-{digest[:32]}-onnx.onnx"
    return OrtEncoder(name, path, graph, cached_session(graph, threads or torch.get_num_threads(), export, digest))


def export_encoder(module: torch.nn.Module, path: Path) -> None:
    """Trace `module` (a CPU module: wav `[1, N]` -> `[1, D, T]`, N dynamic) and write the graph to `path`, its
    weights beside it in `<path>.data` (ONNX external data: a session reads them 0.1-0.2 s quicker than from
    inside the graph), the weights first and the graph last, each renamed into place whole."""
    import onnx

    example = torch.randn(1, TRACE_SAMPLES, generator=torch.Generator().manual_seed(0)) * 0.1
    axes = {"wav": {1: "samples"}, "features": {2: "frames"}}
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as work:
        traced = Path(work) / "traced.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), (example,), str(traced), input_names=["wav"],
                              output_names=["features"], dynamic_axes=axes, opset_version=OPSET,
                              do_constant_folding=True, dynamo=False)
        staged = Path(work) / path.name
        onnx.save_model(onnx.load(str(traced)), str(staged), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=f"{path.name}.data", size_threshold=1024)
        weights = Path(work) / f"{path.name}.data"
        shutil.copymode(staged, weights)  # onnx writes the weights owner-only
        os.replace(weights, path.parent / weights.name)
        os.replace(staged, path)
