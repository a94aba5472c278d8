"""So-VITS GAN training (spec §10): one loop over steps, resumable, on CPU, one GPU or several.

`launch()` starts one process per GPU (or `cpu_processes` gloo processes on CPU, or uses torchrun's
RANK/WORLD_SIZE), each running `train()`. Randomness is a function of (seed, rank, step): every step reseeds
torch, and data crops are seeded per (epoch, item) in the dataset, so a resumed run continues exactly as an
uninterrupted one would. The learning rate is a function of the epoch (`learning_rate_at`).
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from loguru import logger
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from core import dsp
from modules import losses
from core.checkpoint import (BEST_GENERATOR, best_value, latest_pair, load_weights, optimizer_fits,
                             prune_checkpoints, read_checkpoint, remove_stale_temp_files, save_best,
                             save_checkpoint)
from core.config import HParams, save_config
from training.dataset import Batch, BucketSampler, DataOptions, SpeakerDataset, collate
from training.metrics import ValidationFigures, best_metric_of, is_better
from modules.discriminator import MultiPeriodDiscriminator
from core.errors import SvcError
from core.progress import StepProgress, route_logs_through_tqdm

EXIT_INTERRUPTED = 130
# AdamW as one fused kernel where torch has it: a step of the default G 0.17 -> 0.05 s, of D 0.28 -> 0.04 s (2-core CPU)
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


class TrainingStopped(SvcError):
    """Training cannot go on (a NaN loss, a process failure); the message says why and what was saved."""


@dataclass(frozen=True)
class RunOptions:
    """How to run, as opposed to what to train (that is the config)."""

    model_dir: Path
    num_workers: int | None = None  # DataLoader workers; None = 4.1's rule (5, or the core count if ≤ 4)
    max_steps: int | None = None  # stop after this global step, saving a checkpoint (None = run all epochs)
    cpu_processes: int = 1  # gloo processes on a machine without CUDA
    device: str | None = None  # "cpu" forces the CPU even where CUDA exists


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


@dataclass
class TrainState:
    """Models, optimizers and counters; `step` is the next step to run."""

    net_g: nn.Module
    net_d: MultiPeriodDiscriminator
    optim_g: torch.optim.Optimizer
    optim_d: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    epoch: int = 1
    step: int = 0
    epoch_step: int = 0  # batches of `epoch` already done
    ddp_g: nn.Module | None = None  # DDP wrapper of net_g when distributed
    ddp_d: nn.Module | None = None

    @property
    def g(self) -> nn.Module:
        return self.ddp_g or self.net_g

    @property
    def d(self) -> nn.Module:
        return self.ddp_d or self.net_d


@dataclass
class StepResult:
    """Scalars of one step (for logs) and first-item tensors for the images."""

    scalars: dict[str, float]
    images: dict[str, torch.Tensor] = field(default_factory=dict)


def learning_rate_at(epoch: int, train: Any) -> float:
    """4.1's schedule as a function: linear warm-up (lr·epoch/W for epoch ≤ W), then ExponentialLR stepped
    once per epoch (lr·decay^(epoch − max(W, 1)))."""
    base, warmup = float(train.learning_rate), int(train.get("warmup_epochs", 0))
    if epoch <= warmup:
        return base * epoch / warmup
    return base * float(train.lr_decay) ** (epoch - max(warmup, 1))


def autocast_dtype(train: Any) -> torch.dtype | None:
    """fp16/bf16 autocast dtype when `fp16_run`, else None."""
    if not train.get("fp16_run", False):
        return None
    return torch.bfloat16 if train.get("half_type", "fp16") == "bf16" else torch.float16


# --------------------------------------------------------------------------------------------------------------
# building


def build_generator(hps: HParams) -> nn.Module:
    """SynthesizerTrn for this config (spec §9.1); imported here so the loop can be tested with a stand-in."""
    from models import SynthesizerTrn

    return SynthesizerTrn(hps.data.filter_length // 2 + 1, hps.train.segment_size // hps.data.hop_length,
                          **hps.model)


def build_state(hps: HParams, device: torch.device, make_generator: Callable[[HParams], nn.Module]) -> TrainState:
    train = hps.train
    net_g = make_generator(hps).to(device)
    net_d = MultiPeriodDiscriminator(bool(hps.model.get("use_spectral_norm", False)),
                                     int(hps.model.get("discriminator_width_divisor", 1))).to(device)
    adamw = dict(lr=float(train.learning_rate), betas=tuple(train.betas), eps=float(train.eps),
                 fused=device.type in FUSED_ADAMW_DEVICES)
    dtype = autocast_dtype(train)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return TrainState(net_g, net_d, torch.optim.AdamW(net_g.parameters(), **adamw),
                      torch.optim.AdamW(net_d.parameters(), **adamw), scaler)


def restore(state: TrainState, model_dir: Path) -> None:
    """Resume from the newest G/D pair in `model_dir`, if any.

    Our checkpoints restore everything strictly (weights, optimizers, scaler, epoch, position in the epoch).
    Others — 4.1's, and the `G_0.pth`/`D_0.pth` base models — load shape-tolerantly (each mismatched key is
    logged with both shapes), their optimizer state only if it fits, and training goes on at the next step
    from the start of the saved epoch, as in 4.1.
    """
    found = latest_pair(model_dir)
    if found is None:
        logger.info(f"no checkpoint in {model_dir}; training from scratch")
        return
    step, g_path, d_path = found
    g_ckpt, d_ckpt = read_checkpoint(g_path), read_checkpoint(d_path)
    ours = "global_step" in g_ckpt and "global_step" in d_ckpt
    for net, optim, ckpt, path in ((state.net_g, state.optim_g, g_ckpt, g_path),
                                   (state.net_d, state.optim_d, d_ckpt, d_path)):
        load_weights(net, ckpt["model"], strict=ours, source=path.name)
        if optimizer_fits(optim, ckpt.get("optimizer")):
            load_optimizer_state(optim, ckpt["optimizer"])
        elif ours:
            raise SvcError(f"{path}: its optimizer state does not fit the model")
        else:
            logger.warning(f"{path.name}: optimizer state absent or not matching the model; starting it fresh")
    state.epoch = max(int(g_ckpt.get("iteration", 1)), 1)
    state.step = step + 1
    if ours:
        state.epoch_step = int(g_ckpt.get("epoch_step", 0))
        if g_ckpt.get("scaler"):
            state.scaler.load_state_dict(g_ckpt["scaler"])
    logger.info(f"resumed from {g_path.name}/{d_path.name}: epoch {state.epoch}, next step {state.step}")


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load `saved` but keep this run's step kernel (fused / foreach): load_state_dict would take it from the saved
    groups (a 4.1 file says fused=None) and place the step counters for that kernel, so a resumed run would compute
    differently from an uninterrupted one."""
    kernel = {"fused": optimizer.defaults["fused"], "foreach": optimizer.defaults["foreach"]}
    optimizer.load_state_dict({**saved, "param_groups": [{**group, **kernel} for group in saved["param_groups"]]})


