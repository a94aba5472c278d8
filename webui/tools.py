"""The Tools tab: static model mix, compression, ONNX export and cluster / index training.

Each is the library call its script makes (mix_model.py, compress_model.py, onnx_export.py,
train_cluster.py, train_index.py), with outputs written beside the chosen model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from core.errors import SvcError
from core.outputs import check_output_file

PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MIX_MODES = ("convex", "linear")


@dataclass(frozen=True)
class ExportSummary:
    onnx: Path
    descriptor: Path
    parity: list[float]         # largest difference to the torch model at each checked length
    tolerance: float
    files: list[Path]


def output_name(name: str, suffix: str) -> str:
    """A plain file name ending in `suffix`: no folders, nothing hidden, not a D_/G_<step> name."""
    name = name.strip()
    if not name.endswith(suffix):
        name += suffix
    if not PLAIN_NAME.match(name) or re.match(r"^[DG]_\d+\.pth$", name):
        raise SvcError(f"output name {name!r} must be a plain file name (letters, digits, '.', '_', '-'), "
                       "not D_<step>.pth or G_<step>.pth")
    return name


def mix_models(checkpoints: list[Path], percentages: list[float], mode: str, output: Path) -> Path:
    """mix_model.py: blend generator checkpoints of one architecture into `output` (never overwritten)."""
    from core.checkpoint import mix_checkpoints
    from core.fileio import torch_save

    if mode not in MIX_MODES:
        raise SvcError(f"mix mode must be one of {', '.join(MIX_MODES)}, got {mode!r}")
    check_output_file(output, checkpoints, "output", overwrite=False)
    torch_save(mix_checkpoints([str(path) for path in checkpoints], percentages, mode), output)
    return output


def compress_model(checkpoint: Path, config: Path, half: bool) -> tuple[Path, int, int]:
    """compress_model.py: a release copy beside the input; returns (path, bytes before, bytes after)."""
    import torch

    from core.checkpoint import read_checkpoint, release_checkpoint
    from core.config import load_model_config
    from core.fileio import torch_save
    from training.loop import build_generator

    hps = load_model_config(config, need_train=True)
    model = build_generator(hps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(hps.train.learning_rate),
                                  betas=tuple(hps.train.betas), eps=float(hps.train.eps))
    output = checkpoint.with_name(f"{checkpoint.stem}_release{'_half' if half else ''}{checkpoint.suffix}")
    check_output_file(output, [checkpoint], "output", overwrite=False, only_checkpoints=True)
    torch_save(release_checkpoint(read_checkpoint(checkpoint), optimizer.state_dict(), half=half), output)
    return output, checkpoint.stat().st_size, output.stat().st_size


def export_onnx(name: str, checkpoint: Path, config: Path, output_dir: Path, plain_sid: bool = False) -> ExportSummary:
    """onnx_export.py: MoeVoiceStudio's files under `output_dir`, with the parity check's figures."""
    from onnxexport.export import ExportOptions, check_folder_name, export_for_moevs

    options = ExportOptions(name=check_folder_name(name), model_path=checkpoint, config_path=config,
                            output_dir=output_dir, plain_sid=plain_sid)
    result = export_for_moevs(options)
    return ExportSummary(result.onnx, result.descriptor, list(result.parity), options.tolerance,
                         [result.onnx, result.descriptor, *result.cluster_files])


def train_cluster(dataset_dir: Path, folder: Path, n_clusters: int, minibatch: bool) -> Path:
    """train_cluster.py: per-speaker k-means codebooks written to `folder`/kmeans_<n>.pt."""
    from cluster import train_cluster_model

    if n_clusters < 1:
        raise SvcError("the number of clusters must be at least 1")
    if not Path(dataset_dir).is_dir():
        raise SvcError(f"dataset folder not found: {dataset_dir} (run the preprocessing first, or start "
                       "webUI.py with --dataset_dir)")
    return train_cluster_model(dataset_dir, folder, n_clusters, use_gpu=False, minibatch=minibatch)


def train_index(dataset_dir: Path, folder: Path) -> Path:
    """train_index.py: per-speaker feature-retrieval indexes written to `folder`/feature_and_index.pkl."""
    from cluster import build_index_file

    if not Path(dataset_dir).is_dir():
        raise SvcError(f"dataset folder not found: {dataset_dir} (run the preprocessing first, or start "
                       "webUI.py with --dataset_dir)")
    return build_index_file(dataset_dir, folder / "config.json", folder)


def describe_export(summary: ExportSummary) -> str:
    worst = max(summary.parity) if summary.parity else float("nan")
    return (f"wrote {', '.join(str(path) for path in summary.files)}\n"
            f"parity with the torch model: largest difference {worst:.2e} (tolerance {summary.tolerance:.0e}; "
            f"per checked length: {', '.join(f'{value:.2e}' for value in summary.parity)})")
