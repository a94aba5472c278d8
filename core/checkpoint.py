"""Every model checkpoint this toolkit writes or reads goes through here (spec §4.6, §4.10).

So-VITS `G_<step>.pth` / `D_<step>.pth` hold 4.1's keys — `model` (state dict of the plain module),
`iteration` (the epoch, as 4.1 stores it), `optimizer`, `learning_rate` (the configured initial lr) — so 4.1
reads ours. A full resume needs more, which goes under extra keys that 4.1 ignores: `global_step`, `epoch_step`
(batches done in that epoch), `scaler`, `lr` (the current one) and `format` (our version).
Diffusion `model_<step>.pt` hold 4.1's `{global_step, model[, optimizer]}`.

Files are written atomically and loaded with weights_only=True. A kill during a save leaves only a temp file
beside the target (`.G_40.pth.k3j_x9a1.tmp`, see `fileio.atomic_path`); `remove_stale_temp_files` clears those
when a trainer starts. Every comparison of a file's state dict with a model yields one `LoadReport`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from loguru import logger

from core.errors import SvcError
from core.fileio import safe_torch_load, torch_save

FORMAT_VERSION = 1
SOVITS_CHECKPOINT_NAME = r"[GD]_(?:\d+|best)\.pth"  # regex of train.py's checkpoint file names
DIFFUSION_CHECKPOINT_NAME = r"model_(?:\d+|best)\.pt"  # regex of train_diff.py's checkpoint file names
_NAMES = {
    "G": re.compile(r"^G_(?P<step>\d+)\.pth$"),
    "D": re.compile(r"^D_(?P<step>\d+)\.pth$"),
    "diffusion": re.compile(r"^model_(?P<step>\d+)\.pt$"),
}
Shape = tuple[int, ...]


# --------------------------------------------------------------------------------------------------------------
# file names: step, latest, prune


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step in a file NAME like `G_800.pth` or `model_800.pt` (digits elsewhere in the path are ignored);
    None for any other name."""
    name = Path(path).name
    for pattern in _NAMES.values():
        if match := pattern.match(name):
            return int(match["step"])
    return None


def list_checkpoints(folder: str | os.PathLike, kind: str, *, recursive: bool = False) -> dict[int, Path]:
    """`{step: path}` of the checkpoint files of `kind` ("G", "D" or "diffusion") in `folder`
    (and its subfolders when `recursive`; the first file found wins a tie)."""
    if kind not in _NAMES:
        raise ValueError(f"unknown checkpoint kind {kind!r}; use one of {', '.join(_NAMES)}")
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    found: dict[int, Path] = {}
    for path in folder.rglob("*") if recursive else folder.iterdir():
        match = _NAMES[kind].match(path.name)
        if match and path.is_file():
            found.setdefault(int(match["step"]), path)
    return found


def latest_checkpoint(folder: str | os.PathLike, kind: str, *, recursive: bool = False) -> tuple[int, Path] | None:
    """(step, path) of the checkpoint of `kind` with the highest step in its file name, or None."""
    found = list_checkpoints(folder, kind, recursive=recursive)
    if not found:
        return None
    step = max(found)
    return step, found[step]


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


def latest_diffusion_checkpoint(expdir: str | os.PathLike) -> tuple[Path, int] | None:
    """(path, step) of the `model_<n>.pt` with the largest n anywhere under expdir (train_diff.py's resume)."""
    found = latest_checkpoint(expdir, "diffusion", recursive=True)
    return (found[1], found[0]) if found is not None else None


def _remove_steps(files: Mapping[int, Path], doomed: Callable[[int], bool]) -> list[Path]:
    """Delete the files whose step `doomed` accepts, oldest first; returns them."""
    removed = []
    for step, path in sorted(files.items()):
        if doomed(step):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


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
    return [path for files in (g_files, d_files) for path in _remove_steps(files, lambda s: 0 < s < oldest_kept)]


