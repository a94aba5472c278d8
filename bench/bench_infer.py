"""Conversion speed of the whole inference path (inference/svc.Svc.convert) on a long input.

Builds real-size models with random weights in a temporary folder, in the same file formats a user has:
the default So-VITS config (configs_template/config_template.json: vec768l12, 768-d, here 2 speakers) with a
random `G_0.pth`, a random real-size ContentVec checkpoint in fairseq's layout
(`pretrain/checkpoint_best_legacy_500.pt`) and a random real-size `pretrain/rmvpe.pt`. Then it converts a
generated harmonic tone with silences through `Svc.convert` and prints the real-time factor (wall seconds
per second of audio; model loading excluded) and where the time goes:

    encoder    the speech encoder (ContentVec, 16 kHz input)
    f0         the f0 predictor's compute_f0_uv (rmvpe includes its own resampling to 16 kHz)
    synthesis  net_g.infer (prior encoder, flow, NSF-HiFiGAN); its part "body" is the decoder after its
               harmonic source (ONNX Runtime with --precision onnx/int8/auto)
    resample   Svc's resampling (input -> 44.1 kHz, each slice -> 16 kHz for the encoder)
    other      the rest: slicing, padding, unit alignment, tensor conversions, concatenation

Each predictor is run `--repeat` times after one warm-up conversion; the table shows medians. Random
weights make the audio meaningless but the amount of work identical to a trained model.

Usage: .venv/bin/python bench/bench_infer.py [--seconds 60] [--threads N] [--f0 pm rmvpe] [--repeat 3]
                                             [--precision auto]
"""
from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import inference.svc as svc_module  # noqa: E402
from inference.svc import ConversionOptions, Svc  # noqa: E402
from core.config import load_template, save_config  # noqa: E402
from core.errors import run_cli  # noqa: E402

SR = 44100
STAGES = ("encoder", "f0", "synthesis", "resample", "other")  # "body" (the decoder body) is part of synthesis

# our Wav2Vec2Model key -> fairseq HuBERT key (the inverse of vencoder.hubert.FAIRSEQ_RENAMES for ContentVec)
TO_FAIRSEQ: tuple[tuple[str, str], ...] = (
    ("feature_extractor.convs.{i}.conv.", "feature_extractor.conv_layers.{i}.0."),
    ("feature_extractor.convs.{i}.norm.", "feature_extractor.conv_layers.{i}.2."),
    ("feature_norm.", "layer_norm."),
    ("feature_proj.", "post_extract_proj."),
    ("pos_conv.", "encoder.pos_conv.0."),
    ("encoder_norm.", "encoder.layer_norm."),
    ("layers.{i}.attention.", "encoder.layers.{i}.self_attn."),
    ("layers.{i}.attention_norm.", "encoder.layers.{i}.self_attn_layer_norm."),
    ("layers.{i}.ffn.", "encoder.layers.{i}."),
    ("layers.{i}.ffn_norm.", "encoder.layers.{i}.final_layer_norm."),
    ("final_proj.", "final_proj."),
)
CONTENTVEC_CFG = {"_name": "hubert", "extractor_mode": "default", "encoder_layers": 12, "encoder_embed_dim": 768,
                  "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12, "activation_fn": "gelu",
                  "layer_type": "transformer", "final_dim": 256, "layer_norm_first": False,
                  "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2", "conv_bias": False,
                  "conv_pos": 128, "conv_pos_groups": 16, "conv_pos_batch_norm": False}


# ----- random real-size model files -----------------------------------------------------------------------

def fairseq_key(key: str) -> str:
    """Map one of our ContentVec keys to fairseq's name (the longest matching rule wins)."""
    parts = key.split(".")
    index = next((p for p in parts if p.isdigit()), None)
    best = None
    for ours, theirs in TO_FAIRSEQ:
        prefix = ours.format(i=index)
        if key.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, theirs.format(i=index))
    if best is None:
        raise KeyError(key)
    return best[1] + key[len(best[0]):]


def write_contentvec(path: Path) -> None:
    """A random-weight ContentVec (HuBERT base, 768-d, final_proj 256) saved as a fairseq checkpoint."""
    from vencoder.hubert import fairseq_dims
    from vencoder.wav2vec2 import Wav2Vec2Model
    dims = fairseq_dims(CONTENTVEC_CFG, {"final_proj.weight": torch.empty(256, 768)})
    state = {fairseq_key(k): v for k, v in Wav2Vec2Model(dims).state_dict().items()}
    state["mask_emb"] = torch.zeros(768)
    state["label_embs_concat"] = torch.zeros(504, 256)
    torch.save({"args": None, "cfg": {"model": CONTENTVEC_CFG}, "model": state}, path)


def write_rmvpe(path: Path) -> None:
    from f0_predictor.rmvpe import E2E0
    torch.save({"model": E2E0().state_dict()}, path)


def write_generator(config_path: Path, model_path: Path, speakers: int) -> None:
    from models import SynthesizerTrn
    config = load_template("config_template.json")
    config.spk = {f"speaker{i}": i for i in range(speakers)}
    config.model.n_speakers = speakers
    save_config(config, config_path)
    model = SynthesizerTrn.from_config(config)
    torch.save({"model": model.state_dict(), "iteration": 0, "optimizer": None, "learning_rate": 1e-4},
               model_path)


def build_svc(root: Path, precision: str = "fp32") -> Svc:
    torch.manual_seed(0)
    pretrain = root / "pretrain"
    pretrain.mkdir()
    write_contentvec(pretrain / "checkpoint_best_legacy_500.pt")
    write_rmvpe(pretrain / "rmvpe.pt")
    write_generator(root / "config.json", root / "G_0.pth", speakers=2)
    return Svc(root / "G_0.pth", root / "config.json", device="cpu", pretrain_dir=pretrain, precision=precision)


