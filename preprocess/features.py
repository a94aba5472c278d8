"""Training features for one wav (spec §3.3, §4.3): what preprocess_hubert_f0.py computes and writes.

Files written next to `X.wav` (4.1's names and containers, so 4.1's loaders read them):

| file | content |
| --- | --- |
| `X.wav.soft.pt` | torch float32 `[1, D, T_enc]`: speech-encoder units of the 16 kHz audio |
| `X.wav.f0.npy` | numpy object array `(2, T)`: rows f0 (Hz, unvoiced frames interpolated) and uv |
| `X.spec.pt` | torch float32 `[1025, T]`: linear magnitude spectrogram (`.wav` replaced, not appended) |
| `X.wav.vol.npy` | float32 `[T]` frame RMS (with use_diff or model.vol_embedding) |
| `X.wav.mel.npy` | float32 `[T, 128]` NSF-HiFiGAN log-mel (use_diff) |
| `X.wav.aug_mel.npy` | numpy object array `(2,)`: (mel of volume-scaled audio with keyshift, keyshift) (use_diff) |
| `X.wav.aug_vol.npy` | float32 `[T]` volume of the volume-scaled audio (use_diff) |

T = N // hop for N samples. Augmentation draws come from a generator seeded per file, so a re-run
writes the same values. Every file is read back through core.feature_io, which never runs code from
it; the skip-check warns about an existing file it refuses before writing it again.
"""
from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from loguru import logger

from core import dsp
from core.audio import resample
from core.errors import SvcError
from core.feature_io import FeatureFileError, read_feature
from core.fileio import np_save, torch_save
from core.memory import keep_freed_memory
from core.onnx_cache import onnxruntime_available
from preprocess.feature_files import FeatureSettings, f0_value, feature_paths, list_wavs, load_training_audio
from preprocess.windows import FEATURE_CONTEXT_SECONDS, FEATURE_WINDOW_SECONDS, plan_windows

if TYPE_CHECKING:
    from preprocess.f0_ahead import F0Ahead

ENCODER_SR = 16000
ENCODER_HOP = 320             # samples per unit frame at 16 kHz: every encoder gives 50 frames/s
ENCODER_PRECISIONS = ("auto", "fp32", "onnx")
AUG_KEYSHIFT = 5.0           # keyshift ~ U(-5, 5) semitones
AUG_MIN_LOG10_GAIN = -1.0    # volume scale 10^s, s ~ U(-1, min(1, log10(1 / peak)))


def file_seed(relative_name: str) -> int:
    """A stable 63-bit seed from a file's path relative to the dataset root."""
    return int.from_bytes(hashlib.sha256(relative_name.encode("utf-8")).digest()[:8], "little") >> 1


# ---------------------------------------------------------------- the skip-check

def output_problem(kind: str, path: Path) -> str | None:
    """Why the existing output `path` cannot be kept as `kind` (None if it loads; tensors memory-mapped)."""
    try:
        read_feature(kind, path, mmap=True)
    except FeatureFileError as error:
        return error.problem
    return None


def output_is_valid(kind: str, path: Path) -> bool:
    """True if `path` exists and loads as output `kind` through the safe readers of core.feature_io."""
    return Path(path).is_file() and output_problem(kind, Path(path)) is None


def missing_outputs(wav: Path, settings: FeatureSettings, warn: bool = True) -> dict[str, Path]:
    """The outputs of `wav` that are absent or do not load (all of them for a fresh file).

    An existing file that is refused (code references, damage, wrong shape) is logged as a warning with
    the reason when `warn`, since it is about to be overwritten; absent files are not mentioned.
    """
    missing = {}
    for kind, path in feature_paths(wav, settings).items():
        if not path.is_file():
            missing[kind] = path
            continue
        problem = output_problem(kind, path)
        if problem is not None:
            if warn:
                logger.warning(f"{path} {problem}; recomputing it")
            missing[kind] = path
    return missing


# ---------------------------------------------------------------- computing the features

# Files in flight at once in one process when the speech encoder runs on ONNX Runtime, each call with half the
# threads: one thread per call wastes less on synchronisation than two threads on one call (2 cores, 16 clips
# of 5 s, five interleaved pairs: 1.05-1.14x faster, features bit-identical, ~90 MB more memory).
FILES_AT_ONCE = 2


