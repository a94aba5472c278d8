"""So-VITS checkpoints `G_<step>.pth` / `D_<step>.pth` (spec §4.6): save, find, load, prune.

A file holds 4.1's keys — `model` (state dict of the plain module), `iteration` (the epoch, as 4.1 stores it),
`optimizer`, `learning_rate` (the configured initial lr) — so 4.1 reads ours. A full resume needs more, which
goes under extra keys that 4.1 ignores: `global_step`, `epoch_step` (batches done in that epoch), `scaler`,
`lr` (the current one) and `format` (our version). Files are written atomically and loaded with
weights_only=True.
A kill during a save leaves only a temp file beside the target (`.G_40.pth.k3j_x9a1.tmp`, see
`fileio.atomic_path`); `remove_stale_temp_files` clears those when a trainer starts.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from loguru import logger

from core.errors import SvcError
from core.fileio import safe_torch_load, torch_save

FORMAT_VERSION = 1
_NAME = re.compile(r"^(?P<kind>[GD])_(?P<step>\d+)\.pth$")
SOVITS_CHECKPOINT_NAME = r"[GD]_\d+\.pth"  # regex of train.py's checkpoint file names
DIFFUSION_CHECKPOINT_NAME = r"model_\d+\.pt"  # regex of train_diff.py's checkpoint file names


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step in a file NAME like `G_800.pth` (digits elsewhere in the path are ignored); None otherwise."""
    match = _NAME.match(Path(path).name)
    return int(match["step"]) if match else None


def list_checkpoints(model_dir: str | os.PathLike, kind: str) -> dict[int, Path]:
    """`{step: path}` of the `G_*.pth` (kind "G") or `D_*.pth` files in `model_dir`."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return {}
    found = {}
    for path in model_dir.iterdir():
        match = _NAME.match(path.name)
        if match and match["kind"] == kind and path.is_file():
            found[int(match["step"])] = path
    return found


def latest_pair(model_dir: str | os.PathLike) -> tuple[int, Path, Path] | None:
    """(step, G path, D path) of the newest step for which both files exist, or None."""
    g_files, d_files = list_checkpoints(model_dir, "G"), list_checkpoints(model_dir, "D")
    common = sorted(set(g_files) & set(d_files))
    if not common:
        if g_files or d_files:
            logger.warning(f"{model_dir} holds G or D checkpoints but no matching G/D pair; starting fresh")
        return None
    step = common[-1]
    newer = [s for s in set(g_files) | set(d_files) if s > step]
    if newer:
        logger.warning(f"ignoring unpaired checkpoint(s) at step(s) {sorted(newer)}; resuming from step {step}")
    return step, g_files[step], d_files[step]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DistributedDataParallel (state dicts must not carry a `module.` prefix)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, *,
                    epoch: int, learning_rate: float, extra: Mapping[str, Any] | None = None) -> None:
    """Write 4.1's dict (plus `extra` keys) atomically."""
    state = {
        "model": unwrap(model).state_dict(),
        "iteration": epoch,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "learning_rate": learning_rate,
        "format": FORMAT_VERSION,
        **(extra or {}),
    }
    torch_save(state, path)


@dataclass
class LoadReport:
    """What did not load: keys the file lacks, keys the model lacks, and keys whose shapes differ."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict safely and check it has a `model` state dict."""
    state = safe_torch_load(path, map_location="cpu")
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise SvcError(f"{path} is not a So-VITS checkpoint (no 'model' state dict)")
    return state


def load_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], *, strict: bool = True,
                 allow_missing: tuple[str, ...] = (), source: str = "checkpoint") -> LoadReport:
    """Copy `weights` into `model` (cast to the model's dtypes).

    strict: any missing (outside the `allow_missing` prefixes), unexpected or mis-shaped key raises an SvcError
    listing them. Not strict (4.1's base-model behaviour): matching tensors are copied, and every key that is
    missing or has another shape keeps its fresh initial value and is logged with both shapes.
    """
    model = unwrap(model)
    target = model.state_dict()
    report = LoadReport()
    report.unexpected = [k for k in weights if k not in target]
    for key, tensor in target.items():
        if key not in weights:
            if not key.startswith(allow_missing):
                report.missing.append(key)
        elif tuple(weights[key].shape) != tuple(tensor.shape):
            report.mismatched[key] = (tuple(weights[key].shape), tuple(tensor.shape))
    if strict and not report.complete:
        raise SvcError(f"{source} does not fit the model: {_describe(report)}")
    with torch.no_grad():
        for key, tensor in target.items():
            if key in weights and key not in report.mismatched:
                tensor.copy_(weights[key])
    for key, (saved, wanted) in report.mismatched.items():
        logger.warning(f"{source}: {key} has shape {saved} in the file but {wanted} in the model; "
                       "it keeps its initial value")
    for key in report.missing:
        logger.warning(f"{source}: {key} is missing from the file; it keeps its initial value")
    if report.unexpected:
        logger.warning(f"{source}: {len(report.unexpected)} key(s) not in the model are ignored: "
                       f"{', '.join(report.unexpected[:10])}")
    return report