# ----- input -----------------------------------------------------------------------------------------------

def test_signal(seconds: float, sr: int = SR) -> np.ndarray:
    """A sung-like tone: 9 s phrases (5 harmonics, slow pitch glide, vibrato) separated by 1 s silences."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 220 * 2 ** ((np.sin(2 * np.pi * t / 7) * 5 + np.sin(2 * np.pi * 5.5 * t) * 0.3) / 12)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wave = sum(np.sin(k * phase) / k for k in range(1, 6))
    voiced = (t % 10) < 9
    return (0.3 * wave / np.abs(wave).max() * voiced).astype(np.float32)


# ----- timing ----------------------------------------------------------------------------------------------

def timed(function: Callable, totals: dict[str, float], stage: str) -> Callable:
    """Add each call's wall time to totals[stage] and its process CPU time to totals[stage + ' cpu']."""
    def wrapper(*args, **kwargs):
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            totals[stage] += time.perf_counter() - start
            totals[stage + " cpu"] += time.process_time() - start_cpu
    return wrapper


class TimedEncoder:
    """Stands in for `svc.encoder`, adding its call time to `totals['encoder']`."""

    def __init__(self, encoder, totals: dict[str, float]):
        self.encoder = encoder
        self.call = timed(encoder, totals, "encoder")

    def __call__(self, wav16k: torch.Tensor) -> torch.Tensor:
        return self.call(wav16k)


@contextlib.contextmanager
def stage_timers(svc: Svc, predictor_name: str, opts: ConversionOptions) -> Iterator[dict[str, float]]:
    """Wrap the encoder, the f0 predictor, net_g.infer and Svc's resampler with timers (restored after)."""
    totals: dict[str, float] = defaultdict(float)
    predictor = svc.f0_predictor(predictor_name, opts.f0_filter_threshold)
    encoder, resample = svc.encoder, svc_module.resample
    svc.encoder = TimedEncoder(encoder, totals)
    predictor.compute_f0_uv = timed(type(predictor).compute_f0_uv.__get__(predictor), totals, "f0")
    svc.net_g.infer = timed(type(svc.net_g).infer.__get__(svc.net_g), totals, "synthesis")
    decoder = svc.net_g.dec
    fast_body = decoder.fast_body
    decoder.fast_body = timed(fast_body or decoder.body, totals, "body")
    svc_module.resample = timed(resample, totals, "resample")
    try:
        yield totals
    finally:
        svc.encoder, svc_module.resample, decoder.fast_body = encoder, resample, fast_body
        del predictor.compute_f0_uv, svc.net_g.infer


def run_once(svc: Svc, audio: np.ndarray, opts: ConversionOptions) -> dict[str, float]:
    with stage_timers(svc, opts.f0_predictor, opts) as totals:
        out = timed(svc.convert, totals, "total")(audio, SR, opts)
    if len(out) != len(audio) or not np.isfinite(out).all():
        raise RuntimeError("conversion produced wrong-length or non-finite audio")
    result = dict(totals)
    for suffix in ("", " cpu"):
        result["other" + suffix] = result["total" + suffix] - sum(result.get(s + suffix, 0.0) for s in STAGES[:-1])
    return result


def bench_predictor(svc: Svc, audio: np.ndarray, predictor: str, repeat: int) -> dict[str, float]:
    opts = ConversionOptions(speaker="speaker0", f0_predictor=predictor)
    run_once(svc, audio[:SR * 12], opts)  # warm-up: builds the predictor, first-call allocations
    runs = [run_once(svc, audio, opts) for _ in range(repeat)]
    keys = [stage + suffix for stage in (*STAGES, "body", "total") for suffix in ("", " cpu")]
    return {key: statistics.median(run.get(key, 0.0) for run in runs) for key in keys} | {
        "spread": max(r["total"] for r in runs) - min(r["total"] for r in runs)}


def print_table(seconds: float, results: dict[str, dict[str, float]]) -> None:
    columns = (*STAGES, "body", "total")
    header = f"{'f0':<7}{'clock':<6}" + "".join(f"{s:>11}" for s in columns) + f"{'RTF':>8}{'spread':>9}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        for clock, suffix in (("wall", ""), ("cpu", " cpu")):
            cells = "".join(f"{r[s + suffix]:>10.2f}s" for s in columns)
            spread = f"{r['spread']:>8.2f}s" if clock == "wall" else ""
            print(f"{name:<7}{clock:<6}{cells}{r['total' + suffix] / seconds:>8.3f}{spread}")
    print("seconds, median over repeats. wall: elapsed time; cpu: process CPU time (all threads), less\n"
          "sensitive to other load on the machine. RTF = seconds per second of audio; spread = max - min wall total.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="input length (default 60)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--f0", nargs="+", default=["pm", "rmvpe"], help="f0 predictors to time (pm rmvpe)")
    parser.add_argument("--repeat", type=int, default=3, help="timed conversions per predictor (median)")
    parser.add_argument("--precision", default="fp32", help="Svc precision: fp32, onnx, int8, auto, bf16")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    audio = test_signal(args.seconds)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        svc = build_svc(Path(folder), args.precision)
        print(f"models built and loaded in {time.perf_counter() - start:.1f} s (not counted); torch "
              f"{torch.__version__}, {torch.get_num_threads()} threads; input {args.seconds:g} s at {SR} Hz")
        results = {name: bench_predictor(svc, audio, name, args.repeat) for name in args.f0}
    print_table(args.seconds, results)
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    run_cli(main)
