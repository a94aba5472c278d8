"""Training-step time and peak memory on CPU at batch 2, for the default and tiny configs, on generated data.

    .venv/bin/python bench/bench_train.py [--steps 4] [--warmup_epochs 1] [--configs default tiny]

Each (config, loop) pair runs in its own process, so its peak RSS is its own. The data are 8 generated clips
of 2–8 s (real datasets vary in length too). "ours" is `training.loop.train_step` with our length-bucketed
batches; "4.1-loop" re-enacts 4.1's step with the same generator: batches in one random order, the same every
epoch (4.1's DataLoader does not shuffle), without bucketing, the full-batch mel, the discriminator run
separately on real and generated audio with 2-D period convs, the generator pass through the discriminator with its weight gradients on, and AdamW stepping one parameter
at a time (ours runs it as one fused kernel). Data loading (DataLoader, num_workers 0) is inside the timed step;
checkpointing is not. The first `--warmup_epochs` epochs (4 steps each) are not timed: a long run sees each
batch shape many times, and the first step of a shape costs more (new convolution kernels, memory the process
has not touched yet: on the 2-core test VM a step that meets new shapes took 8-10 s, the same step again 5-7 s),
so the timed steps are those of a run that has warmed up, as in the hours of a real training. With
`--warmup_epochs 0` only the first step is left out (this script's earlier rule, which bench_vs_base.py keeps so
that both trees are timed alike).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = {"default": "config_template.json", "tiny": "config_tiny_template.json"}
CLIP_SECONDS = (2.0, 7.0, 3.0, 8.0, 4.0, 5.0, 2.5, 6.0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run (after the warm-up epochs)")
    parser.add_argument("--warmup_epochs", type=int, default=1, help="untimed epochs first (4 steps each)")
    parser.add_argument("--configs", nargs="+", default=list(TEMPLATES), choices=list(TEMPLATES))
    parser.add_argument("--loops", nargs="+", default=["ours", "4.1-loop"], choices=["ours", "4.1-loop"])
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "LOOP"), help=argparse.SUPPRESS)
    return parser.parse_args()


def reference_step(state, batch, hps) -> None:
    """4.1's order of work for one step (spec §10.3), with the same generator and discriminator weights."""
    import torch

    from core import dsp
    from modules import losses
    from training.loop import grad_norm, slice_frames

    data, train = hps.data, hps.train
    hop, frames = data.hop_length, train.segment_size // data.hop_length
    mel_args = dict(sr=data.sampling_rate, n_fft=data.filter_length, n_mels=data.n_mel_channels,
                    fmin=data.mel_fmin, fmax=data.mel_fmax)
    mel = dsp.spec_to_mel(batch.spec, **mel_args)
    y_hat, ids, z_mask, (z, z_p, m_p, logs_p, m_q, logs_q), pred_lf0, norm_lf0, lf0 = state.net_g(
        batch.units, batch.f0, batch.uv, batch.spec, g=batch.speakers, c_lengths=batch.lengths,
        spec_lengths=batch.lengths, vol=batch.volume)
    y_mel = slice_frames(mel, ids, frames)
    y_hat_mel = dsp.mel_spectrogram(y_hat.squeeze(1), hop_length=hop, win_length=data.win_length, **mel_args)
    y = slice_frames(batch.audio, ids * hop, train.segment_size)
    real, fake, _, _ = _mpd_41(state.net_d, y, y_hat.detach())
    loss_d, _, _ = losses.discriminator_loss(real, fake)
    state.optim_d.zero_grad()
    loss_d.backward()
    grad_norm(state.net_d.parameters())
    state.optim_d.step()
    real, fake, fmap_r, fmap_g = _mpd_41(state.net_d, y, y_hat)
    loss_g = (losses.mel_loss(y_mel, y_hat_mel) * train.c_mel + losses.kl_loss(z_p, logs_q, m_p, logs_p, z_mask)
              * train.c_kl + losses.feature_loss(fmap_r, fmap_g) + losses.generator_loss(fake)[0]
              + losses.f0_loss(pred_lf0, lf0))
    state.optim_g.zero_grad()
    loss_g.backward()
    grad_norm(state.net_g.parameters())
    state.optim_g.step()
    torch.stack([loss_d, loss_g]).tolist()


