"""Run the pipeline on the bundled sample audio (samples/, see samples/CREDITS.md) in a work folder.

Each step runs one of the toolkit's scripts the way a user would (a subprocess, from inside the work
folder, with the scripts' default paths) and prints where its output went and how long it took. Steps
skip work that is already done, so running the demo again is quick. The last step measures the results with
evaluate.py (pitch against the source, similarity to the target voice, DC offset, sound in pauses, how much
feature retrieval changes the result), says what each figure means and flags artefacts.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from loguru import logger

from core.download import MIRROR_ENV, ChecksumError, DownloadError, download, mirror_url
from core.errors import SvcError, run_cli
from core.fileio import atomic_path, torch_save
from core.pretrained import DirectDownload, direct_download
from core.registry import ENCODER_RECORDS

REPO = Path(__file__).resolve().parent
SAMPLES = REPO / "samples" / "dataset_raw"
SHARED = REPO.parent / "shared"


@dataclass(frozen=True)
class Conversion:
    """One song of the samples converted into the other speaker's voice."""

    song: Path
    speaker: str
    retrieval: bool = False  # also blend in the target's own features (feature retrieval, -fr -cr 0.5)

    def result_name(self, step: int) -> str:
        """inference_main.py's name for this conversion with the model `G_<step>.pth`."""
        ratio, retrieval = ("_0.5", "_fr") if self.retrieval else ("", "")
        return f"{self.song.name}_0key_{self.speaker}{ratio}_sovits_pm{retrieval}_step{step}.flac"


CONVERSIONS = (
    Conversion(SAMPLES / "vocadito" / "vocadito_14.wav", "sms_tools"),
    Conversion(SAMPLES / "sms_tools" / "sms_singing_female.wav", "vocadito"),
    Conversion(SAMPLES / "sms_tools" / "sms_singing_female.wav", "vocadito", retrieval=True),
)

# The demo's training recipe. Trained from scratch, a So-VITS decoder first learns a cheap imitation of any
# voice: a buzz repeating every hop (86 Hz at 44.1 kHz with hop 512). With 4.1's 2048-point mel loss that
# buzz's harmonics are as far apart as the window's resolution, so the loss sees it as a smooth spectrum much
# like singing, and a few hundred steps at 4.1's learning rate leave the output at 86 Hz whatever the song.
# A 4096-point STFT and 160 mel bands below 8 kHz resolve both the buzz and a voice's harmonics, so the
# loss can only fall by following the f0 excitation; with a 10x learning rate the melody then comes through
# within ~100 steps. A narrower model and 2 s clips make each step ~1 s on two CPU cores. All of it is
# ordinary config, so the result is a normal So-VITS model.
DEMO_CONFIG = {
    "train": dict(batch_size=8, segment_size=8192, learning_rate=1e-3, all_in_mem=True, log_interval=50,
                  eval_interval=100, keep_ckpts=2),
    "data": dict(filter_length=4096, win_length=4096, n_mel_channels=160, mel_fmax=8000),
    "model": dict(hidden_channels=96, inter_channels=96, filter_channels=256, n_layers=3,
                  upsample_initial_channel=128, discriminator_width_divisor=4, use_automatic_f0_prediction=False),
}
CLIP_SECONDS = 2


@dataclass(frozen=True)
class Demo:
    work: Path        # every step reads and writes below this folder
    train_steps: int  # generator steps of the short CPU training

    def run(self, script: str, *args: str) -> None:
        """Run a top-level script of this repo with this interpreter, from the work folder."""
        command = [sys.executable, str(REPO / script), *args]
        print(f"  $ {' '.join([Path(sys.executable).name, script, *args])}", flush=True)
        result = subprocess.run(command, cwd=self.work)
        if result.returncode != 0:
            raise SvcError(f"{script} failed (exit {result.returncode}); see its messages above")


def copy_samples(demo: Demo) -> str:
    target = demo.work / "dataset_raw"
    for source in sorted(SAMPLES.rglob("*.wav")):
        destination = target / source.relative_to(SAMPLES)
        if not destination.exists():
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    return str(target)


def slice_recordings(demo: Demo) -> str:
    demo.run("slice_audio.py", "--in_dir", "dataset_raw", "--out_dir", "dataset_raw_sliced",
             "--max_clip", str(CLIP_SECONDS), "--num_processes", "1")
    return str(demo.work / "dataset_raw_sliced")


def resample_dataset(demo: Demo) -> str:
    demo.run("resample.py", "--in_dir", "dataset_raw_sliced", "--num_processes", "1")
    return str(demo.work / "dataset" / "44k")


def speech_encoder(demo: Demo) -> str:
    _, _, source = resolve_demo_encoder(demo.work / "pretrain", shared_dir=SHARED)
    return source


