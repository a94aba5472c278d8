"""Per-speaker k-means codebooks: 4.1's `kmeans_10000.pt` file (spec §4.7), training and inference mixing.

File layout: `torch.save({speaker_name: {"n_features_in_": D, "_n_threads": int,
"cluster_centers_": float32 numpy [K, D]}})`. Keys are speaker folder names, not ids.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from loguru import logger

from cluster.dataset import load_speaker_features
from cluster.kmeans import nearest_centre, sklearn_kmeans, torch_kmeans
from core.errors import SvcError
from core.fileio import safe_torch_load, torch_save

DEFAULT_CLUSTERS = 10000
GPU_THREADS = 4  # what 4.1's GPU path records as _n_threads


def _numpy_globals() -> list:
    """The numpy names a pickled float array needs, under numpy 2 and numpy 1 module paths; nothing more."""
    from numpy._core.multiarray import _reconstruct

    return [np.ndarray, np.dtype, np.dtypes.Float32DType, np.dtypes.Float64DType,
            (_reconstruct, "numpy._core.multiarray._reconstruct"),
            (_reconstruct, "numpy.core.multiarray._reconstruct")]


def save_kmeans(codebooks: dict[str, np.ndarray], path: str | os.PathLike, threads: int = 1) -> None:
    """Write `{speaker: centres [K, D]}` in 4.1's layout, atomically."""
    data = {
        speaker: {"n_features_in_": int(centres.shape[1]), "_n_threads": int(threads),
                  "cluster_centers_": np.ascontiguousarray(centres, dtype=np.float32)}
        for speaker, centres in codebooks.items()
    }
    torch_save(data, path)


def load_kmeans(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a `kmeans_10000.pt` without running code from it: -> {speaker name: centres float32 `[K, D]`}.

    Only tensors, containers, numbers and float numpy arrays are admitted (UnsafeFileError otherwise).
    """
    with torch.serialization.safe_globals(_numpy_globals()):
        data = safe_torch_load(path)
    if not isinstance(data, dict) or not data:
        raise SvcError(f"{path} is not a cluster model: expected {{speaker: {{'cluster_centers_': ...}}}}")
    codebooks = {}
    for speaker, entry in data.items():
        centres = entry.get("cluster_centers_") if isinstance(entry, dict) else None
        if centres is None or np.ndim(centres) != 2:
            raise SvcError(f"{path}: speaker '{speaker}' has no [K, D] 'cluster_centers_' array")
        codebooks[str(speaker)] = torch.as_tensor(np.asarray(centres, dtype=np.float32))
    return codebooks


def kmeans_predict(features: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Nearest centre per frame: features `[T, D]`, centres `[K, D]` -> `[T]` int64."""
    _check_dims(features, centres)
    centres = centres.to(features.device, torch.float32)
    return nearest_centre(features.float(), centres)


def kmeans_mix(features: torch.Tensor, centres: torch.Tensor, ratio: float) -> torch.Tensor:
    """ratio · nearest centre + (1 − ratio) · features, per frame: `[T, D]` -> `[T, D]` (features' dtype)."""
    if ratio == 0:
        return features
    nearest = centres.to(features.device, torch.float32)[kmeans_predict(features, centres)]  # [T, D]
    return (ratio * nearest + (1.0 - ratio) * features.float()).to(features.dtype)


def fit_codebook(features: np.ndarray, n_clusters: int, use_gpu: bool = False, minibatch: bool = False,
                 device: str | torch.device | None = None, seed: int = 0) -> tuple[np.ndarray, int]:
    """Cluster `[N, D]` rows into min(n_clusters, N) centres -> (centres float32 `[K, D]`, thread count).

    use_gpu selects the torch k-means (on `device`, default CUDA when present, else CPU).
    """
    k = min(n_clusters, features.shape[0])
    if use_gpu:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return torch_kmeans(features, k, device), GPU_THREADS
    return sklearn_kmeans(features, k, minibatch=minibatch, seed=seed)


def train_cluster_model(dataset: Path, output: Path, n_clusters: int = DEFAULT_CLUSTERS, use_gpu: bool = False,
                        minibatch: bool = False, device: str | None = None) -> Path:
    """Fit one codebook per speaker folder of `dataset` and write `<output>/kmeans_<n>.pt`, n the most centres
    any speaker got (n_clusters, unless every speaker has fewer frames: the name says what the file holds)."""
    dataset, output = Path(dataset), Path(output)
    if not dataset.is_dir():
        raise SvcError(f"dataset folder not found: {dataset}")
    speakers = sorted(p for p in dataset.iterdir() if p.is_dir() and not p.name.startswith("."))
    codebooks, threads, centres = {}, 1, 0
    for speaker_dir in speakers:
        features = load_speaker_features(speaker_dir)
        if features.shape[0] == 0:
            logger.warning(f"{speaker_dir.name}: no .soft.pt files, skipped (run preprocess_hubert_f0.py first)")
            continue
        if features.shape[0] < n_clusters:
            logger.warning(f"{speaker_dir.name}: only {features.shape[0]} frames, fewer than --n_clusters "
                           f"{n_clusters}, so {features.shape[0]} clusters instead of {n_clusters}")
        centres = max(centres, min(n_clusters, int(features.shape[0])))
        logger.info(f"{speaker_dir.name}: clustering {features.shape[0]} frames")
        codebooks[speaker_dir.name], threads = fit_codebook(features, n_clusters, use_gpu, minibatch, device)
    if not codebooks:
        raise SvcError(f"no speaker folder under {dataset} holds .soft.pt feature files; "
                       "run preprocess_hubert_f0.py first")
    path = output / f"kmeans_{centres}.pt"
    save_kmeans(codebooks, path, threads)
    logger.info(f"wrote {path} ({len(codebooks)} speakers)"
                + (f"; pass it with -cm, the file is named for the {centres} centres it holds"
                   if centres != n_clusters else ""))
    return path


def _check_dims(features: torch.Tensor, centres: torch.Tensor) -> None:
    if features.dim() != 2 or features.shape[1] != centres.shape[1]:
        raise SvcError(f"features {tuple(features.shape)} do not match the cluster model's "
                       f"{centres.shape[1]}-dim centres; was it trained with the same speech encoder?")
