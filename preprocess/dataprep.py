"""Dataset preparation: dataset_raw/<speaker>/ -> 44.1 kHz training wavs, and slicing long recordings.

`resample_dataset` follows so-vits-svc 4.1's resample.py per file (mono, trim at 40 dB unless told to keep the
silence, peak guard, resample, peak normalisation, 16-bit PCM), reads any format libsndfile reads, mirrors nested
folders, and can aim at a loudness (LUFS) instead of a peak. `slice_dataset` cuts recordings into clips on silence.
Both skip finished work on re-runs and write atomically.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import librosa
import numpy as np
import pyloudnorm
import soundfile
from loguru import logger

from core.audio import fit_length, load_audio, resample, write_audio
from preprocess.file_jobs import (Job, Outcome, Report, audio_extensions, drop_collisions, is_up_to_date, run_jobs,
                           speaker_files)
from core.errors import AudioError
from core.fileio import atomic_path
from core.slicer import Slicer

TRIM_TOP_DB = 40          # 4.1: librosa.effects.trim(top_db=40)
PEAK_GUARD = 0.98         # 4.1: a peak above 1.0 is scaled down to this
SILENT_PEAK = 1e-3        # below -60 dBFS a file counts as silent
LOUDNORM_CEILING = 0.99   # --loudnorm never raises the peak above this
MIN_TRAIN_SECONDS = 0.3   # preprocess_flist_config.py leaves shorter files out
LONG_CLIP_SECONDS = 30.0  # longer clips are noted: training crops a few seconds of each, so cut them first
LONG_CLIP_NOTE = "s long; training uses a few seconds of each clip at a time, cut it first with slice_audio.py"


def folder_overlap(in_dir: Path, out_dir: Path, in_flag: str, out_flag: str) -> str | None:
    """Why `out_dir` must not take the outputs of `in_dir`, or None when the two are apart.

    Outputs mirror the inputs' relative paths, so an output folder equal to, inside or around the input
    folder would write over source recordings (and a later run would take the outputs for inputs).
    """
    source, target = Path(in_dir).resolve(), Path(out_dir).resolve()
    if source == target:
        return f"{out_flag} must differ from {in_flag} (sources are never overwritten)"
    if target.is_relative_to(source):
        return (f"{out_flag} {out_dir} lies inside {in_flag} {in_dir}; choose a folder outside it "
                "(sources are never overwritten)")
    if source.is_relative_to(target):
        return (f"{in_flag} {in_dir} lies inside {out_flag} {out_dir}; the outputs could replace source files, "
                "choose folders apart")
    return None


@dataclass(frozen=True)
class ResampleSettings:
    """Per-file settings of resample.py; calling it processes one job."""
    sr: int = 44100
    peak_normalise: bool = True      # False with --skip_loudnorm
    lufs: float | None = None        # --loudnorm target; replaces peak normalisation
    trim: bool = True                # False with --keep_silence
    force: bool = False

    def __call__(self, job: Job) -> Outcome:
        if not self.force and is_up_to_date(job.target, job.source):
            return Outcome(job.rel, "skipped")
        audio, sr = _load(job.source, mono=True)
        pcm, notes = prepare_training_audio(audio, sr, self)
        write_audio(job.target, pcm, self.sr, subtype="PCM_16")
        return Outcome(job.rel, "done", "; ".join(notes))


def _load(path: Path, mono: bool) -> tuple[np.ndarray, int]:
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    return load_audio(path, mono=mono)


def prepare_training_audio(audio: np.ndarray, sr: int, settings: ResampleSettings) -> tuple[np.ndarray, list[str]]:
    """Mono float audio at `sr` -> int16 samples at settings.sr, plus remarks for the report."""
    if settings.trim:
        audio, _ = librosa.effects.trim(audio, top_db=TRIM_TOP_DB)
    peak = float(np.max(np.abs(audio)))
    if peak < SILENT_PEAK:
        raise AudioError("silent: peak below -60 dBFS, nothing to train on")
    if peak > 1.0:
        audio = audio * (PEAK_GUARD / peak)
    audio = resample_to_length(audio, sr, settings.sr)
    notes: list[str] = []
    if settings.lufs is not None:
        audio = normalise_loudness(audio, settings.sr, settings.lufs, notes)
    elif settings.peak_normalise:
        audio = audio / np.max(np.abs(audio))
    if len(audio) < MIN_TRAIN_SECONDS * settings.sr:
        notes.append(f"only {len(audio) / settings.sr:.2f} s after trimming; "
                     f"preprocess_flist_config.py leaves files under {MIN_TRAIN_SECONDS} s out")
    if len(audio) > LONG_CLIP_SECONDS * settings.sr:
        notes.append(f"{len(audio) / settings.sr:.0f} {LONG_CLIP_NOTE}")
    return to_pcm16(audio), notes


def resample_to_length(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample and fix the length to ceil(N * sr_out / sr_in), the length 4.1's resampler gives."""
    if sr_in == sr_out:
        return audio
    return fit_length(resample(audio, sr_in, sr_out), math.ceil(len(audio) * sr_out / sr_in))


