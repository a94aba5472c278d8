"""Diffusion training loop (train_diff.py, spec §11.4); its checkpoints `model_<step>.pt` (§4.10) are written,
found, loaded and pruned by core.checkpoint.

One loop: resume from the highest checkpoint under expdir, step with AdamW at lr·γ^(step // decay_step),
log every interval_log, and every interval_val save (atomically), prune and validate. With `max_steps` it stops
after that step and saves it; a run already there trains nothing.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from loguru import logger
from torch.utils.data import DataLoader

from diffusion.dataset import MelDataset, read_filelist
from diffusion import samplers
from diffusion.unit2mel import DEFAULT_FLOW_STEPS, Unit2Mel, build_model, checkpoint_objective
from core.checkpoint import (BEST_DIFFUSION, DIFFUSION_CHECKPOINT_NAME, best_value, latest_diffusion_checkpoint,
                             load_diffusion_checkpoint, prune_diffusion_checkpoints, read_checkpoint,
                             remove_stale_temp_files, save_best, save_diffusion_checkpoint)
from core.config import HParams, save_config
from core.errors import ConfigError, SvcError
from core.progress import StepProgress

AMP_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


REQUIRED_KEYS = ("data.sampling_rate", "data.block_size", "data.duration", "data.encoder_out_channels",
                 "data.training_files", "data.validation_files", "model.n_spk", "env.expdir", "train.batch_size",
                 "train.epochs", "train.interval_log", "train.interval_val", "train.lr", "train.decay_step",
                 "train.gamma")


def check_config(config: HParams) -> None:
    """Refuse a diffusion config that lacks a key training needs, naming the key."""
    for dotted in REQUIRED_KEYS:
        node: Any = config
        for part in dotted.split("."):
            if not isinstance(node, HParams) or part not in node:
                raise ConfigError(f"diffusion config lacks '{dotted}' (see configs_template/diffusion_template.yaml)")
            node = node[part]


def resolve_device(name: str | None, gpu_id: int | None = 0) -> torch.device:
    """The configured device; 'cuda' without a GPU falls back to CPU with a warning."""
    name = str(name or "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            logger.warning(f"device '{name}' requested but CUDA is not available; training on CPU")
            return torch.device("cpu")
        return torch.device(name if ":" in name else f"cuda:{int(gpu_id or 0)}")
    return torch.device(name)


def learning_rate(step: int, lr: float, decay_step: int, gamma: float) -> float:
    """Step decay as a pure function of the step, so a resumed run continues on the same schedule."""
    return lr * gamma ** (step // max(int(decay_step), 1))


@contextlib.contextmanager
def _autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


def _amp_dtype(name: str) -> torch.dtype | None:
    if name not in AMP_DTYPES:
        raise SvcError(f"train.amp_dtype must be one of {', '.join(AMP_DTYPES)}, not '{name}'")
    return AMP_DTYPES[name]


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, torch.float32 if v.is_floating_point() else v.dtype) if torch.is_tensor(v) else v
            for k, v in batch.items()}


def _batch_loss(model: Unit2Mel, batch: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
    return model(batch["units"], batch["f0"], batch["volume"], batch["spk_id"], batch["mel"],
                 aug_shift=batch["aug_shift"], generator=generator)


def build_datasets(config: HParams, device: torch.device) -> tuple[MelDataset, MelDataset]:
    data, train = config.data, config.train
    cache = bool(train.get("cache_all_data", True))
    cache_device = device if str(train.get("cache_device", "cpu")).startswith("cuda") and device.type == "cuda" else "cpu"
    common = dict(spk_map=config.get("spk", {}), n_spk=int(config.model.n_spk),
                  interpolate_mode=data.get("unit_interpolate_mode", "nearest"))
    crop = int(float(data.duration) * int(data.sampling_rate) / int(data.block_size))
    train_set = MelDataset(read_filelist(data.training_files), crop_frames=crop,
                           use_aug=bool(config.model.get("use_pitch_aug", False)), cache=cache,
                           cache_device=cache_device, cache_fp16=bool(train.get("cache_fp16", False)), **common)
    val_set = MelDataset(read_filelist(data.validation_files), cache=False, **common)
    if len(train_set) == 0:
        raise SvcError(f"the training list {data.training_files} is empty")
    return train_set, val_set


@torch.no_grad()
def validation_loss(model: Unit2Mel, val_set: MelDataset, device: torch.device, seed: int = 1234) -> float:
    """Mean diffusion loss over whole validation clips, with fixed noise so evaluations are comparable."""
    if len(val_set) == 0:
        return float("nan")
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    losses = []
    for i in range(len(val_set)):
        batch = _to_device({k: v[None] if torch.is_tensor(v) else v for k, v in val_set[i].items()}, device)
        losses.append(float(_batch_loss(model, batch, generator)))
    model.train()
    return sum(losses) / len(losses)


def _load_vocoder(config: HParams, device: torch.device) -> Any | None:
    """The NSF-HiFiGAN vocoder for validation audio, or None (with a warning) when it is unavailable."""
    try:
        from vdecoder.nsf_hifigan import NsfHifiGAN
    except ImportError as error:
        logger.warning(f"vocoder module not available ({error}); validation audio is skipped")
        return None
    vocoder_cfg = config.get("vocoder", {})
    try:
        return NsfHifiGAN.from_type(vocoder_cfg.get("type", "nsf-hifigan"),
                                    vocoder_cfg.get("ckpt", "pretrain/nsf_hifigan/model"), device)
    except SvcError as error:
        logger.warning(f"{error}; validation audio is skipped")
        return None


@torch.no_grad()
def log_validation_audio(model: Unit2Mel, val_set: MelDataset, vocoder: Any, config: HParams,
                         writer: Any, step: int) -> None:
    """Shallow (or pure, for full-chain models) diffusion on each validation clip; audio to TensorBoard."""
    model.eval()
    device = next(model.parameters()).device
    infer = config.get("infer", {})
    full_chain = model.k_step_max >= model.dims.timesteps
    for i in range(len(val_set)):
        item = val_set[i]
        batch = _to_device({k: v[None] if torch.is_tensor(v) else v for k, v in item.items()}, device)
        mel = model.infer(batch["units"], batch["f0"], batch["volume"], batch["spk_id"],
                          gt_spec=None if full_chain else batch["mel"], k_step=None if full_chain else model.k_step_max,
                          method=samplers.method_for(model.objective, infer.get("method", "dpm-solver++")),
                          speedup=int(infer.get("speedup", 10)), steps=int(infer.get("flow_steps", DEFAULT_FLOW_STEPS)))
        name = Path(item["name"]).parent.name + "_" + Path(item["name"]).name
        sr = int(config.data.sampling_rate)
        writer.add_image(name, _mel_image(batch["mel"][0], mel[0]), step, dataformats="HW")
        writer.add_audio(f"{name}_gt.wav", vocoder.vocode(batch["mel"], batch["f0"])[0].cpu(), step, sr)
        writer.add_audio(f"{name}_pred.wav", vocoder.vocode(mel, batch["f0"])[0].cpu(), step, sr)
    model.train()


def _mel_image(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Ground truth above prediction, low bins at the bottom, log-mel range [-12, 2] mapped to [0, 1]."""
    both = torch.cat([pred, gt], dim=1).T.flip(0)  # [2M, T]
    return ((both.float().cpu() + 12.0) / 14.0).clamp(0.0, 1.0)