def prune_diffusion_checkpoints(expdir: str | os.PathLike, step: int, interval: int,
                                force_interval: int = 0) -> list[Path]:
    """4.1's train_diff.py pruning after saving `model_<step>.pt`: delete the one saved `interval` steps
    before, unless its step is 0 or a multiple of `force_interval` (> 0)."""
    previous = step - interval
    if previous <= 0 or (force_interval > 0 and previous % force_interval == 0):
        return []
    return _remove_steps(list_checkpoints(expdir, "diffusion"), lambda s: s == previous)


BEST_GENERATOR = "G_best.pth"  # the generator of the best validation figure; pruning never touches it
BEST_DIFFUSION = "model_best.pt"  # the diffusion model of the lowest validation loss


def save_best(path: str | os.PathLike, save: Callable[[Path], None], metric: str, value: float,
              step: int) -> None:
    """Write a best checkpoint with `save(path)` (atomic), then record which figure made it best, its value
    and step in `<path>.json` beside it (written atomically too) so a resumed run knows what to beat."""
    import json

    from core.fileio import atomic_path

    path = Path(path)
    save(path)
    with atomic_path(best_record_path(path)) as tmp:
        Path(tmp).write_text(json.dumps({"metric": metric, "value": value, "step": step}) + "\n", encoding="utf-8")


def best_record_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def best_value(path: str | os.PathLike, metric: str) -> float | None:
    """The value recorded for best checkpoint `path` if it was chosen by `metric` and still exists, else None."""
    import json

    record = best_record_path(path)
    if not Path(path).is_file() or not record.is_file():
        return None
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return float(data["value"]) if data.get("metric") == metric and "value" in data else None


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


# --------------------------------------------------------------------------------------------------------------
# save and read


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DistributedDataParallel (state dicts must not carry a `module.` prefix)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, *,
                    epoch: int, learning_rate: float, extra: Mapping[str, Any] | None = None) -> None:
    """Write 4.1's So-VITS dict (plus `extra` keys) atomically."""
    state = {
        "model": unwrap(model).state_dict(),
        "iteration": epoch,
        "optimizer": portable_optimizer_state(optimizer) if optimizer is not None else None,
        "learning_rate": learning_rate,
        "format": FORMAT_VERSION,
        **(extra or {}),
    }
    torch_save(state, path)


def portable_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict with the step-kernel options as 4.1's files have them (fused and foreach None),
    so a torch without a fused CPU kernel resumes it too; the run that resumes picks its own kernel."""
    state = optimizer.state_dict()
    groups = [{**group, "fused": None, "foreach": None} for group in state["param_groups"]]
    return {**state, "param_groups": groups}


def save_diffusion_checkpoint(path: str | os.PathLike, model: torch.nn.Module, step: int,
                              optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write 4.1's diffusion dict `{global_step, model[, optimizer]}` atomically, plus the plain keys the model's
    `checkpoint_extra()` returns when it has one (a rectified-flow Unit2Mel records its `objective`)."""
    plain = unwrap(model)
    state: dict[str, Any] = {"global_step": step, "model": plain.state_dict()}
    state.update(getattr(plain, "checkpoint_extra", dict)())
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    torch_save(state, path)


def read_checkpoint(path: str | os.PathLike, kind: str = "So-VITS") -> dict[str, Any]:
    """Load a checkpoint dict safely and check it has a `model` state dict (`kind` names it in the error)."""
    state = safe_torch_load(path, map_location="cpu")
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise SvcError(f"{path} is not a {kind} checkpoint (no 'model' state dict)")
    return state


