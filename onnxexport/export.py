"""One export for MoeVoiceStudio: checks, graph, parity, cluster files, optional encoder, descriptor.

Everything that can be refused (unknown encoder, bad speaker map, missing files) is refused before the
model is loaded, and every input (model, cluster file, encoder checkpoint) is loaded and checked before the
first file is written, so a refused input leaves no output behind. Each ONNX file is written under a
temporary name and only takes its final name once its parity check has passed; the descriptor is written
last, so a failed export never leaves a descriptor pointing at an unverified model.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from loguru import logger

from models import SynthesizerTrn, load_generator_weights
from core.checkpoint import read_state_dict
from core.config import load_model_config
from core.errors import SvcError
from core.fileio import atomic_path
from core.pretrained import require_pretrained
from onnxexport.cluster import prepare_index, prepare_kmeans, write_indexes, write_kmeans
from onnxexport.descriptor import Speakers, build_descriptor, hubert_name, model_speakers, write_descriptor
from onnxexport.encoder import check_encoder_parity, export_encoder, load_encoder, parse_encoder_name
from onnxexport.graph import OPSET, SovitsOnnx, export_graph
from onnxexport.parity import TOLERANCE, GraphShape, check_parity, moevs_inputs

DUMMY_FRAMES = 64  # length traced at export; the axes stay dynamic
PARITY_FRAMES = (57, 131)
KMEANS_NAME = "kmeans_10000.pt"
INDEX_NAME = "feature_and_index.pkl"
DEFAULT_ENCODER_CHECKPOINT = Path("pretrain/checkpoint_best_legacy_500.pt")


@dataclass(frozen=True)
class ExportOptions:
    name: str
    model_path: Path
    config_path: Path
    output_dir: Path
    plain_sid: bool = False  # multi-speaker model with an int64 sid instead of the mix matrix
    source_noise: bool = False  # keep 4.1's random sine phases and noise in the graph
    kmeans: Path | None = None
    index: Path | None = None
    no_cluster: bool = False
    hubert: str | None = None  # override the descriptor's Hubert name
    export_encoder: bool = False
    encoder_checkpoint: Path = DEFAULT_ENCODER_CHECKPOINT
    parity_frames: tuple[int, ...] = PARITY_FRAMES
    tolerance: float = TOLERANCE
    opset: int = OPSET


@dataclass
class ExportResult:
    onnx: Path
    descriptor: Path
    parity: list[float]
    cluster_files: list[Path] = field(default_factory=list)
    encoder: Path | None = None
    encoder_parity: list[float] = field(default_factory=list)


def check_folder_name(name: str) -> str:
    """MoeVS uses the name as a folder and file stem: no path separators, not empty (§C7.4)."""
    if not name or name in (".", "..") or any(sep in name for sep in ("/", "\\")):
        raise SvcError(f"model name {name!r} must be a plain folder name; give file locations with -m/-c/-o")
    return name


def resolve_cluster(options: ExportOptions) -> tuple[str | None, Path | None]:
    """("KMeans" | "Index" | None, file): explicit flags, else a kmeans_10000.pt or feature_and_index.pkl
    beside the model file (k-means first)."""
    if options.no_cluster:
        return None, None
    if options.kmeans and options.index:
        raise SvcError("MoeVoiceStudio uses one cluster kind per model: pass --kmeans or --index, not both")
    for kind, path in (("KMeans", options.kmeans), ("Index", options.index)):
        if path is not None:
            if not Path(path).is_file():
                raise SvcError(f"cluster file not found: {path}")
            return kind, Path(path)
    folder = Path(options.model_path).parent
    for kind, file_name in (("KMeans", KMEANS_NAME), ("Index", INDEX_NAME)):
        if (folder / file_name).is_file():
            logger.info(f"using {folder / file_name} beside the model ({kind}); --no_cluster skips it")
            return kind, folder / file_name
    return None, None


def load_model(model_path: str | os.PathLike, config: dict) -> SynthesizerTrn:
    """The generator of `config` with the weights of a 4.1 `G_*.pth` / `model.pth` (CPU, float32, eval)."""
    path = Path(model_path)
    if not path.is_file():
        raise SvcError(f"model file not found: {path} (4.1's layout: copy the trained G_<step>.pth to "
                       f"checkpoints/<name>/model.pth, or pass -m PATH)")
    model = SynthesizerTrn.from_config(config)
    load_generator_weights(model, read_state_dict(path))
    return model.float().eval()


@dataclass
class ClusterExport:
    """A checked cluster file, ready to be written in MoeVS's layout."""

    kind: str | None = None  # "KMeans", "Index" or None
    kmeans_table: np.ndarray | None = None
    kmeans_length: int | None = None
    indexes: list = field(default_factory=list)

    def write(self, folder: Path) -> list[Path]:
        if self.kind == "KMeans":
            return [write_kmeans(self.kmeans_table, folder)]
        if self.kind == "Index":
            return write_indexes(self.indexes, folder)
        return []