def save(state: TrainState, hps: HParams, model_dir: Path, step: int) -> None:
    """G_<step>.pth and D_<step>.pth (state after `step`), then keep_ckpts pruning."""
    extra = {"global_step": step, "epoch_step": state.epoch_step,
             "lr": state.optim_g.param_groups[0]["lr"]}
    lr = float(hps.train.learning_rate)
    save_checkpoint(model_dir / f"G_{step}.pth", state.net_g, state.optim_g, epoch=state.epoch, learning_rate=lr,
                    extra={**extra, "scaler": state.scaler.state_dict()})
    save_checkpoint(model_dir / f"D_{step}.pth", state.net_d, state.optim_d, epoch=state.epoch, learning_rate=lr,
                    extra=extra)
    removed = prune_checkpoints(model_dir, int(hps.train.get("keep_ckpts", 0)))
    logger.info(f"saved G_{step}.pth and D_{step}.pth" + (f"; removed {len(removed)} old file(s)" if removed else ""))


def keep_best(state: TrainState, hps: HParams, model_dir: Path, step: int, figures: dict[str, float]) -> None:
    """Write G_best.pth (generator only, 4.1's keys) when this step's `train.best_metric` beats the recorded one."""
    metric = best_metric_of(hps.train)
    path = model_dir / BEST_GENERATOR
    value, best = figures.get(metric), best_value(path, metric)
    if not is_better(metric, value, best):
        return
    save_best(path, lambda target: save_checkpoint(target, state.net_g, None, epoch=state.epoch,
                                                   learning_rate=float(hps.train.learning_rate),
                                                   extra={"global_step": step}), metric, value, step)
    was = f" (was {best:.4g})" if best is not None else ""
    logger.info(f"{BEST_GENERATOR}: step {step}, {metric} {value:.4g}{was}")