def state_dict_of(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The `model` entry of a whole checkpoint dict, or the mapping itself when it is a bare state dict."""
    inner = checkpoint.get("model")
    return inner if isinstance(inner, Mapping) else checkpoint


def read_state_dict(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """The weights of a generator file: a 4.1 `G_*.pth` / release `model.pth`, or a bare state dict (memory-
    mapped: a training checkpoint's optimizer state, twice the size of the weights, is never read)."""
    state = safe_torch_load(path, map_location="cpu", mmap=True)
    if not isinstance(state, Mapping):
        raise SvcError(f"{path} is not a So-VITS checkpoint (no 'model' state dict)")
    return state_dict_of(state)


# --------------------------------------------------------------------------------------------------------------
# comparing and loading weights


@dataclass
class LoadReport:
    """How a file's state dict compares with a model's.

    missing: model keys the file lacks (keys under a prefix skipped as a whole are not counted);
    unexpected: file keys the model lacks; mismatched: (key, file shape, model shape);
    skipped_prefixes: optional prefixes the file lacks entirely (a compressed model has no `enc_q.`);
    reinitialised: mismatched keys that were allowed to keep the model's initial value.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, Shape, Shape]] = field(default_factory=list)
    skipped_prefixes: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every model key got a tensor of its shape and the file had nothing else."""
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def fits(self) -> bool:
        """Nothing that a strict load refuses (skipped prefixes and reinitialised keys are accepted)."""
        return not (self.missing or self.unexpected or self.blocking_mismatches)

    @property
    def blocking_mismatches(self) -> list[tuple[str, Shape, Shape]]:
        return [entry for entry in self.mismatched if entry[0] not in self.reinitialised]

    @property
    def mismatched_keys(self) -> set[str]:
        return {key for key, _, _ in self.mismatched}

    def problems(self) -> list[str]:
        """One line per differing tensor: `missing K`, `unexpected K`, `K: checkpoint (..) vs model (..)`."""
        return ([f"missing {key}" for key in self.missing] + [f"unexpected {key}" for key in self.unexpected]
                + [f"{key}: checkpoint {saved} vs model {wanted}" for key, saved, wanted in self.mismatched])

    def summary(self) -> str:
        """One line with counts and the first few keys of each refused kind."""
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s) ({', '.join(self.missing[:5])})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s) ({', '.join(self.unexpected[:5])})")
        blocking = self.blocking_mismatches
        if blocking:
            shown = ", ".join(f"{k} file {a} vs model {b}" for k, a, b in blocking[:5])
            parts.append(f"{len(blocking)} shape mismatch(es) ({shown})")
        return "; ".join(parts)

    def listing(self) -> str:
        """Several lines for a user who loaded a model with the wrong config.json."""
        lines = ["the checkpoint does not fit this model config (is it the config.json that belongs to the model?)"]
        if self.missing:
            lines.append(f"missing keys: {_first_of(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected keys: {_first_of(self.unexpected)}")
        blocking = self.blocking_mismatches
        if blocking:
            lines.append("shape mismatches: " + _first_of([f"{k} checkpoint {a} vs model {b}" for k, a, b in blocking]))
        return "\n".join(lines)


def _first_of(items: list[str], shown: int = 8) -> str:
    return ", ".join(items[:shown]) + (f", ... ({len(items)} in all)" if len(items) > shown else "")


def compare_weights(target: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor], *,
                    allow_missing: tuple[str, ...] = (), reinit_mismatched: tuple[str, ...] = ()) -> LoadReport:
    """Compare a model's state dict `target` with the `weights` of a file.

    allow_missing: prefixes that may be absent — only as a whole (a file holding part of `enc_q.` is corrupt);
    reinit_mismatched: prefixes whose shape mismatches are accepted (the key keeps its initial value).
    """
    skipped = [prefix for prefix in allow_missing if any(k.startswith(prefix) for k in target)
               and not any(k.startswith(prefix) for k in weights)]
    report = LoadReport(skipped_prefixes=skipped)
    report.missing = [k for k in target if k not in weights and not k.startswith(tuple(skipped))]
    report.unexpected = [k for k in weights if k not in target]
    report.mismatched = [(k, tuple(weights[k].shape), tuple(t.shape)) for k, t in target.items()
                         if k in weights and tuple(weights[k].shape) != tuple(t.shape)]
    report.reinitialised = [k for k, _, _ in report.mismatched if k.startswith(tuple(reinit_mismatched))]
    return report