def make_filelists_and_configs(demo: Demo) -> str:
    demo.run("preprocess_flist_config.py", "--tiny", "--speech_encoder", "whisper-ppg-base")
    config_path = demo.work / "configs" / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for section, values in DEMO_CONFIG.items():
        config[section].update(values)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return f"{demo.work / 'filelists'} and {config_path}"


def extract_features(demo: Demo) -> str:
    demo.run("preprocess_hubert_f0.py", "--f0_predictor", "pm", "--num_processes", "1", "-d", "cpu")
    return str(demo.work / "dataset" / "44k") + " (.soft.pt, .f0.npy, .spec.pt next to each wav)"


def train_model(demo: Demo) -> str:
    demo.run("train.py", "-c", "configs/config.json", "-m", "44k", "--max_steps", str(demo.train_steps), "--cpu")
    return str(latest_generator(demo))


def train_cluster_and_index(demo: Demo) -> str:
    demo.run("train_cluster.py", "--n_clusters", "100")
    demo.run("train_index.py", "-c", "configs/config.json")
    return f"{demo.work / 'logs' / '44k' / 'kmeans_100.pt'} and {demo.work / 'logs' / '44k' / 'feature_and_index.pkl'}"


def convert_songs(demo: Demo) -> str:
    raw = demo.work / "raw"
    raw.mkdir(exist_ok=True)
    model = latest_generator(demo)
    for conversion in CONVERSIONS:
        shutil.copy2(conversion.song, raw / conversion.song.name)
        retrieval = ("-fr", "-cr", "0.5", "-cm", "logs/44k/feature_and_index.pkl") if conversion.retrieval else ()
        demo.run("inference_main.py", "-m", str(model.relative_to(demo.work)), "-c", "logs/44k/config.json",
                 "-n", conversion.song.name, "-s", conversion.speaker, "-f0p", "pm", "-d", "cpu", "--overwrite",
                 *retrieval)
    step = generator_step(model)
    return ", ".join(str(demo.work / "results" / c.result_name(step)) for c in CONVERSIONS)


def measure_results(demo: Demo) -> str:
    """evaluate.py on each target speaker's results (it prints what each figure means): pitch against the
    source, similarity to the target's training audio, artefacts; the retrieval result is compared with the
    plain one. Then every artefact beyond its threshold again, in one list."""
    step = generator_step(latest_generator(demo))
    reports = []
    for speaker in dict.fromkeys(c.speaker for c in CONVERSIONS):
        plain, *others = [c for c in CONVERSIONS if c.speaker == speaker]
        report = demo.work / "results" / f"evaluation_{speaker}.json"
        compare = [f"--compare=--converted results/{c.result_name(step)}" for c in others[:1]]
        demo.run("evaluate.py", "-n", f"raw/{plain.song.name}", "--converted", f"results/{plain.result_name(step)}",
                 "-s", speaker, "--json", str(report.relative_to(demo.work)), *compare)
        reports.append(report)
    flags = [f"{run['label']} {item['result']}: {flag}" for report in reports
             for run in json.loads(report.read_text(encoding="utf-8"))["runs"] for item in run["files"]
             for flag in item["flags"]]
    for flag in flags:
        print(f"  FLAG {flag}", flush=True)
    return ", ".join(str(r) for r in reports) + (f"; {len(flags)} flag(s)" if flags else "; nothing flagged")


def latest_generator(demo: Demo) -> Path:
    checkpoints = sorted((path for path in (demo.work / "logs" / "44k").glob("G_*.pth") if path.stem[2:].isdigit()),
                         key=generator_step)  # G_<step>.pth, not G_best.pth
    if not checkpoints:
        raise SvcError("training wrote no G_*.pth checkpoint")
    return checkpoints[-1]


def generator_step(path: Path) -> int:
    return int(path.stem[2:])


STEPS: list[tuple[str, Callable[[Demo], str]]] = [
    ("copy samples", copy_samples),
    ("slice", slice_recordings),
    ("resample", resample_dataset),
    ("speech encoder", speech_encoder),
    ("filelists + configs", make_filelists_and_configs),
    ("features", extract_features),
    ("training", train_model),
    ("cluster model + feature index", train_cluster_and_index),
    ("conversion", convert_songs),
    ("quality check", measure_results),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", type=str, default="demo_work", help="work folder (created)")
    parser.add_argument("--fresh", action="store_true", help="delete the work folder first")
    parser.add_argument("--train_steps", type=int, default=300, help="generator steps of the CPU training")
    args = parser.parse_args()
    work = Path(args.work_dir).resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    demo = Demo(work, args.train_steps)
    total = time.perf_counter()
    for number, (name, step) in enumerate(STEPS, 1):
        print(f"[{number}/{len(STEPS)}] {name}", flush=True)
        started = time.perf_counter()
        output = step(demo)
        print(f"  -> {output} ({time.perf_counter() - started:.1f} s)", flush=True)
    print(f"demo finished in {time.perf_counter() - total:.1f} s; everything is in {work}")
    return 0



# ---------------------------------------------------------------- the demo's speech encoder
# The speech encoder the demo uses (whisper-ppg-base), found or made in the most useful way available.
#
# Order: a `base.pt` already in the pretrain folder; OpenAI's Whisper base downloaded (sha256 checked); the
# encoder-only copy in the shared assets folder; and only as a last resort a seeded random-weight encoder of
# Whisper base's shape, which lets the pipeline run end to end but cannot convert a voice. The random file is
# marked inside (key `random_weights`), so a later run replaces it as soon as a real encoder can be had.

DEMO_ENCODER = "whisper-ppg-base"
RANDOM_MARKER = "random_weights"
WHISPER_BASE = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=512, n_audio_head=8, n_audio_layer=6)
SHARED_ENCODER = Path("assets") / "whisper" / "base_encoder.pt"  # under the shared folder


