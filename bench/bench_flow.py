"""Rectified flow against DDPM for shallow diffusion: mel distance to the ground truth of held-out clips, and time.

Steps (each skipped when its output exists, so a rerun only evaluates):
1. cut every wav of --audio_dir into 2 s clips under <work>/dataset/44k/singer/, holding out every 5th clip;
2. write their features with the project's preprocessing (preprocess.features, --use_diff kinds, f0 by pm,
   units from the ContentVec checkpoint in --pretrain_dir);
3. train one small Unit2Mel per objective (ddpm, rectified_flow) for the same --steps with the same seed;
4. for each held-out clip, start from a stand-in for the So-VITS mel (the ground-truth mel blurred across
   frequency and time: what an over-smoothed So-VITS output looks like) and run the shallow stage at k_step 100:
   DDPM ancestral sampling (100 model calls, 4.1's plain DDPM), DPM-Solver++ at speedup 10 (4.1's config
   default), and the flow with Euler at 2, 4, 8, 16 steps (and RK4 at 2, 4). The samplers run interleaved
   clip by clip, so load from other processes spreads over all of them.

Prints a Markdown table: mean L1 distance of the log-mel to the ground truth, model calls, seconds per second
of audio, and speed relative to DDPM-100. Run:
    .venv/bin/python bench/bench_flow.py --steps 3000
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.audio import load_audio, write_audio  # noqa: E402
from core.config import load_template  # noqa: E402
from diffusion import Unit2Mel, load_model  # noqa: E402
from diffusion.dataset import load_clip  # noqa: E402
from diffusion.trainer import train  # noqa: E402
from preprocess.features import FeatureSettings, run_batch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SR, HOP, CLIP_SECONDS, HOLD_OUT_EVERY = 44100, 512, 2.0, 5
SMALL_MODEL = {"n_layers": 4, "n_chans": 128, "n_hidden": 128, "timesteps": 1000, "k_step_max": 0, "n_spk": 1,
               "use_pitch_aug": False}


@dataclass(frozen=True)
class Sampler:
    label: str
    objective: str
    method: str | None
    speedup: int = 1
    steps: int = 1

    @property
    def calls(self) -> int:
        if self.objective == "ddpm":
            return 100 // self.speedup
        return self.steps * (4 if self.method == "rk4" else 1)


SAMPLERS = [Sampler("DDPM, 100 steps", "ddpm", None), Sampler("DPM-Solver++, speedup 10", "ddpm", "dpm-solver++", 10)]
SAMPLERS += [Sampler(f"flow, Euler {n}", "rectified_flow", "euler", steps=n) for n in (2, 4, 8, 16)]
SAMPLERS += [Sampler(f"flow, RK4 {n}", "rectified_flow", "rk4", steps=n) for n in (2, 4)]


def cut_clips(audio_dir: Path, dataset: Path) -> tuple[list[str], list[str]]:
    """2 s clips of every wav in audio_dir -> (training wavs, held-out wavs)."""
    train_wavs, held_out = [], []
    for source in sorted(audio_dir.glob("*.wav")):
        audio, _ = load_audio(source, sr=SR)
        length = int(CLIP_SECONDS * SR)
        for i in range(max(1, len(audio) // length)):
            clip = audio[i * length:(i + 1) * length]
            if np.abs(clip).max() < 1e-3:
                continue
            path = dataset / "singer" / f"{source.stem}_{i:03d}.wav"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                write_audio(path, clip, SR)
            (held_out if (i + 1) % HOLD_OUT_EVERY == 0 else train_wavs).append(str(path))
    return train_wavs, held_out


def extract_features(dataset: Path, pretrain_dir: Path) -> None:
    vocoder_config = REPO.parent / "shared" / "spec" / "fixtures" / "nsf_hifigan" / "config.json"
    settings = FeatureSettings(speech_encoder="vec768l12", f0_predictor="pm", write_volume=True, use_diff=True,
                               pretrain_dir=str(pretrain_dir),
                               vocoder_config=str(vocoder_config) if vocoder_config.is_file() else None)
    result = run_batch(dataset, settings, num_processes=1, device="cpu")
    if result.failed:
        raise SystemExit(f"feature extraction failed for {result.failed}")


def train_objective(work: Path, objective: str, train_list: Path, val_list: Path, units_dim: int, steps: int) -> Path:
    config = load_template("diffusion_template.yaml")
    config.model.update({**SMALL_MODEL, "objective": objective})
    config.data.update({"encoder_out_channels": units_dim, "duration": 0.5, "training_files": str(train_list),
                        "validation_files": str(val_list)})
    config.device, config.vocoder.ckpt = "cpu", str(work / "no_vocoder" / "model")
    config.env.expdir = str(work / objective)
    config.spk = {"singer": 0}
    config.train.update({"num_workers": 0, "batch_size": 4, "cache_fp16": False, "interval_log": 100,
                         "interval_val": steps, "interval_force_save": 0, "lr": 1e-3, "decay_step": 100000})
    torch.manual_seed(0)
    started = time.perf_counter()
    train(config, max_steps=steps)
    print(f"{objective}: {steps} steps in {time.perf_counter() - started:.0f} s")
    return work / objective / f"model_{steps}.pt"


def so_vits_stand_in(mel: torch.Tensor) -> torch.Tensor:
    """The ground-truth mel [T, M] blurred across frequency (5 bins) and time (3 frames)."""
    kernel_f = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    kernel_t = torch.tensor([1.0, 2.0, 1.0]) / 4.0
    x = torch.nn.functional.pad(mel.T[:, None], (1, 1), mode="replicate")  # [M, 1, T + 2]
    x = torch.nn.functional.conv1d(x, kernel_t.view(1, 1, 3))[:, 0].T      # [T, M]
    x = torch.nn.functional.pad(x[:, None], (2, 2), mode="replicate")       # [T, 1, M + 4]
    return torch.nn.functional.conv1d(x, kernel_f.view(1, 1, 5))[:, 0]


def evaluate(models: dict[str, Unit2Mel], held_out: list[str]) -> dict[str, tuple[float, float]]:
    """Sampler label -> (mean L1 log-mel distance, seconds per second of audio); plus the stand-in's distance."""
    distance = {s.label: [] for s in SAMPLERS}
    seconds = {s.label: 0.0 for s in SAMPLERS}
    stand_in_distance, audio_seconds = [], 0.0
    for wav in held_out:
        clip = load_clip(wav, "nearest")
        units, f0, volume = clip.units[None], clip.f0[None, :, None], clip.volume[None, :, None]
        start_mel = so_vits_stand_in(clip.mel)[None]
        stand_in_distance.append(float((start_mel[0] - clip.mel).abs().mean()))
        audio_seconds += clip.n_frames * HOP / SR
        for sampler in SAMPLERS:
            started = time.perf_counter()
            mel = models[sampler.objective].infer(units, f0, volume, gt_spec=start_mel, k_step=100,
                                                  method=sampler.method, speedup=sampler.speedup,
                                                  steps=sampler.steps, generator=torch.Generator().manual_seed(0))
            seconds[sampler.label] += time.perf_counter() - started
            distance[sampler.label].append(float((mel[0] - clip.mel).abs().mean()))
    results = {label: (float(np.mean(d)), seconds[label] / audio_seconds) for label, d in distance.items()}
    results["So-VITS stand-in (no diffusion)"] = (float(np.mean(stand_in_distance)), 0.0)
    return results