# --------------------------------------------------------------------------------------------------------------
# one step


def slice_frames(x: torch.Tensor, starts: torch.Tensor, size: int) -> torch.Tensor:
    """Per-item windows `x[b, :, s_b : s_b + size]` of `[B, C, T]` → `[B, C, size]`."""
    return torch.stack([x[b, :, int(s):int(s) + size] for b, s in enumerate(starts.tolist())])


def grad_norm(parameters: Any) -> float:
    """Total L2 norm of the gradients (4.1 reports it and clips nothing)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def train_step(state: TrainState, batch: Batch, hps: HParams, *, want_images: bool = False) -> StepResult:
    """One discriminator update and one generator update on `batch` (spec §10.3)."""
    data, train = hps.data, hps.train
    hop = data.hop_length
    segment_frames = train.segment_size // hop
    device = batch.units.device
    dtype = autocast_dtype(train)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    mel = dict(sr=data.sampling_rate, n_fft=data.filter_length, n_mels=data.n_mel_channels,
               fmin=data.mel_fmin, fmax=data.mel_fmax)

    with autocast:
        y_hat, ids_slice, z_mask, (z, z_p, m_p, logs_p, m_q, logs_q), pred_lf0, norm_lf0, lf0 = state.g(
            batch.units, batch.f0, batch.uv, batch.spec, g=batch.speakers, c_lengths=batch.lengths,
            spec_lengths=batch.lengths, vol=batch.volume)
    y = slice_frames(batch.audio, ids_slice * hop, train.segment_size)  # [B, 1, segment_size]

    # discriminator: real and generated go through D as one batch
    with autocast:
        real_logits, fake_logits, _, _ = state.d(y, y_hat.detach())
    loss_d, _, _ = losses.discriminator_loss(real_logits, fake_logits)
    state.optim_d.zero_grad(set_to_none=True)
    state.scaler.scale(loss_d).backward()
    state.scaler.unscale_(state.optim_d)
    grad_norm_d = grad_norm(state.net_d.parameters())
    state.scaler.step(state.optim_d)

    # generator: D's weights need no gradients here, and the real signal needs no graph at all
    net_d = state.net_d
    net_d.requires_grad_(False)
    try:
        with autocast:
            with torch.no_grad():
                _, real_fmaps = net_d.score(y)
            fake_logits, fake_fmaps = net_d.score(y_hat)
    finally:
        net_d.requires_grad_(True)
    y_mel = dsp.spec_to_mel(slice_frames(batch.spec, ids_slice, segment_frames).float(), **mel)
    y_hat_mel = dsp.mel_spectrogram(y_hat.squeeze(1).float(), hop_length=hop, win_length=data.win_length, **mel)
    loss_mel = losses.mel_loss(y_mel, y_hat_mel) * train.c_mel
    loss_kl = losses.kl_loss(z_p, logs_q, m_p, logs_p, z_mask) * train.c_kl
    loss_fm = losses.feature_loss(real_fmaps, fake_fmaps)
    loss_gen, _ = losses.generator_loss(fake_logits)
    has_f0_decoder = torch.is_tensor(pred_lf0)  # 0 when use_automatic_f0_prediction is off
    loss_lf0 = losses.f0_loss(pred_lf0, lf0) if has_f0_decoder else torch.zeros((), device=device)
    loss_g = loss_gen + loss_fm + loss_mel + loss_kl + loss_lf0
    state.optim_g.zero_grad(set_to_none=True)
    state.scaler.scale(loss_g).backward()
    state.scaler.unscale_(state.optim_g)
    grad_norm_g = grad_norm(state.net_g.parameters())
    state.scaler.step(state.optim_g)
    state.scaler.update()

    values = torch.stack([loss_d, loss_g, loss_gen, loss_fm, loss_mel, loss_kl, loss_lf0]).detach().float().cpu()
    names = ("loss/d/total", "loss/g/total", "loss/g/gen", "loss/g/fm", "loss/g/mel", "loss/g/kl", "loss/g/lf0")
    scalars = dict(zip(names, values.tolist()))
    scalars.update({"grad_norm_d": grad_norm_d, "grad_norm_g": grad_norm_g,
                    "learning_rate": state.optim_g.param_groups[0]["lr"]})
    result = StepResult(scalars)
    if want_images:
        result.images = {"slice/mel_org": y_mel[0], "slice/mel_gen": y_hat_mel[0],
                         "all/mel": dsp.spec_to_mel(batch.spec[:1].float(), **mel)[0]}
        if has_f0_decoder:
            result.images.update({"all/lf0": torch.stack([lf0[0, 0], pred_lf0[0, 0]]),
                                  "all/norm_lf0": torch.stack([lf0[0, 0], norm_lf0[0, 0]])})
        result.images = {k: v.detach().float().cpu() for k, v in result.images.items()}
    return result


# --------------------------------------------------------------------------------------------------------------
# logging and evaluation


class Board:
    """TensorBoard writers at `model_dir` and `model_dir/eval` (rank 0 only), with 4.1's tag names."""

    def __init__(self, model_dir: Path, sampling_rate: int = 44100):
        from torch.utils.tensorboard import SummaryWriter

        self.train = SummaryWriter(log_dir=str(model_dir))
        self.eval = SummaryWriter(log_dir=str(model_dir / "eval"))
        self.figures = ValidationFigures(sampling_rate)  # the validation figures (training/metrics.py)

    def log_step(self, step: int, result: StepResult) -> None:
        for tag, value in result.scalars.items():
            if tag != "loss/g/gen":
                self.train.add_scalar(tag, value, step)
        for tag, tensor in result.images.items():
            image = lines_image(tensor.numpy()) if "lf0" in tag else spectrogram_image(tensor.numpy())
            self.train.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        self.train.close()
        self.eval.close()


