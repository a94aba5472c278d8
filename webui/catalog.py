"""What the logs folder offers the browser: model folders, their checkpoints, cluster files, diffusion models.

The page only ever chooses among the names listed here; `model_folder` maps a chosen name back to a
folder and refuses anything that is not one of them, so no path typed in a browser reaches the disk.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.checkpoint import latest_checkpoint, list_checkpoints
from core.errors import SvcError

CLUSTER_PATTERNS = ("kmeans_*.pt", "feature_and_index*.pkl")
DIFFUSION_CONFIG = "config.yaml"


@dataclass(frozen=True)
class DiffusionFiles:
    model: Path
    config: Path


def model_folders(logs_dir: Path) -> list[str]:
    """Names of the folders under `logs_dir` holding a config.json and at least one G_<step>.pth."""
    if not Path(logs_dir).is_dir():
        return []
    return sorted(folder.name for folder in Path(logs_dir).iterdir()
                  if folder.is_dir() and (folder / "config.json").is_file() and list_checkpoints(folder, "G"))


def training_folders(logs_dir: Path) -> list[str]:
    """Names of every folder under `logs_dir` (a training run may not have saved a checkpoint yet)."""
    if not Path(logs_dir).is_dir():
        return []
    return sorted(folder.name for folder in Path(logs_dir).iterdir()
                  if folder.is_dir() and not folder.name.startswith("."))


def model_folder(logs_dir: Path, name: str | None, listed: list[str] | None = None) -> Path:
    """The folder of a listed name; anything else (empty, a path, an unlisted name) is refused."""
    listed = model_folders(logs_dir) if listed is None else listed
    if not name:
        raise SvcError(f"choose a model folder first (none found in {logs_dir}: train one with train.py, "
                       "or upload a G_<step>.pth and its config.json)" if not listed else "choose a model folder first")
    if name not in listed:
        raise SvcError(f"{name!r} is not a model folder of {logs_dir}; choose one of: {', '.join(listed) or 'none'}")
    return Path(logs_dir) / name


def generator_checkpoints(folder: Path) -> list[str]:
    """File names of the G_<step>.pth in `folder`, newest step first, then its other .pth files (release
    copies, mixes); D_<step>.pth (discriminators) are left out."""
    found = list_checkpoints(folder, "G")
    names = [found[step].name for step in sorted(found, reverse=True)]
    others = sorted(path.name for path in Path(folder).glob("*.pth")
                    if path.is_file() and path.name not in names and not path.name.startswith("D_"))
    return names + others


def checkpoint_in(folder: Path, name: str | None) -> Path:
    """A listed checkpoint of `folder` by name (the newest when none is chosen)."""
    listed = generator_checkpoints(folder)
    if not name:
        if not listed:
            raise SvcError(f"{folder} holds no G_<step>.pth")
        return folder / listed[0]
    if name not in listed:
        raise SvcError(f"{name!r} is not a checkpoint of {folder}; choose one of: {', '.join(listed)}")
    return folder / name


def cluster_files(folder: Path) -> list[str]:
    """k-means models (kmeans_<n>.pt) and feature indexes (feature_and_index*.pkl) in `folder`."""
    return sorted({path.name for pattern in CLUSTER_PATTERNS for path in Path(folder).glob(pattern) if path.is_file()})


def cluster_in(folder: Path, name: str | None) -> Path | None:
    if not name:
        return None
    if name not in cluster_files(folder):
        raise SvcError(f"{name!r} is not a cluster model of {folder}")
    return folder / name


def is_feature_index(path: Path | None) -> bool:
    """A .pkl is a feature-retrieval index (train_index.py); a .pt is a k-means model (train_cluster.py)."""
    return path is not None and Path(path).suffix == ".pkl"


def diffusion_files(folder: Path) -> DiffusionFiles | None:
    """The newest model_<step>.pt under `folder`/diffusion with its config.yaml, when both are there."""
    diffusion_dir = Path(folder) / "diffusion"
    found = latest_checkpoint(diffusion_dir, "diffusion")
    config = diffusion_dir / DIFFUSION_CONFIG
    if found is None or not config.is_file():
        return None
    return DiffusionFiles(found[1], config)