def print_table(results: dict[str, tuple[float, float]]) -> None:
    reference = results[SAMPLERS[0].label][1]
    calls = {s.label: str(s.calls) for s in SAMPLERS}
    print("| sampler | model calls | mel L1 to ground truth | s per s of audio | speed vs DDPM 100 |")
    print("|---|---|---|---|---|")
    for label, (dist, secs) in results.items():
        speed = f"{reference / secs:.1f}x" if secs > 0 else "-"
        print(f"| {label} | {calls.get(label, '0')} | {dist:.3f} | {secs:.3f} | {speed} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio_dir", type=Path, default=REPO.parent / "shared" / "assets" / "audio" / "singing")
    parser.add_argument("--pretrain_dir", type=Path, default=REPO.parent / "shared" / "spec" / "fixtures" / "contentvec",
                        help="folder with checkpoint_best_legacy_500.pt (default: the tiny test ContentVec)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "svc_bench_flow",
                        help="folder for the clips, features and models")
    parser.add_argument("--steps", type=int, default=3000, help="training steps of each objective")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fresh", action="store_true", help="delete --work first")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.fresh and args.work.exists():
        shutil.rmtree(args.work)
    dataset = args.work / "dataset" / "44k"
    train_wavs, held_out = cut_clips(args.audio_dir, dataset)
    extract_features(dataset, args.pretrain_dir)
    lists = {name: args.work / f"{name}.txt" for name in ("train", "val")}
    lists["train"].write_text("\n".join(train_wavs) + "\n")
    lists["val"].write_text("\n".join(held_out[:2]) + "\n")
    units_dim = load_clip(train_wavs[0], "nearest").units.shape[1]
    print(f"{len(train_wavs)} training clips, {len(held_out)} held-out clips, {units_dim}-dim units")
    models = {}
    for objective in ("ddpm", "rectified_flow"):
        path = args.work / objective / f"model_{args.steps}.pt"
        if not path.exists():
            path = train_objective(args.work, objective, lists["train"], lists["val"], units_dim, args.steps)
        models[objective] = load_model(path, device="cpu")[0]
    print_table(evaluate(models, held_out))


if __name__ == "__main__":
    main()