def load_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], *, strict: bool = True,
                 allow_missing: tuple[str, ...] = (), reinit_mismatched: tuple[str, ...] = (),
                 source: str = "checkpoint", describe: Callable[[LoadReport], str] | None = None,
                 warn: bool = True) -> LoadReport:
    """Copy `weights` into `model` (cast to the model's dtypes) and report what differed.

    strict: a report that does not `fit` raises an SvcError — `describe(report)` when given, else
    "<source> does not fit the model: <summary>" — before anything is copied. Not strict (4.1's base-model
    behaviour): matching tensors are copied and every other key keeps its initial value. Tolerated problems
    are logged one per key unless `warn` is False (the caller logs them its own way).
    """
    target = unwrap(model).state_dict()
    report = compare_weights(target, weights, allow_missing=allow_missing, reinit_mismatched=reinit_mismatched)
    if strict and not report.fits:
        raise SvcError(describe(report) if describe else f"{source} does not fit the model: {report.summary()}")
    skip = report.mismatched_keys
    with torch.no_grad():
        for key, tensor in target.items():
            if key in weights and key not in skip:
                tensor.copy_(weights[key])
    if warn:
        _warn_tolerated(report, source)
    return report


def _warn_tolerated(report: LoadReport, source: str) -> None:
    for key, saved, wanted in report.mismatched:
        logger.warning(f"{source}: {key} has shape {saved} in the file but {wanted} in the model; "
                       "it keeps its initial value")
    for key in report.missing:
        logger.warning(f"{source}: {key} is missing from the file; it keeps its initial value")
    if report.unexpected:
        logger.warning(f"{source}: {len(report.unexpected)} key(s) not in the model are ignored: "
                       f"{', '.join(report.unexpected[:10])}")


def load_diffusion_checkpoint(path: str | os.PathLike, model: torch.nn.Module,
                              optimizer: torch.optim.Optimizer | None = None) -> int:
    """Resume or fine-tune from a `model_<step>.pt`: weights load non-strictly (each differing tensor keeps its
    fresh value and is logged), the optimizer only when the file has one and every tensor matched.
    Returns the file's global_step (train_diff.py counts from the step in the file name instead, so a base
    model renamed to `model_0.pt` starts a fresh schedule whatever step it stores)."""
    name = Path(path).name
    checkpoint = read_checkpoint(path, kind="diffusion")
    report = load_weights(model, checkpoint["model"], strict=False, source=name, warn=False)
    for problem in report.problems():
        logger.warning(f"{name}: {problem} (kept freshly initialised)")
    if optimizer is not None:
        if checkpoint.get("optimizer") is not None and report.complete:
            optimizer.load_state_dict(checkpoint["optimizer"])
        else:
            logger.info(f"{name} has no usable optimizer state; the optimizer starts fresh")
    return int(checkpoint.get("global_step", 0))


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


# --------------------------------------------------------------------------------------------------------------
# release copies


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


def mix_weights(percentages: list[float], mode: str) -> list[float]:
    values = torch.tensor(percentages, dtype=torch.float64) / 100.0
    if mode == "convex":
        values = torch.softmax(values, dim=0)
    return values.tolist()


def mix_checkpoints(paths: list[str], percentages: list[float], mode: str) -> dict:
    """Weighted sum of every tensor of the checkpoints' `model` dicts."""
    if len(paths) < 2:
        raise SvcError("give at least two checkpoints to mix")
    if len(paths) != len(percentages):
        raise SvcError(f"{len(paths)} checkpoints but {len(percentages)} percentages")
    weights = mix_weights(percentages, mode)
    checkpoints = [read_checkpoint(p) for p in paths]
    first = checkpoints[0]["model"]
    mixed = {}
    for key, tensor in first.items():
        parts = []
        for path, ckpt in zip(paths, checkpoints):
            other = ckpt["model"].get(key)
            if other is None or other.shape != tensor.shape:
                raise SvcError(f"{path} does not match the first model at '{key}': the models must share one config")
            parts.append(other.double())
        mixed[key] = sum(w * p for w, p in zip(weights, parts)).to(tensor.dtype)
    return {**checkpoints[0], "model": mixed}