@torch.no_grad()
def evaluate(net_g: nn.Module, loader: DataLoader, hps: HParams, board: Board, step: int,
             device: torch.device) -> dict[str, float]:
    """Synthesize every validation item with the true f0/uv/volume, log audio, the last item's mels and the
    validation figures (eval/<figure>); returns the figures' means."""
    data = hps.data
    mel = dict(sr=data.sampling_rate, n_fft=data.filter_length, n_mels=data.n_mel_channels,
               fmin=data.mel_fmin, fmax=data.mel_fmax, hop_length=data.hop_length, win_length=data.win_length)
    net_g.eval()
    board.figures.start()
    try:
        for index, batch in enumerate(loader):
            batch = batch.to(device)
            audio, _ = net_g.infer(batch.units, batch.f0, batch.uv, g=batch.speakers, vol=batch.volume)
            board.eval.add_audio(f"gen/audio_{index}", audio[0].float().cpu(), step, data.sampling_rate)
            board.eval.add_audio(f"gt/audio_{index}", batch.audio[0].float().cpu(), step, data.sampling_rate)
            gen_mel = dsp.mel_spectrogram(audio[:, 0].float(), **mel)[0]
            gt_mel = dsp.spec_to_mel(batch.spec[:1].float(), **{k: mel[k] for k in
                                                                 ("sr", "n_fft", "n_mels", "fmin", "fmax")})[0]
            frames = min(gen_mel.shape[-1], gt_mel.shape[-1])
            board.figures.add(index, audio[0, 0].float().cpu().numpy(), batch.audio[0, 0].float().cpu().numpy(),
                              float((gen_mel[:, :frames] - gt_mel[:, :frames]).abs().mean()))
        if len(loader):
            board.eval.add_image("gen/mel", spectrogram_image(gen_mel.cpu().numpy()), step, dataformats="HWC")
            board.eval.add_image("gt/mel", spectrogram_image(gt_mel.cpu().numpy()), step, dataformats="HWC")
    finally:
        net_g.train()
    means = board.figures.means()
    for name, value in means.items():
        board.eval.add_scalar(f"eval/{name}", value, step)
    if means:
        logger.info(f"validation at step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in means.items()))
    return means


def format_scalars(scalars: dict[str, float]) -> str:
    short = {"loss/d/total": "d", "loss/g/gen": "gen", "loss/g/fm": "fm", "loss/g/mel": "mel", "loss/g/kl": "kl",
             "loss/g/lf0": "lf0", "loss/g/total": "g", "grad_norm_d": "gnorm_d", "grad_norm_g": "gnorm_g",
             "learning_rate": "lr"}
    return " ".join(f"{short[k]}={scalars[k]:.8g}" for k in short)


# --------------------------------------------------------------------------------------------------------------
# the loop


class StopFlag:
    """Set by SIGINT; the loop saves and stops at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def installed(self):
        """Handle SIGINT while the block runs, then restore the previous handler."""
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("Ctrl-C: saving a checkpoint after this step (press again to abort without saving)")


def make_loaders(hps: HParams, dist_info: Dist, options: RunOptions, device: torch.device
                 ) -> tuple[DataLoader, BucketSampler, DataLoader | None]:
    train = hps.train
    all_in_mem = bool(train.get("all_in_mem", False))
    train_set = SpeakerDataset(hps.data.training_files, DataOptions.from_config(hps), all_in_mem=all_in_mem)
    sampler = BucketSampler(train_set.frame_counts(), int(train.batch_size), num_replicas=dist_info.world_size,
                            rank=dist_info.rank, seed=int(train.seed))
    workers = options.num_workers
    if workers is None:
        workers = 0 if all_in_mem else (5 if (os.cpu_count() or 1) > 4 else (os.cpu_count() or 1))
    loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    val_loader = None
    if dist_info.is_main:
        val_set = SpeakerDataset(hps.data.validation_files, DataOptions.from_config(hps, augment=False),
                                 all_in_mem=all_in_mem)
        val_loader = DataLoader(val_set, batch_size=1, shuffle=False, collate_fn=collate, num_workers=0)
    return loader, sampler, val_loader


def check_config(hps: HParams) -> None:
    for section in ("train", "data", "model", "spk"):
        if section not in hps:
            raise SvcError(f"the config has no '{section}' section; is it a So-VITS config.json?")
    speakers = dict(hps.spk)
    if speakers and max(speakers.values()) >= int(hps.model.n_speakers):
        raise SvcError(f"config spk has ids up to {max(speakers.values())} but model.n_speakers is "
                       f"{hps.model.n_speakers}")
    if hps.train.segment_size % hps.data.hop_length:
        raise SvcError(f"train.segment_size {hps.train.segment_size} is not a multiple of hop {hps.data.hop_length}")
    best_metric_of(hps.train)


def train(hps: HParams, options: RunOptions, dist_info: Dist | None = None,
          make_generator: Callable[[HParams], nn.Module] = build_generator) -> int:
    """Train until `train.epochs` (or `options.max_steps`); returns the exit code (0, or 130 after Ctrl-C).

    A run resumed at or past `max_steps` trains nothing and writes nothing.
    """
    dist_info = dist_info or Dist()
    check_config(hps)
    device = _device(options, dist_info)
    model_dir = options.model_dir
    seed = int(hps.train.seed)
    torch.manual_seed(seed)
    if dist_info.is_main:
        remove_stale_temp_files(model_dir)
    state = build_state(hps, device, make_generator)
    restore(state, model_dir)
    if options.max_steps is not None and state.step > options.max_steps:
        logger.info(f"already at step {state.step - 1} (--max_steps {options.max_steps}); nothing to train")
        return 0
    loader, sampler, val_loader = make_loaders(hps, dist_info, options, device)
    if dist_info.enabled:
        ids = [dist_info.local_rank] if device.type == "cuda" else None
        state.ddp_g = DistributedDataParallel(state.net_g, device_ids=ids)
        state.ddp_d = DistributedDataParallel(state.net_d, device_ids=ids)
    board = Board(model_dir, int(hps.data.sampling_rate)) if dist_info.is_main else None
    batches = sampler.rank_batches(state.epoch)
    logger.info(f"rank {dist_info.rank}/{dist_info.world_size} on {device}: {len(batches)} batches per epoch, "
                f"first batch {batches[0]}")
    total = planned_steps(state, int(hps.train.epochs), len(batches), options.max_steps)
    try:
        with StopFlag().installed() as stop, StepProgress(total, state.step, desc="training",
                                                          enabled=dist_info.is_main) as progress:
            return _loop(state, hps, options, dist_info, loader, sampler, val_loader, board, stop, device, progress)
    finally:
        if board is not None:
            board.close()


def planned_steps(state: TrainState, epochs: int, batches_per_epoch: int, max_steps: int | None) -> int:
    """How many steps will have run when training ends: at the end of epoch `epochs`, or after step
    `max_steps` (steps count from 0), whichever comes first. `state` is where the run starts."""
    remaining_epochs = max(0, epochs - state.epoch)
    to_epochs_end = state.step
    if state.epoch <= epochs:
        to_epochs_end += max(0, batches_per_epoch - state.epoch_step) + remaining_epochs * batches_per_epoch
    return to_epochs_end if max_steps is None else min(to_epochs_end, max_steps + 1)


def _loop(state: TrainState, hps: HParams, options: RunOptions, dist_info: Dist, loader: DataLoader,
          sampler: BucketSampler, val_loader: DataLoader | None, board: Board | None, stop: StopFlag,
          device: torch.device, progress: StepProgress) -> int:
    train_cfg = hps.train
    seed = int(train_cfg.seed)
    last_saved: int | None = state.step - 1 if state.step > 0 else None
    while state.epoch <= int(train_cfg.epochs):
        lr = learning_rate_at(state.epoch, train_cfg)
        for optim in (state.optim_g, state.optim_d):
            for group in optim.param_groups:
                group["lr"] = lr
        sampler.set_epoch(state.epoch, skip=state.epoch_step)
        batches = len(sampler) + state.epoch_step
        started = time.time()
        for batch in loader:
            step = state.step
            torch.manual_seed(seed + 1_000_003 * dist_info.rank + step)
            want_images = dist_info.is_main and step % int(train_cfg.log_interval) == 0
            result = train_step(state, batch.to(device, non_blocking=True), hps, want_images=want_images)
            state.epoch_step += 1
            nan = not all(map(_finite, result.scalars.values()))
            interrupted, nan = _agree(dist_info, device, stop.requested, nan)
            if nan:
                raise TrainingStopped(
                    f"a loss is NaN or infinite at step {step} ({format_scalars(result.scalars)}); stopped. "
                    + (f"The last good checkpoint is G_{last_saved}.pth; " if last_saved is not None else "")
                    + "lower the learning rate or check the data")
            if want_images:
                logger.info(f"epoch {state.epoch} [{100 * state.epoch_step / max(batches, 1):.0f}%] step {step} "
                            f"{format_scalars(result.scalars)}")
                board.log_step(step, result)
            final = options.max_steps is not None and step >= options.max_steps
            if step % int(train_cfg.eval_interval) == 0 or interrupted or final:
                if dist_info.is_main:
                    figures = None
                    if step % int(train_cfg.eval_interval) == 0:
                        figures = evaluate(state.net_g, val_loader, hps, board, step, device)
                    save(state, hps, options.model_dir, step)
                    if figures:
                        keep_best(state, hps, options.model_dir, step, figures)
                last_saved = step
            state.step += 1
            progress.advance(epoch=state.epoch)
            if interrupted:
                logger.warning(f"interrupted after step {step}; run the same command again to resume")
                return EXIT_INTERRUPTED
            if final:
                logger.info(f"reached max_steps {options.max_steps}")
                return 0
        if dist_info.is_main:
            logger.info(f"epoch {state.epoch} done in {time.time() - started:.1f} s")
        state.epoch += 1
        state.epoch_step = 0
    return 0


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def _agree(dist_info: Dist, device: torch.device, interrupted: bool, nan: bool) -> tuple[bool, bool]:
    """Every rank stops when any rank was interrupted or saw a NaN."""
    if not dist_info.enabled:
        return interrupted, nan
    flags = torch.tensor([float(interrupted), float(nan)], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0]), bool(flags[1])


def _device(options: RunOptions, dist_info: Dist) -> torch.device:
    if options.device == "cpu" or not torch.cuda.is_available():
        if dist_info.enabled:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist_info.world_size))
        return torch.device("cpu")
    torch.cuda.set_device(dist_info.local_rank)
    torch.backends.cudnn.benchmark = True
    return torch.device("cuda", dist_info.local_rank)


# --------------------------------------------------------------------------------------------------------------
# processes


def prepare_model_dir(hps: HParams, model_dir: Path) -> None:
    """Create logs/<model>/, copy the config there as config.json and record the code's git commit in
    `githash` (4.1 does the same; a run resumed with other code gets a warning)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    save_config(hps, model_dir / "config.json")
    record_githash(model_dir / "githash")


def record_githash(path: Path) -> None:
    """Write the repository's HEAD commit to `path`; warn if an earlier run recorded another one."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head = ""
    if not head:
        return
    if path.is_file():
        recorded = path.read_text(encoding="utf-8").strip()
        if recorded != head:
            logger.warning(f"{path.parent} was trained with code at commit {recorded[:10]}, this is {head[:10]}")
        return
    path.write_text(head + "\n", encoding="utf-8")


def launch(hps: HParams, options: RunOptions) -> int:
    """Run training in this process, under torchrun (RANK/WORLD_SIZE set), or spawn one process per GPU /
    per `cpu_processes`. Returns the exit code."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        info = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
        return _run_rank(info, hps.to_dict(), options)
    use_cuda = options.device != "cpu" and torch.cuda.is_available()
    processes = torch.cuda.device_count() if use_cuda else max(1, options.cpu_processes)
    if processes == 1:
        with _log_file(options.model_dir):
            return train(hps, options)
    os.environ.setdefault("MASTER_ADDR", "localhost")
    os.environ.setdefault("MASTER_PORT", str(hps.train.get("port", "8001")))
    logger.info(f"starting {processes} training processes")
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the children handle Ctrl-C and save
    try:
        context = torch.multiprocessing.spawn(_spawned, args=(processes, hps.to_dict(), options), nprocs=processes,
                                              join=False)
        while not context.join():
            pass
    except torch.multiprocessing.ProcessExitedException as error:
        if error.exit_code == EXIT_INTERRUPTED:
            return EXIT_INTERRUPTED
        raise TrainingStopped(f"training process {error.error_index} exited with code {error.exit_code}; "
                              "see the log above") from None
    except torch.multiprocessing.ProcessRaisedException as error:
        raise TrainingStopped(f"training process failed:\n{error}") from None
    finally:
        signal.signal(signal.SIGINT, previous)
    return 0


def _spawned(index: int, world_size: int, config: dict, options: RunOptions) -> None:
    route_logs_through_tqdm()  # a fresh process: loguru has its default handler again
    code = _run_rank(Dist(index, world_size, index), config, options)
    if code:
        sys.exit(code)


def _run_rank(info: Dist, config: dict, options: RunOptions) -> int:
    """One distributed process: join the group, train, leave. SvcErrors end it with one log line, exit 1."""
    use_cuda = options.device != "cpu" and torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo", rank=info.rank, world_size=info.world_size)
    log_file = _log_file(options.model_dir) if info.is_main else contextlib.nullcontext()
    try:
        with log_file:
            return train(HParams(config), options, info)
    except SvcError as error:
        logger.error(f"rank {info.rank}: {error}")
        sys.exit(1)
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def _log_file(model_dir: Path):
    """loguru sink at logs/<model>/train.log for the duration of a run."""
    sink = logger.add(str(model_dir / "train.log"), level="INFO")
    try:
        yield
    finally:
        logger.remove(sink)


# --------------------------------------------------------------------------------------------------------------
# images for TensorBoard (no matplotlib)

# viridis at 5 stops, enough for a readable spectrogram
_COLOURS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)


