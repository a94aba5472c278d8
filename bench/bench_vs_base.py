"""HEAD against a base commit (default a072a44, the so-vits-svc 4.1 baseline) on this machine, interleaved.

    .venv/bin/python bench/bench_vs_base.py [--base a072a44] [--rounds 3] [--seconds 60] [--threads 2]
        [--targets convert whole features features2 train quality] [--precision auto] [--train_steps 3]

The base commit is checked out into a temporary `git worktree` (removed afterwards). Every measurement runs
in a fresh subprocess of this script (`--worker`), with the tree under test first on sys.path, and prints
one JSON line with its wall time, CPU time and peak RSS. Base and HEAD alternate (A B A B ...) for `--rounds`
rounds, so slow drifts of a shared machine hit both alike; the table shows medians, min-max and the ratio
base/HEAD (above 1: HEAD is faster).

Targets (the same random default-size files for both trees: the default config, vec768l12, 2 speakers, a
random G_0.pth and a random ContentVec in fairseq's checkpoint layout, built by bench/bench_infer.py):
    convert    Svc.convert of a `--seconds` sung tone (pm), model loaded and warmed up (12 s) beforehand
    whole      inference_main.py as a user runs it on that input, model loading included (HEAD's decoder
               graph cache is filled by one untimed run first, as after a user's first conversion)
    features   preprocess_hubert_f0.py on 16 clips of 5 s, dio, 1 worker (whole process)
    features2  the same with --num_processes 2 (not in the default run)
    train      one training step at batch 2 on the default config (bench/bench_train.py's child, median of
               --train_steps steps after a warm-up; not in the default run: ~30 s a step on 2 cores)
    quality    HEAD only: log-mel distance of each fast precision to fp32 at the same seed, against the fp32
               seed-to-seed distance at noise scale 0.4, and the f0 difference, on recordings from
               ../shared/assets/audio (skipped without them)
HEAD runs conversion with `--precision` (default auto); the base has no such option (fp32).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_AUDIO = REPO.parent / "shared" / "assets" / "audio"
TARGETS = ("convert", "whole", "features", "features2", "train", "quality")
DEFAULT_TARGETS = ("convert", "whole", "features", "quality")  # ~15 min on a quiet 2-core CPU
QUALITY_FILES = ("singing/sms_vignesh.wav", "singing/sms_singing-female.wav", "speech/LJ001-0001.wav")
SR = 44100


# ----- fixtures (built once, with HEAD's code; the file formats are 4.1's) -------------------------------------

def build_fixtures(root: Path, seconds: float) -> None:
    import numpy as np
    import soundfile as sf
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from bench_infer import test_signal, write_contentvec, write_generator

    torch.manual_seed(0)
    model = root / "model"
    (model / "pretrain").mkdir(parents=True)
    write_contentvec(model / "pretrain" / "checkpoint_best_legacy_500.pt")
    write_generator(model / "config.json", model / "G_0.pth", speakers=2)
    (model / "raw").mkdir()
    sf.write(model / "raw" / "input.wav", test_signal(seconds), SR)
    clips = root / "dataset" / "44k"
    signal = test_signal(16 * 5.0 + 16)
    for i in range(16):
        speaker = clips / f"speaker{i % 2}"
        speaker.mkdir(parents=True, exist_ok=True)
        start = int(i * 6.0 * SR)
        sf.write(speaker / f"{i:02d}.wav", np.asarray(signal[start:start + 5 * SR]), SR)
    (root / "configs").mkdir()
    shutil.copy(model / "config.json", root / "configs" / "config.json")
    os.symlink(model / "pretrain", root / "pretrain")


# ----- one measurement (in a subprocess) -----------------------------------------------------------------------

def rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def worker(target: str, tree: Path, fixtures: Path, args: argparse.Namespace) -> dict:
    """Time one `target` with the code of `tree`; returns wall s, cpu s, peak RSS MiB."""
    if target == "convert":
        return measure_convert(tree, fixtures, args)
    if target == "whole":
        command = [sys.executable, str(tree / "inference_main.py"), "-m", "G_0.pth", "-c", "config.json",
                   "-n", "input.wav", "-s", "speaker0", "-d", "cpu", "-wf", "wav",
                   "--results_dir", tempfile.mkdtemp(dir=fixtures)]
        if is_head(tree):
            command += ["--precision", args.precision]
        return measure_process(command, fixtures / "model", tree)
    if target in ("features", "features2"):
        work = Path(tempfile.mkdtemp(dir=fixtures))
        shutil.copytree(fixtures / "dataset", work / "dataset")
        command = [sys.executable, str(tree / "preprocess_hubert_f0.py"), "--in_dir", str(work / "dataset" / "44k"),
                   "--f0_predictor", "dio", "--num_processes", "2" if target == "features2" else "1", "-d", "cpu",
                   "-c", str(fixtures / "configs" / "config.json"), "--pretrain_dir", str(fixtures / "pretrain")]
        if is_head(tree):
            command += ["--precision", "auto"]  # the speech encoder on ONNX Runtime (the default is torch)
        result = measure_process(command, work, tree)
        shutil.rmtree(work, ignore_errors=True)
        return result
    if target == "train":
        command = [sys.executable, str(tree / "bench" / "bench_train.py"), "--steps", str(args.train_steps),
                   "--child", "default", "ours"]
        if is_head(tree):
            command[4:4] = ["--warmup_epochs", "0"]  # the base's rule: only the first step is a warm-up
        out = run_checked(command, tree, tree)
        child = json.loads(out.strip().splitlines()[-1])
        return {"wall": child["median_s"], "cpu": float("nan"), "rss_mb": child["peak_rss_mb"]}
    raise ValueError(target)


def is_head(tree: Path) -> bool:
    return tree.resolve() == REPO


def child_env(tree: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(args_threads()))
    return env


def args_threads() -> int:
    return int(os.environ.get("BENCH_THREADS", "2"))


def run_checked(command: list[str], cwd: Path, tree: Path) -> str:
    result = subprocess.run(command, cwd=cwd, env=child_env(tree), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return result.stdout


def measure_process(command: list[str], cwd: Path, tree: Path) -> dict:
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run_checked(command, cwd, tree)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"wall": time.perf_counter() - start, "cpu": cpu, "rss_mb": rss_mb(resource.RUSAGE_CHILDREN)}


def measure_convert(tree: Path, fixtures: Path, args: argparse.Namespace) -> dict:
    import inspect

    import soundfile as sf
    import torch
    torch.set_num_threads(args.threads)
    from inference.svc import ConversionOptions, Svc

    model = fixtures / "model"
    extra = {"precision": args.precision} if "precision" in inspect.signature(Svc).parameters else {}
    svc = Svc(model / "G_0.pth", model / "config.json", device="cpu", pretrain_dir=model / "pretrain", **extra)
    audio, sr = sf.read(model / "raw" / "input.wav", dtype="float32")
    opts = ConversionOptions(speaker="speaker0", f0_predictor="pm")
    svc.convert(audio[:12 * sr], sr, opts)
    start, start_cpu = time.perf_counter(), time.process_time()
    svc.convert(audio, sr, opts)
    return {"wall": time.perf_counter() - start, "cpu": time.process_time() - start_cpu, "rss_mb": rss_mb(),
            "precision": getattr(svc, "precision", "fp32")}


# ----- quality (HEAD, in a subprocess) -------------------------------------------------------------------------

def measure_quality(fixtures: Path, args: argparse.Namespace) -> dict:
    import numpy as np
    import soundfile as sf
    import torch
    torch.set_num_threads(args.threads)
    from inference.precision import f0_difference_cents, log_mel_distance, native_bf16
    from inference.svc import ConversionOptions, Svc

    model = fixtures / "model"
    precisions = ["onnx", "int8"] + (["bf16"] if native_bf16(torch.device("cpu")) else [])
    svcs = {p: Svc(model / "G_0.pth", model / "config.json", device="cpu", pretrain_dir=model / "pretrain",
                   precision=p) for p in ["fp32", *precisions]}
    rows = {}
    for name in QUALITY_FILES:
        path = SHARED_AUDIO / name
        if not path.is_file():
            continue
        audio, sr = sf.read(path, dtype="float32", frames=int(8 * 48000))
        audio = audio.mean(axis=1) if audio.ndim > 1 else audio
        opts = ConversionOptions(speaker="speaker0")
        exact = svcs["fp32"].convert(audio, sr, opts)
        other_seed = svcs["fp32"].convert(audio, sr, ConversionOptions(speaker="speaker0", seed=1))
        row = {"seed-to-seed": log_mel_distance(exact, other_seed)}
        for p in precisions:
            fast = svcs[p].convert(audio, sr, opts)
            row[p] = log_mel_distance(exact, fast)
            row[p + " f0 cents"] = f0_difference_cents(exact, fast)
        rows[name] = {k: float(np.round(v, 5)) for k, v in row.items()}
    return rows


# ----- the driver ------------------------------------------------------------------------------------------------

def spawn(target: str, tree: Path, fixtures: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", target, "--tree", str(tree), "--fixtures", str(fixtures),
               "--threads", str(args.threads), "--precision", args.precision, "--train_steps", str(args.train_steps)]
    out = run_checked(command, tree, tree)
    return json.loads(out.strip().splitlines()[-1])


def summarise(target: str, runs: dict[str, list[dict]]) -> str:
    def stats(values: list[float]) -> str:
        return f"{statistics.median(values):8.2f} s [{min(values):.2f}-{max(values):.2f}]"

    base = [r["wall"] for r in runs["base"]]
    head = [r["wall"] for r in runs["head"]]
    ratio = statistics.median(base) / statistics.median(head)
    cpu_b = [r["cpu"] for r in runs["base"] if r["cpu"] == r["cpu"]]
    cpu_h = [r["cpu"] for r in runs["head"] if r["cpu"] == r["cpu"]]
    cpu_ratio = f"{statistics.median(cpu_b) / statistics.median(cpu_h):5.2f}x" if cpu_b and cpu_h else "  -  "
    rss = f"{max(r['rss_mb'] for r in runs['base']):6.0f} / {max(r['rss_mb'] for r in runs['head']):6.0f} MiB"
    return f"{target:<10} base {stats(base)}  head {stats(head)}  wall {ratio:5.2f}x  cpu {cpu_ratio}  RSS {rss}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="a072a44", help="base commit (default a072a44, the 4.1 baseline)")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds per target (default 3)")
    parser.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS), choices=TARGETS,
                        help=f"what to measure (default: {' '.join(DEFAULT_TARGETS)}; all: {' '.join(TARGETS)})")
    parser.add_argument("--seconds", type=float, default=60.0, help="conversion input length (default 60)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--precision", default="auto", help="HEAD's --precision (default auto)")
    parser.add_argument("--train_steps", type=int, default=3, help="timed training steps per run (default 3)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--fixtures", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["BENCH_THREADS"] = str(args.threads)
    if args.worker:
        sys.path.insert(0, str(args.tree))
        result = measure_quality(args.fixtures, args) if args.worker == "quality" else \
            worker(args.worker, args.tree, args.fixtures, args)
        print(json.dumps(result))
        return
    run_bench(args)


def run_bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_vs_base_") as folder:
        root = Path(folder)
        base_tree = root / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.base], cwd=REPO, check=True,
                       capture_output=True)
        os.environ.setdefault("SVC_CACHE_DIR", str(root / "cache"))
        try:
            fixtures = root / "fixtures"
            build_fixtures(fixtures, args.seconds)
            print(f"base {args.base} vs HEAD, {args.rounds} rounds, {args.threads} threads, HEAD precision "
                  f"{args.precision}, input {args.seconds:g} s", flush=True)
            trees = {"base": base_tree, "head": REPO}
            if {"convert", "whole", "features", "features2"} & set(args.targets):
                spawn("whole", REPO, fixtures, args)  # fills HEAD's encoder and decoder graph cache (once per model)
            for target in [t for t in args.targets if t != "quality"]:
                runs: dict[str, list[dict]] = {"base": [], "head": []}
                for _ in range(args.rounds):
                    for name, tree in trees.items():
                        runs[name].append(spawn(target, tree, fixtures, args))
                        run = runs[name][-1]
                        print(f"  {target} {name}: {run['wall']:.2f} s wall, {run['cpu']:.2f} s cpu, "
                              f"{run['rss_mb']:.0f} MiB", flush=True)
                print(summarise(target, runs), flush=True)
            if "quality" in args.targets:
                print_quality(spawn("quality", REPO, fixtures, args))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=REPO, capture_output=True)


def print_quality(rows: dict) -> None:
    if not rows:
        print("quality: no recordings found under ../shared/assets/audio (skipped)")
        return
    print("quality (log-mel distance to fp32 at the same seed; bound: the fp32 seed-to-seed distance at 0.4):")
    for name, row in rows.items():
        cells = "  ".join(f"{k} {v:.4f}" for k, v in row.items())
        print(f"  {name:<34} {cells}")


if __name__ == "__main__":
    main()