class _Saver:
    """Checkpoint writing and pruning of the previous one (unless its step is a multiple of interval_force_save)."""

    def __init__(self, expdir: Path, interval_val: int, interval_force_save: int, save_opt: bool):
        self.expdir, self.interval_val = expdir, interval_val
        self.force, self.save_opt = interval_force_save, save_opt

    def save(self, model: Unit2Mel, optimizer: torch.optim.Optimizer, step: int) -> None:
        path = self.expdir / f"model_{step}.pt"
        save_diffusion_checkpoint(path, model, step, optimizer if self.save_opt else None)
        logger.info(f"saved {path}")
        prune_diffusion_checkpoints(self.expdir, step, self.interval_val, self.force)


def keep_best_diffusion(expdir: Path, model: Unit2Mel, step: int, loss: float) -> None:
    """model_best.pt (no optimizer state) when `loss` is below the recorded best; pruning never deletes it."""
    path = expdir / BEST_DIFFUSION
    best = best_value(path, "validation_loss")
    if loss == loss and (best is None or loss < best):
        save_best(path, lambda target: save_diffusion_checkpoint(target, model, step), "validation_loss", loss, step)
        logger.info(f"{BEST_DIFFUSION}: step {step}, validation loss {loss:.6f}")


def check_resume_objective(path: Path, step: int, objective: str) -> None:
    """A run resumes only a checkpoint of its own objective; a base model `model_0.pt` of the other kind is
    accepted with a warning (its weights are a start for either objective: the layouts are the same)."""
    found = checkpoint_objective(read_checkpoint(path, kind="diffusion"), path)
    if found == objective:
        return
    if step == 0:
        logger.warning(f"{path} is a {found} model; its weights start this {objective} training")
        return
    raise SvcError(f"{path} is a {found} checkpoint but the config says model.objective {objective}; "
                   "train in another env.expdir or set model.objective back")