def resolve_demo_encoder(pretrain_dir: str | os.PathLike, shared_dir: str | os.PathLike = Path("../shared"),
                         allow_download: bool = True, *, base_url: str | None = None,
                         remote: DirectDownload | None = None, timeout: float = 10.0,
                         seed: int = 0) -> tuple[str, Path, str]:
    """Make `<pretrain_dir>/base.pt` usable; return (encoder name, its path, where it came from, in one line).

    `base_url` is a download mirror (default: $SVC_DOWNLOAD_MIRROR); `remote` replaces the table's URL and
    sha256 (tests); `timeout` keeps the attempt short when there is no network.
    """
    target = Path(pretrain_dir) / ENCODER_RECORDS[DEMO_ENCODER].file
    placeholder = target.is_file() and is_random_placeholder(target)
    if target.is_file() and not placeholder:
        return DEMO_ENCODER, target, f"{target} (already present)"
    if allow_download:
        source = _try_download(target, remote or direct_download(target.name),
                               base_url or os.environ.get(MIRROR_ENV), timeout)
        if source:
            return DEMO_ENCODER, target, source
    shared_copy = Path(shared_dir) / SHARED_ENCODER
    if shared_copy.is_file():
        with atomic_path(target) as tmp:
            shutil.copyfile(shared_copy, tmp)
        logger.info(f"using the Whisper base encoder from {shared_copy} (copied to {target})")
        return DEMO_ENCODER, target, f"the Whisper base encoder from {shared_copy}, copied to {target}"
    if not placeholder:
        torch_save(random_whisper_checkpoint(seed), target)
    _announce_random(target, shared_copy)
    return DEMO_ENCODER, target, (f"{target}: RANDOM weights (seed {seed}), not a real encoder; the demo's "
                                  "conversion will not sound like the target voice")


def _try_download(target: Path, remote: DirectDownload, base_url: str | None, timeout: float) -> str | None:
    """Download Whisper base to `target`; the description on success, None (with a warning) on failure."""
    url = mirror_url(remote.url, base_url)
    logger.info(f"fetching Whisper base for the demo from {url}")
    try:
        download(url, target, remote.sha256, remote.sha256_prefix, timeout=timeout, desc="Whisper base")
    except DownloadError as error:
        logger.warning(f"no network: could not fetch Whisper base ({error})")
        return None
    except ChecksumError as error:
        logger.warning(f"could not fetch Whisper base: {error}")
        return None
    return f"OpenAI Whisper base, downloaded from {url} (sha256 checked)"


def _announce_random(target: Path, shared_copy: Path) -> None:
    url = direct_download(target.name).url
    logger.warning(
        "\n" + "!" * 78 + "\n"
        f"RANDOM SPEECH ENCODER: no real Whisper base is available (no download, no {shared_copy}).\n"
        f"{target} holds seeded RANDOM weights of Whisper base's shape. Every step runs, but the demo's\n"
        "conversion will not sound like the target voice.\n"
        f"For a real result put OpenAI's base.pt ({url}) at {target} and run the demo again.\n"
        + "!" * 78)


def is_random_placeholder(path: str | os.PathLike) -> bool:
    """True for a file written by `random_whisper_checkpoint` (read lazily: the tensors stay on disk)."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # any unreadable file is not ours; the encoder's loader reports it properly
        return False
    return isinstance(checkpoint, dict) and RANDOM_MARKER in checkpoint


def random_whisper_checkpoint(seed: int = 0) -> dict:
    """An encoder-only openai-whisper checkpoint of Whisper base's shape with seeded random weights (float16,
    like the real files).

    The weights are PyTorch's default initialisation drawn from `seed`; the global random state is
    restored afterwards.
    """
    import torch

    from vencoder.whisper import AudioEncoder, AudioEncoderDims

    dims = AudioEncoderDims(**WHISPER_BASE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = AudioEncoder(dims)
    state = {f"encoder.{name}": tensor.half() for name, tensor in encoder.state_dict().items()}
    return {"dims": asdict(dims), "model_state_dict": state, RANDOM_MARKER: {"seed": seed}}


if __name__ == "__main__":
    run_cli(main)