class FeatureExtractor:
    """Holds the models for one process (encoder, f0 predictor, mel extractor), loaded once; `files_at_once`
    says how many files `compute` may be called for concurrently (from as many threads)."""

    def __init__(self, settings: FeatureSettings, device: str | torch.device = "cpu"):
        from f0_predictor import get_f0_predictor
        from vencoder.ort_encoder import OrtEncoder, speech_encoder

        self.settings = settings
        self.device = torch.device(device)
        onnx = use_onnx_encoder(settings.precision, self.device)
        at_once = FILES_AT_ONCE if onnx and torch.get_num_threads() >= 2 else 1
        self.encoder = speech_encoder(settings.speech_encoder, self.device, settings.pretrain_dir, onnx=onnx,
                                      threads=max(1, torch.get_num_threads() // at_once))
        self.files_at_once = at_once if isinstance(self.encoder, OrtEncoder) else 1
        self.f0_predictor = get_f0_predictor(settings.f0_predictor, hop_length=settings.hop_length,
                                             sampling_rate=settings.sampling_rate, device=str(self.device),
                                             threshold=settings.f0_threshold, pretrain_dir=settings.pretrain_dir)
        self.mel_extractor = None
        if settings.use_diff:
            from vdecoder.nsf_hifigan import MelExtractor

            self.mel_extractor = MelExtractor.from_config(settings.vocoder_config)

    def load(self, wav: Path) -> np.ndarray:
        """Read `wav` at the model rate and refuse audio that cannot give features (AudioError)."""
        return load_training_audio(wav, self.settings)

    def compute(self, audio: np.ndarray, kinds: list[str] | tuple[str, ...], seed: int) -> dict[str, Any]:
        """audio float32 `[N]` at the model rate -> {output kind: value as written to disk}.

        With one file at a time the f0 runs in a second thread meanwhile: the WORLD and Parselmouth predictors
        use one core and release the GIL, so they overlap the speech encoder instead of following it."""
        steps: dict[str, Callable[[], Any]] = {
            "soft": lambda: self.units(audio),
            "spec": lambda: self.spectrogram(audio),
            "vol": lambda: self.volume(audio),
            "mel": lambda: self.mel(audio),
        }
        if self.files_at_once > 1:  # the other file in flight keeps the second core busy
            values = {kind: steps[kind]() for kind in kinds if kind in steps}
            if "f0" in kinds:
                values["f0"] = self.f0(audio)
        else:
            with ThreadPoolExecutor(1) as side:
                f0 = side.submit(self.f0, audio) if "f0" in kinds else None
                values = {kind: steps[kind]() for kind in kinds if kind in steps}
                if f0 is not None:
                    values["f0"] = f0.result()
        if "aug_mel" in kinds or "aug_vol" in kinds:
            aug_mel, aug_vol = self.augmented(audio, seed)
            values.update({kind: value for kind, value in (("aug_mel", aug_mel), ("aug_vol", aug_vol))
                           if kind in kinds})
        for kind, value in values.items():
            _check_finite(kind, value)
        return values

    def units(self, audio: np.ndarray) -> torch.Tensor:
        """-> float32 `[1, D, T_enc]` on the CPU; over FEATURE_WINDOW_SECONDS window by window, with the frame
        count of the whole clip at once (preprocess.windows)."""
        wav16k = torch.from_numpy(resample(audio, self.settings.sampling_rate, ENCODER_SR))
        windows = plan_windows(len(wav16k), ENCODER_HOP, int(FEATURE_WINDOW_SECONDS * ENCODER_SR),
                               int(FEATURE_CONTEXT_SECONDS * ENCODER_SR))
        if len(windows) == 1:
            return self.encoder(wav16k).detach().float().cpu().clone()  # clone: compact storage on disk
        pieces = [self.encoder(wav16k[w.start:w.end]).detach().float().cpu()[:, :, w.keep_from:w.keep_to]
                  for w in windows]
        return torch.cat(pieces, dim=2)

    def f0(self, audio: np.ndarray) -> np.ndarray:
        """-> object array `(2, T)` of (f0, uv), as 4.1 saves it."""
        return f0_value(self.f0_predictor, audio)

    def spectrogram(self, audio: np.ndarray) -> torch.Tensor:
        """-> float32 `[n_fft // 2 + 1, T]`."""
        s = self.settings
        spec = dsp.spectrogram(torch.from_numpy(audio)[None], s.filter_length, s.hop_length, s.win_length)
        return spec[0].clone()

    def volume(self, audio: np.ndarray) -> np.ndarray:
        """-> float32 `[T]`."""
        return dsp.volume(torch.from_numpy(audio), self.settings.hop_length).numpy().astype(np.float32)

    def mel(self, audio: np.ndarray, keyshift: float = 0.0) -> np.ndarray:
        """-> float32 `[T, n_mels]`."""
        mel = self.mel_extractor(torch.from_numpy(audio)[None], self.settings.sampling_rate, keyshift=keyshift)
        return mel[0].numpy().astype(np.float32)

    def augmented(self, audio: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (object array (aug mel `[T, n_mels]`, keyshift), aug volume `[T]`) of the volume-scaled audio."""
        log10_gain, keyshift = augmentation_draws(audio, seed)
        scaled = (audio * 10.0 ** log10_gain).astype(np.float32)
        aug_mel = np.asanyarray((self.mel(scaled, keyshift), keyshift), dtype=object)
        return aug_mel, self.volume(scaled)


def use_onnx_encoder(precision: str, device: torch.device) -> bool:
    """Whether the speech encoder runs on ONNX Runtime (float32): for `onnx`, and for `auto` on a CPU with
    onnxruntime installed. Its features equal torch's up to float rounding (~1e-6 relative); with two files at
    once (FILES_AT_ONCE) a batch of 5 s clips takes ~10 % less time than with torch; encoders that cannot be
    traced stay in torch (vencoder.ort_encoder)."""
    if precision not in ENCODER_PRECISIONS:
        raise SvcError(f"unknown precision {precision!r} (choose one of: {', '.join(ENCODER_PRECISIONS)})")
    if precision == "onnx" and device.type != "cpu":
        raise SvcError(f"--precision onnx runs on the CPU only; use fp32 on {device.type}")
    return precision != "fp32" and device.type == "cpu" and onnxruntime_available()


def augmentation_draws(audio: np.ndarray, seed: int) -> tuple[float, float]:
    """(log10 volume gain s, keyshift) for one file: s ~ U(-1, min(1, log10(1/(peak+1e-5)))), keyshift ~ U(-5, 5)."""
    rng = np.random.default_rng(seed)
    max_gain = min(1.0, math.log10(1.0 / (float(np.abs(audio).max()) + 1e-5)))
    log10_gain = float(rng.uniform(AUG_MIN_LOG10_GAIN, max_gain))
    keyshift = float(rng.uniform(-AUG_KEYSHIFT, AUG_KEYSHIFT))
    return log10_gain, keyshift


def write_outputs(values: dict[str, Any], paths: dict[str, Path]) -> None:
    """Write each value to its path atomically (torch.save for .pt, np.save for .npy)."""
    for kind, value in values.items():
        path = paths[kind]
        if isinstance(value, torch.Tensor):
            torch_save(value, path)
        else:
            np_save(path, value, allow_pickle=value.dtype == object)


def process_file(extractor: FeatureExtractor, wav: Path, seed: int, warn: bool = True) -> list[str]:
    """Compute and write the outputs of `wav` that are missing or refused -> the kinds written.

    `warn=False` when the caller has already reported the refused files (run_batch's scan).
    """
    missing = missing_outputs(wav, extractor.settings, warn)
    if not missing:
        return []
    audio = extractor.load(wav)
    write_outputs(extractor.compute(audio, list(missing), seed), missing)
    return list(missing)


def _check_finite(kind: str, value: Any) -> None:
    parts = value.reshape(-1) if kind == "aug_mel" else [value]  # aug_mel: (mel, keyshift)
    if not all(_is_finite(part) for part in parts):
        raise SvcError(f"the {kind} features came out NaN or infinite")


def _is_finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all())
    return bool(np.isfinite(np.asarray(value, dtype=np.float64)).all())


# ---------------------------------------------------------------- a whole dataset, in worker processes

@dataclass
class BatchResult:
    processed: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] | None = None  # (file, reason)

    def __post_init__(self) -> None:
        self.failed = self.failed or []


def worker_device(rank: int, requested: str | None) -> str:
    """Worker k uses GPU k mod n when CUDA is there (unless a device index was asked for), else `requested`/cpu."""
    if torch.cuda.is_available() and (requested is None or requested == "cuda"):
        return f"cuda:{rank % torch.cuda.device_count()}"
    return requested or "cpu"


def run_batch(in_dir: Path, settings: FeatureSettings, num_processes: int = 1, device: str | None = None,
              progress: bool = True, f0_ahead: F0Ahead | None = None) -> BatchResult:
    """Write the features of every wav under `in_dir` that lacks them; bad files are reported, not fatal.

    num_processes 0 means os.cpu_count(); 1 runs in this process; more use spawned workers, each
    loading its models once. Raises SvcError only for problems that stop every file (no wav found,
    a model that cannot load). `f0_ahead` (preprocess.f0_ahead, one process only): the f0 process started
    before torch was imported; it is stopped once the models are loaded, before the files are scanned.
    """
    from tqdm import tqdm

    in_dir = Path(in_dir)
    wavs = list_wavs(in_dir)
    if not wavs:
        raise SvcError(f"no .wav files in the speaker folders of {in_dir} (expected {in_dir}/<speaker>/*.wav)")
    extractor = None
    if f0_ahead is not None:
        try:
            extractor = FeatureExtractor(settings, worker_device(0, device))
        finally:
            written = f0_ahead.finish()
        logger.info(f"the f0 of {written} files was computed while the models loaded")
    pending = [w for w in wavs if missing_outputs(w, settings)]
    result = BatchResult(skipped=len(wavs) - len(pending))
    logger.info(f"{len(wavs)} wav files, {result.skipped} already done, {len(pending)} to process")
    num_processes = num_processes or os.cpu_count() or 1
    tasks = [(str(w), w.relative_to(in_dir).as_posix()) for w in pending]
    bar = tqdm(total=len(wavs), initial=result.skipped, disable=not progress, unit="file")
    try:
        if extractor is not None or num_processes == 1 or len(tasks) <= 1:
            outcomes = _run_here(tasks, extractor or FeatureExtractor(settings, worker_device(0, device)))
        else:
            outcomes = _run_in_workers(tasks, settings, min(num_processes, len(tasks)), device)
        for rel, status, message in outcomes:
            bar.update(1)
            if status == "failed":
                logger.error(f"{rel}: {message}")
                result.failed.append((rel, message))
            elif status == "skipped":
                result.skipped += 1
            else:
                result.processed += 1
    finally:
        bar.close()
    return result


def _run_here(tasks: list[tuple[str, str]], extractor: FeatureExtractor):
    if extractor.files_at_once == 1:
        for wav, rel in tasks:
            yield _process_one(extractor, wav, rel)
        return
    with ThreadPoolExecutor(extractor.files_at_once) as pool:
        futures = [pool.submit(_process_one, extractor, wav, rel) for wav, rel in tasks]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


def _run_in_workers(tasks: list[tuple[str, str]], settings: FeatureSettings, workers: int, device: str | None):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    next_rank = context.Value("i", 0)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(settings, device, next_rank, workers)) as pool:
        futures = [pool.submit(_worker_task, wav, rel) for wav, rel in tasks]
        try:
            for future in as_completed(futures):
                rel, status, message = future.result()
                if status == "setup_failed":
                    raise SvcError(message)
                yield rel, status, message
        finally:
            for future in futures:
                future.cancel()


def _process_one(extractor: FeatureExtractor, wav: str, rel: str) -> tuple[str, str, str]:
    """-> (relative name, "done" | "skipped" | "failed", reason)."""
    try:
        written = process_file(extractor, Path(wav), file_seed(rel), warn=False)  # run_batch has warned
    except SvcError as error:
        return rel, "failed", str(error)
    except Exception as error:  # noqa: BLE001 - one broken file must not stop the batch; the reason is reported
        return rel, "failed", f"{type(error).__name__}: {error}"
    return rel, ("done" if written else "skipped"), ""


# Per-process state of a spawned worker: its models, loaded once by _init_worker.
_WORKER: dict[str, Any] = {}


def _init_worker(settings: FeatureSettings, device: str | None, next_rank: Any, workers: int) -> None:
    with next_rank.get_lock():
        rank = next_rank.value
        next_rank.value += 1
    keep_freed_memory()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    try:
        _WORKER["extractor"] = FeatureExtractor(settings, worker_device(rank, device))
    except SvcError as error:
        _WORKER["setup_error"] = str(error)
    except Exception as error:  # noqa: BLE001 - reported to the parent, which stops the batch
        _WORKER["setup_error"] = f"cannot load the models: {type(error).__name__}: {error}"


def _worker_task(wav: str, rel: str) -> tuple[str, str, str]:
    if "setup_error" in _WORKER:
        return rel, "setup_failed", _WORKER["setup_error"]
    return _process_one(_WORKER["extractor"], wav, rel)