def spectrogram_image(values: np.ndarray) -> np.ndarray:
    """`[F, T]` → HWC uint8 image, low frequencies at the bottom, min..max mapped through a viridis ramp."""
    values = np.asarray(values, dtype=np.float32)[::-1]
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    position = scaled * (len(_COLOURS) - 1)
    index = np.clip(position.astype(np.int64), 0, len(_COLOURS) - 2)
    frac = (position - index)[..., None]
    rgb = _COLOURS[index] * (1 - frac) + _COLOURS[index + 1] * frac
    return rgb.round().astype(np.uint8)


_LINE_COLOURS = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44]], dtype=np.uint8)


def lines_image(curves: np.ndarray, height: int = 200) -> np.ndarray:
    """`[K, T]` curves drawn over each other on white (one colour each, shared y range) → HWC uint8."""
    curves = np.asarray(curves, dtype=np.float32)
    width = curves.shape[1]
    image = np.full((height, max(width, 1), 3), 255, dtype=np.uint8)
    finite = curves[np.isfinite(curves)]
    if width == 0 or finite.size == 0:
        return image
    low, high = float(finite.min()), float(finite.max())
    span = high - low if high > low else 1.0
    columns = np.arange(width)
    for k, curve in enumerate(curves):
        rows = ((high - np.nan_to_num(curve, nan=low)) / span * (height - 1)).round().astype(np.int64)
        image[np.clip(rows, 0, height - 1), columns] = _LINE_COLOURS[k % len(_LINE_COLOURS)]
    return image