def normalise_loudness(audio: np.ndarray, sr: int, target_lufs: float, notes: list[str]) -> np.ndarray:
    """Scale to `target_lufs` integrated loudness (ITU-R BS.1770), lowering the gain if it would clip."""
    try:
        loudness = pyloudnorm.Meter(sr).integrated_loudness(audio.astype(np.float64))
    except ValueError:
        loudness = -math.inf
    if not math.isfinite(loudness):
        notes.append("too short or quiet to measure loudness; peak-normalised instead")
        return audio / np.max(np.abs(audio))
    gain = 10 ** ((target_lufs - loudness) / 20)
    peak = float(np.max(np.abs(audio)))
    if peak * gain > LOUDNORM_CEILING:
        gain = LOUDNORM_CEILING / peak
        notes.append(f"reached {loudness + 20 * math.log10(gain):.1f} LUFS, not {target_lufs:g}, "
                     "to keep the peak below full scale")
    return audio * gain


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """Float -> int16 as 4.1 writes it (x * 32767, truncated toward zero), but clipped instead of wrapped."""
    return np.clip(audio * 32767.0, -32768, 32767).astype(np.int16)


def resample_dataset(in_dir: Path, out_dir: Path, settings: ResampleSettings, num_processes: int) -> Report:
    """dataset_raw/<speaker>/**/<name>.<ext> -> out_dir/<speaker>/**/<name>.wav for every readable file."""
    report = Report()
    jobs = [Job(path, out_dir / path.relative_to(in_dir).with_suffix(".wav"), path.relative_to(in_dir).as_posix())
            for _, path in speaker_files(in_dir, audio_extensions(), report)]
    jobs = drop_collisions(jobs, report)
    report = run_jobs(jobs, settings, num_processes, "resample", report)
    long_clips = sum(LONG_CLIP_NOTE in outcome.note for outcome in report.done)
    if long_clips:
        logger.warning(f"{long_clips} clip(s) are longer than {LONG_CLIP_SECONDS:g} s (NOTE lines below); "
                       "slice_audio.py cuts recordings into clips on their pauses")
    return report


@dataclass(frozen=True)
class SliceSettings:
    """Per-file settings of slice_audio.py; calling it slices one job.

    A job's target is a hidden record `.<stem>.slices.json` beside the clips `<stem>_<k>.wav`; it is
    written last, so a file counts as done only when all its clips are written with these settings.
    """
    threshold_db: float = -40.0
    min_length_ms: float = 5000
    min_interval_ms: float = 300
    hop_size_ms: float = 20
    max_sil_kept_ms: float = 500
    max_clip_s: float | None = 15.0
    force: bool = False

    def params(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "force"}

    def __call__(self, job: Job) -> Outcome:
        record = _read_record(job.target)
        source_id = _source_id(job.source)
        if not self.force and record.get("source") == source_id and record.get("params") == self.params() \
                and all((job.target.parent / name).is_file() for name in record.get("clips", [])):
            return Outcome(job.rel, "skipped")
        audio, sr = _load(job.source, mono=False)  # [C, N]
        slicer = Slicer(sr, self.threshold_db, self.min_length_ms, self.min_interval_ms, self.hop_size_ms,
                        self.max_sil_kept_ms, self.max_clip_s)
        voiced = [seg for seg in slicer.segments(audio) if not seg.silent]
        stem = job.source.stem
        _remove_old_clips(job.target.parent, stem)
        if not voiced:
            raise AudioError(f"no sound above {self.threshold_db:g} dB; no clips written")
        subtype = _clip_subtype(job.source)
        clips = [f"{stem}_{k}.wav" for k in range(len(voiced))]
        for name, seg in zip(clips, voiced):
            write_audio(job.target.parent / name, audio[:, seg.start:seg.end].T, sr, subtype=subtype)
        _write_record(job.target, {"source": source_id, "params": self.params(), "clips": clips})
        return Outcome(job.rel, "done")


def _remove_old_clips(folder: Path, stem: str) -> None:
    """Delete `<stem>_<k>.wav` left by an earlier (possibly interrupted) run with other settings."""
    if not folder.is_dir():
        return
    pattern = re.compile(re.escape(stem) + r"_\d+\.wav")
    for path in folder.iterdir():
        if pattern.fullmatch(path.name):
            path.unlink()


def _source_id(path: Path) -> list:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _clip_subtype(path: Path) -> str:
    """Clips keep 16-bit PCM for sources of 16 bits or fewer, else 32-bit float (lossless either way)."""
    subtype = soundfile.info(str(path)).subtype
    return "FLOAT" if subtype in ("PCM_24", "PCM_32", "FLOAT", "DOUBLE") else "PCM_16"


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(path: Path, record: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")


def slice_dataset(in_dir: Path, out_dir: Path, settings: SliceSettings, num_processes: int) -> Report:
    """dataset_raw/<speaker>/**/<stem>.<ext> -> out_dir/<speaker>/**/<stem>_<k>.wav (voiced clips only)."""
    report = Report()
    jobs = []
    for _, path in speaker_files(in_dir, audio_extensions(), report):
        rel = path.relative_to(in_dir)
        jobs.append(Job(path, out_dir / rel.parent / f".{path.stem}.slices.json", rel.as_posix()))
    jobs = drop_collisions(jobs, report)
    return run_jobs(jobs, settings, num_processes, "slice", report)