def prepare_cluster(kind: str | None, path: Path | None, speakers: Speakers, hidden: int) -> ClusterExport:
    """Load and check the cluster file (`resolve_cluster`'s answer) the export will convert; writes nothing."""
    if kind == "KMeans":
        table, length = prepare_kmeans(path, speakers, hidden)
        return ClusterExport(kind, kmeans_table=table, kmeans_length=length)
    if kind == "Index":
        return ClusterExport(kind, indexes=prepare_index(path, speakers, hidden))
    return ClusterExport()


def export_for_moevs(options: ExportOptions) -> ExportResult:
    """Write `<out>/<name>/<name>_SoVits.onnx`, cluster files, `<out>/<name>.json` (and the encoder)."""
    name = check_folder_name(options.name)
    config = load_model_config(options.config_path)
    speakers = model_speakers(config)
    hubert = hubert_name(config["model"], options.hubert)
    hop = int(config["data"]["hop_length"])
    if math.prod(config["model"]["upsample_rates"]) != hop:
        raise SvcError(f"the config's upsample_rates {config['model']['upsample_rates']} do not multiply to "
                       f"hop_length {hop}")
    cluster_kind, cluster_path = resolve_cluster(options)
    if options.export_encoder:
        parse_encoder_name(hubert)
        require_pretrained(options.encoder_checkpoint, f"the {hubert} encoder export (--export_encoder)")
    model = load_model(options.model_path, config)
    cluster = prepare_cluster(cluster_kind, cluster_path, speakers, model.config.ssl_dim)
    encoder = None
    if options.export_encoder:
        encoder = load_encoder(require_pretrained(options.encoder_checkpoint, f"the {hubert} encoder export"), hubert)
    chara_mix = len(speakers.ids) >= 2 and not options.plain_sid
    folder = Path(options.output_dir) / name
    onnx_path = folder / f"{name}_SoVits.onnx"
    shape = GraphShape(ssl_dim=model.config.ssl_dim, inter_channels=model.config.inter_channels,
                       characters=len(speakers.ids), chara_mix=chara_mix, volume=model.config.vol_embedding,
                       sampling_rate=int(config["data"]["sampling_rate"]), hop=hop)
    logger.info(f"exporting {name}: {len(speakers.ids)} character(s), "
                f"sid as {'mix matrix' if chara_mix else 'int64 index'}, Hubert {hubert}")
    wrapper = SovitsOnnx(model, speakers.ids, chara_mix, options.source_noise)
    with torch.no_grad(), atomic_path(onnx_path, suffix=".onnx") as tmp:
        export_graph(wrapper, moevs_inputs(shape, DUMMY_FRAMES), tmp, options.opset)
        parity = check_parity(model, tmp, shape, speakers.ids, options.parity_frames, options.tolerance)
    logger.info(f"wrote {onnx_path}")
    result = ExportResult(onnx=onnx_path, descriptor=Path(options.output_dir) / f"{name}.json", parity=parity)
    result.cluster_files = cluster.write(folder)
    if encoder is not None:
        result.encoder = Path(options.output_dir) / "hubert" / f"{hubert}.onnx"
        result.encoder_parity = write_encoder_file(encoder, result.encoder, options.opset, options.tolerance)
    descriptor = build_descriptor(name, config, speakers, hubert, chara_mix, cluster.kind, cluster.kmeans_length)
    write_descriptor(descriptor, result.descriptor)
    logger.info(f"wrote {result.descriptor}")
    return result


def export_encoder_file(checkpoint: str | os.PathLike, hubert: str, output_dir: str | os.PathLike,
                        opset: int = OPSET, tolerance: float = TOLERANCE, overwrite: bool = False
                        ) -> tuple[Path, list[float]]:
    """`<output_dir>/hubert/<hubert>.onnx` from the ContentVec checkpoint, parity-checked.

    An existing file is kept unless `overwrite` (re-runs skip finished work); returns (path, diffs).
    """
    path = Path(output_dir) / "hubert" / f"{hubert}.onnx"
    if path.is_file() and not overwrite:
        logger.info(f"{path} exists; kept (delete it to export it again)")
        return path, []
    encoder = load_encoder(require_pretrained(checkpoint, f"the {hubert} encoder export"), hubert)
    return path, write_encoder_file(encoder, path, opset, tolerance)


def write_encoder_file(encoder: torch.nn.Module, path: Path, opset: int = OPSET,
                       tolerance: float = TOLERANCE) -> list[float]:
    """Export a loaded content encoder to `path` once its parity check passes; -> the parity diffs."""
    with torch.no_grad(), atomic_path(path, suffix=".onnx") as tmp:
        export_encoder(encoder, tmp, opset)
        diffs = check_encoder_parity(encoder, tmp, tolerance=tolerance)
    logger.info(f"wrote {path}")
    return diffs