def _describe(report: LoadReport) -> str:
    parts = []
    if report.missing:
        parts.append(f"{len(report.missing)} missing key(s) ({', '.join(report.missing[:5])})")
    if report.unexpected:
        parts.append(f"{len(report.unexpected)} unexpected key(s) ({', '.join(report.unexpected[:5])})")
    if report.mismatched:
        shown = ", ".join(f"{k} file {a} vs model {b}" for k, (a, b) in list(report.mismatched.items())[:5])
        parts.append(f"{len(report.mismatched)} shape mismatch(es) ({shown})")
    return "; ".join(parts)


def optimizer_fits(optimizer: torch.optim.Optimizer, state: Mapping[str, Any] | None) -> bool:
    """True when a saved optimizer state dict has the same parameter groups and per-parameter state shapes."""
    if not state or "param_groups" not in state or "state" not in state:
        return False
    saved_groups = state["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups):
        return False
    for saved, group in zip(saved_groups, optimizer.param_groups):
        if len(saved["params"]) != len(group["params"]):
            return False
        for index, param in zip(saved["params"], group["params"]):
            buffers = state["state"].get(index, {})
            avg = buffers.get("exp_avg") if isinstance(buffers, dict) else None
            if avg is not None and tuple(avg.shape) != tuple(param.shape):
                return False
    return True


def prune_checkpoints(model_dir: str | os.PathLike, keep: int) -> list[Path]:
    """4.1's keep_ckpts by step number: keep the newest `keep` complete G/D pairs (0 keeps all) and delete the
    G and D files of older steps; G_0/D_0 and files newer than the newest pair are never deleted."""
    if keep <= 0:
        return []
    g_files, d_files = list_checkpoints(model_dir, "G"), list_checkpoints(model_dir, "D")
    pairs = sorted(s for s in set(g_files) & set(d_files) if s != 0)
    if len(pairs) <= keep:
        return []
    oldest_kept = pairs[-keep]
    removed = []
    for files in (g_files, d_files):
        for step, path in sorted(files.items()):
            if 0 < step < oldest_kept:
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def remove_stale_temp_files(folder: str | os.PathLike,
                            checkpoint_name: str = SOVITS_CHECKPOINT_NAME) -> list[Path]:
    """Delete what killed saves left in `folder`: atomic-write temp files of checkpoints whose names match the
    regex `checkpoint_name` (`.G_40.pth.<random>.tmp`). Nothing else is touched, subfolders included.

    Call it when a trainer starts, before it saves anything: a save under way would lose its temp file.
    Returns the removed paths and logs one line naming them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    temp_name = re.compile(rf"^\.(?:{checkpoint_name})\.[A-Za-z0-9_]+\.tmp$")
    stale = sorted(path for path in folder.iterdir()
                   if temp_name.match(path.name) and path.is_file() and not path.is_symlink())
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        logger.info(f"removed {len(stale)} temp file(s) left in {folder} by an interrupted checkpoint save: "
                    f"{', '.join(path.name for path in stale)}")
    return stale


def release_checkpoint(checkpoint: Mapping[str, Any], fresh_optimizer_state: Mapping[str, Any], *,
                       half: bool = False) -> dict[str, Any]:
    """4.1's compress_model output: weights without any `enc_q` key (optionally float16), iteration 0,
    a fresh optimizer state and learning rate 0.0001 (spec §4.6)."""
    weights = {key: tensor for key, tensor in checkpoint["model"].items() if "enc_q" not in key}
    if half:
        weights = half_precision(weights)
    return {"model": weights, "iteration": 0, "optimizer": dict(fresh_optimizer_state), "learning_rate": 0.0001}


def half_precision(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors as float16; tensors that are views of the same data (the flows' shared WN
    with `flow_share_parameter`) stay one tensor, so the file stores them once."""
    converted: dict[tuple, torch.Tensor] = {}
    result = {}
    for key, tensor in weights.items():
        if not tensor.is_floating_point():
            result[key] = tensor
            continue
        view = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
        if view not in converted:
            converted[view] = tensor.half()
        result[key] = converted[view]
    return result
