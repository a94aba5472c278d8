"""K-means on content features: sklearn on CPU, or a torch mini-batch k-means for the GPU (spec §3.6).

The torch version seeds with k-means++ on a random subsample, then refines the centres with
mini-batch updates whose per-centre step size decays as 1 / (points that centre has seen), as in
Sculley's web-scale k-means. It runs on any torch device, so tests exercise it on the CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from loguru import logger


@dataclass(frozen=True)
class TorchKMeansOptions:
    max_iter: int = 500        # mini-batch steps at most
    tol: float = 1e-2          # stop when the mean centre shift falls below tol x mean centre spread
    batch_size: int = 8192     # rows per mini-batch
    init_sample: int = 30000   # rows k-means++ seeding looks at (at least 3 x n_clusters are used)
    chunk: int = 4096          # rows per distance block, bounds memory at chunk x n_clusters floats
    seed: int = 0


def nearest_centre(x: torch.Tensor, centres: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Index of the nearest centre (euclidean) for every row: x `[N, D]`, centres `[K, D]` -> `[N]` int64."""
    centre_sq = centres.pow(2).sum(dim=1)  # [K]
    out = []
    for start in range(0, x.shape[0], chunk):
        block = x[start:start + chunk]  # [n, D]
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 does not change the argmin
        dist = centre_sq[None, :] - 2.0 * block @ centres.T  # [n, K]
        out.append(dist.argmin(dim=1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


def kmeans_plus_plus(x: torch.Tensor, n_clusters: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: x `[N, D]` -> `[n_clusters, D]` rows of x, each drawn with probability ∝ d^2."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator, device="cpu"))
    centres = [x[first]]
    closest = (x - x[first]).pow(2).sum(dim=1)  # [N] squared distance to the nearest chosen centre
    for _ in range(1, n_clusters):
        total = closest.sum()
        if total <= 0:  # every row coincides with a centre already: pick any row
            pick = int(torch.randint(n, (1,), generator=generator, device="cpu"))
        else:
            probs = (closest / total).double().cpu()
            pick = int(torch.multinomial(probs, 1, generator=generator))
        centres.append(x[pick])
        closest = torch.minimum(closest, (x - x[pick]).pow(2).sum(dim=1))
    return torch.stack(centres)


def torch_kmeans(features: np.ndarray, n_clusters: int, device: str | torch.device = "cpu",
                 options: TorchKMeansOptions = TorchKMeansOptions()) -> np.ndarray:
    """Mini-batch k-means in torch: features `[N, D]` -> centres float32 `[n_clusters, D]`."""
    generator = torch.Generator(device="cpu").manual_seed(options.seed)
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
    n = x.shape[0]
    sample_size = min(n, max(options.init_sample, 3 * n_clusters))
    sample = x[torch.randperm(n, generator=generator)[:sample_size].to(x.device)]
    centres = kmeans_plus_plus(sample, n_clusters, generator)  # [K, D]
    counts = torch.zeros(n_clusters, device=x.device)
    spread = (sample - sample.mean(dim=0)).norm(dim=1).mean().clamp_min(1e-12)
    for step in range(options.max_iter):
        rows = torch.randint(n, (min(options.batch_size, n),), generator=generator).to(x.device)
        batch = x[rows]  # [b, D]
        labels = nearest_centre(batch, centres, options.chunk)  # [b]
        batch_counts = torch.bincount(labels, minlength=n_clusters).to(centres.dtype)  # [K]
        sums = torch.zeros_like(centres).index_add_(0, labels, batch)  # [K, D]
        counts += batch_counts
        hit = batch_counts > 0
        rate = torch.where(hit, batch_counts / counts.clamp_min(1), torch.zeros_like(counts))  # [K]
        means = sums / batch_counts.clamp_min(1)[:, None]
        shift = rate[:, None] * (means - centres)  # [K, D]; zero rows for centres the batch missed
        centres = centres + shift
        if shift[hit].norm(dim=1).mean() < options.tol * spread:
            logger.debug(f"torch k-means converged after {step + 1} steps")
            break
    return centres.float().cpu().numpy()


def sklearn_kmeans(features: np.ndarray, n_clusters: int, minibatch: bool = False,
                   seed: int = 0) -> tuple[np.ndarray, int]:
    """sklearn KMeans (or MiniBatchKMeans): features `[N, D]` -> (centres float32 `[K, D]`, threads used)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if minibatch:
        model = MiniBatchKMeans(n_clusters=n_clusters, batch_size=max(1024, 256 * (os.cpu_count() or 1)),
                                n_init=1, random_state=seed, compute_labels=False)
    else:
        model = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed)
    model.fit(np.ascontiguousarray(features, dtype=np.float32))
    threads = int(getattr(model, "_n_threads", os.cpu_count() or 1))
    return model.cluster_centers_.astype(np.float32), threads