def train(config: HParams, max_steps: int | None = None,
          on_step: Callable[[int, float], None] | None = None) -> int:
    """Train (or resume) the diffusion model described by `config`; returns the last global step.

    Runs `train.epochs` epochs, or stops after global step `max_steps` when given, saving a checkpoint there;
    a run resumed at or past `max_steps` trains nothing and writes no checkpoint.
    `on_step(step, loss)` is called after every optimisation step (for tests and tools).
    """
    check_config(config)
    train_cfg = config.train
    device = resolve_device(config.get("device", "cuda"), config.get("env", {}).get("gpu_id", 0))
    amp_dtype = _amp_dtype(str(train_cfg.get("amp_dtype", "fp32")))
    expdir = Path(config.env.expdir)
    expdir.mkdir(parents=True, exist_ok=True)
    save_config(config, expdir / "config.yaml")
    remove_stale_temp_files(expdir, DIFFUSION_CHECKPOINT_NAME)
    found = latest_diffusion_checkpoint(expdir)
    done = found[1] if found is not None else 0
    if max_steps is not None and done >= max_steps:
        logger.info(f"already at step {done} (--max_steps {max_steps}); nothing to train")
        return done

    vocoder = _load_vocoder(config, device)
    model = build_model(config, vocoder.num_mels if vocoder is not None else 128).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(train_cfg.lr),
                                  weight_decay=float(train_cfg.get("weight_decay", 0)))
    step = 0
    if found is not None:
        path, step = found
        check_resume_objective(path, step, model.objective)
        load_diffusion_checkpoint(path, model, optimizer)
        logger.info(f"resumed from {path} at step {step}")
    model.to(device).train()

    train_set, val_set = build_datasets(config, device)
    workers = 0 if train_set.cache and str(train_cfg.get("cache_device", "cpu")).startswith("cuda") \
        else int(train_cfg.get("num_workers", 0))
    loader = DataLoader(train_set, batch_size=int(train_cfg.batch_size), shuffle=True, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    if len(loader) == 0:
        raise SvcError(f"train.batch_size {train_cfg.batch_size} is larger than the {len(train_set)} usable "
                       "training clips; lower it")
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    from torch.utils.tensorboard import SummaryWriter  # imported late: slow, and only training needs it
    writer = SummaryWriter(log_dir=str(expdir / "logs"))
    saver = _Saver(expdir, int(train_cfg.interval_val), int(train_cfg.get("interval_force_save", 0)),
                   bool(train_cfg.get("save_opt", False)))
    try:
        step = _loop(config, model, optimizer, scaler, loader, val_set, vocoder, writer, saver, device,
                     amp_dtype, step, max_steps, on_step)
    finally:
        writer.close()
    return step


def _loop(config: HParams, model: Unit2Mel, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
          loader: DataLoader, val_set: MelDataset, vocoder: Any, writer: Any, saver: _Saver,
          device: torch.device, amp_dtype: torch.dtype | None, step: int, max_steps: int | None,
          on_step: Callable[[int, float], None] | None) -> int:
    t = config.train
    interval_log, interval_val = int(t.interval_log), int(t.interval_val)
    first_epoch = step // len(loader)
    to_epochs_end = step + max(0, int(t.epochs) - first_epoch) * len(loader)  # a resumed epoch runs in full
    total = to_epochs_end if max_steps is None else min(max_steps, to_epochs_end)
    with StepProgress(total, step, desc="diffusion training") as progress:
        for epoch in range(first_epoch, int(t.epochs)):
            for batch in loader:
                step += 1
                lr = learning_rate(step, float(t.lr), int(t.decay_step), float(t.gamma))
                loss = _train_step(model, optimizer, scaler, _to_device(batch, device), lr, device, amp_dtype, step)
                if on_step is not None:
                    on_step(step, loss)
                if step % interval_log == 0:
                    _log_step(writer, epoch, step, loss, lr)
                if step % interval_val == 0:
                    _validate_and_save(config, model, optimizer, val_set, vocoder, writer, saver, device, step)
                elif step == max_steps:
                    saver.save(model, optimizer, step)
                progress.advance(epoch=epoch, loss=f"{loss:.4f}")
                if step == max_steps:
                    return step
    return step


def _log_step(writer: Any, epoch: int, step: int, loss: float, lr: float) -> None:
    logger.info(f"epoch {epoch} step {step} loss {loss:.6f} lr {lr:.3e}")
    writer.add_scalar("train/loss", loss, step)
    writer.add_scalar("train/lr", lr, step)


def _train_step(model: Unit2Mel, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                batch: dict[str, Any], lr: float, device: torch.device, amp_dtype: torch.dtype | None,
                step: int) -> float:
    """One optimisation step at learning rate `lr`; returns the loss."""
    if batch["mel"].shape[-1] != model.dims.out_dims:
        raise SvcError(f"mel files have {batch['mel'].shape[-1]} bins but the vocoder/model uses "
                       f"{model.dims.out_dims}; re-run preprocessing with this vocoder")
    for group in optimizer.param_groups:
        group["lr"] = lr
    with _autocast(device, amp_dtype):
        loss = _batch_loss(model, batch)
    value = loss.item()
    if not math.isfinite(value):
        raise SvcError(f"training loss became {value} at step {step}; lower train.lr or use amp_dtype fp32")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return value


def _validate_and_save(config: HParams, model: Unit2Mel, optimizer: torch.optim.Optimizer, val_set: MelDataset,
                       vocoder: Any, writer: Any, saver: _Saver, device: torch.device, step: int) -> None:
    saver.save(model, optimizer, step)
    loss = validation_loss(model, val_set, device)
    logger.info(f"validation loss {loss:.6f} at step {step}")
    writer.add_scalar("validation/loss", loss, step)
    keep_best_diffusion(saver.expdir, model, step, loss)
    if vocoder is not None:
        log_validation_audio(model, val_set, vocoder, config, writer, step)