def _mpd_41(mpd, real, fake):
    from modules.discriminator import period_forward_2d

    outs = [[], [], [], []]
    for disc in mpd.discriminators:
        for signal, logits_out, fmaps_out in ((real, outs[0], outs[2]), (fake, outs[1], outs[3])):
            logits, fmaps = disc(signal) if not hasattr(disc, "period") else period_forward_2d(disc, signal)
            logits_out.append(logits)
            fmaps_out.append(fmaps)
    return outs


def run_child(config_name: str, loop: str, steps: int, warmup_epochs: int) -> dict:
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler

    from training.dataset import collate

    from core.config import load_template
    from tests.synthetic import write_synthetic_dataset
    from training.loop import Dist, RunOptions, build_generator, build_state, make_loaders, train_step

    with tempfile.TemporaryDirectory() as tmp:
        hps = load_template(TEMPLATES[config_name])
        paths = []
        for i, seconds in enumerate(CLIP_SECONDS):
            paths += write_synthetic_dataset(Path(tmp) / f"part{i}", ["ab"[i % 2]], items_per_speaker=1,
                                             seconds=seconds, ssl_dim=hps.model.ssl_dim, seed=i)
        (Path(tmp) / "list.txt").write_text("\n".join(paths) + "\n")
        hps.data.training_files = hps.data.validation_files = str(Path(tmp) / "list.txt")
        hps.train.batch_size = 2
        hps.spk = {"a": 0, "b": 1}
        torch.manual_seed(0)
        state = build_state(hps, torch.device("cpu"), build_generator)
        if loop != "ours":  # 4.1 steps AdamW one parameter at a time
            for optimizer in (state.optim_g, state.optim_d):
                for group in optimizer.param_groups:
                    group["fused"] = None
        loader, sampler, _ = make_loaders(hps, Dist(), RunOptions(model_dir=Path(tmp), num_workers=0),
                                          torch.device("cpu"))
        if loop != "ours":  # 4.1: one random order for every epoch, batches padded to their longest item
            order = list(BatchSampler(RandomSampler(loader.dataset, generator=torch.Generator().manual_seed(1234)),
                                      2, drop_last=False))
            loader = DataLoader(loader.dataset, batch_sampler=order, collate_fn=collate, num_workers=0)
        times = []
        epoch = step = 0
        while len(times) < steps:
            epoch += 1
            sampler.set_epoch(epoch)  # (unused by the 4.1 loader)
            batches = iter(loader)
            while len(times) < steps:
                start = time.perf_counter()
                batch = next(batches, None)  # data loading is timed too
                if batch is None:
                    break
                step += 1
                torch.manual_seed(step)
                if loop == "ours":
                    train_step(state, batch, hps)
                else:
                    reference_step(state, batch, hps)
                if (epoch > warmup_epochs) if warmup_epochs else step > 1:
                    times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"config": config_name, "loop": loop, "median_s": statistics.median(times), "peak_rss_mb": peak_mb,
            "threads": torch.get_num_threads()}


def main() -> None:
    args = parse_args()
    if args.child:
        print(json.dumps(run_child(*args.child, args.steps, args.warmup_epochs)))
        return
    results = []
    for config_name in args.configs:
        for loop in args.loops:
            command = [sys.executable, __file__, "--steps", str(args.steps), "--warmup_epochs",
                       str(args.warmup_epochs), "--child", config_name, loop]
            out = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                                 env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                raise SystemExit(f"{config_name}/{loop} failed")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(f"{r['config']:8s} {r['loop']:9s} median step {r['median_s']:7.3f} s   "
                  f"peak RSS {r['peak_rss_mb']:7.0f} MB   ({r['threads']} threads)", flush=True)
    for config_name in args.configs:
        by_loop = {r["loop"]: r for r in results if r["config"] == config_name}
        if {"ours", "4.1-loop"} <= set(by_loop):
            speedup = by_loop["4.1-loop"]["median_s"] / by_loop["ours"]["median_s"]
            print(f"{config_name}: ours is {speedup:.2f}x the speed of the 4.1 loop")


if __name__ == "__main__":
    main()
