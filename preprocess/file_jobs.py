"""Batch jobs over a dataset folder: find the audio, run one function per file in parallel, report.

A job never stops the batch: each file ends as done, skipped (already done) or failed with a reason,
and the run ends with one report naming every failed or noteworthy file.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import soundfile
from loguru import logger
from tqdm import tqdm

from core.errors import SvcError

# Extensions of the formats libsndfile reads (mp3 only where the bundled libsndfile supports it).
_EXTENSIONS = {
    "WAV": (".wav",), "FLAC": (".flac",), "OGG": (".ogg", ".oga", ".opus"), "MP3": (".mp3",),
    "AIFF": (".aif", ".aiff", ".aifc"), "W64": (".w64",), "RF64": (".rf64",), "CAF": (".caf",),
    "AU": (".au", ".snd"),
}


OWN_RECORD = re.compile(r"\..+\.slices\.json")  # slice_audio.py's record beside its clips


def audio_extensions() -> frozenset[str]:
    formats = soundfile.available_formats()
    return frozenset(ext for name, exts in _EXTENSIONS.items() if name in formats for ext in exts)


@dataclass(frozen=True)
class Job:
    """One input file and where its output goes; `rel` is the path shown in reports."""
    source: Path
    target: Path
    rel: str


@dataclass(frozen=True)
class Outcome:
    rel: str
    status: str            # "done", "skipped" or "failed"
    note: str = ""         # reason for failures; a remark for done files (e.g. "shorter than 0.3 s")


@dataclass
class Report:
    done: list[Outcome] = field(default_factory=list)
    skipped: list[Outcome] = field(default_factory=list)
    failed: list[Outcome] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)   # files not taken into the batch, with the reason

    def add(self, outcome: Outcome) -> None:
        {"done": self.done, "skipped": self.skipped, "failed": self.failed}[outcome.status].append(outcome)

    def log(self, title: str) -> None:
        """Log the summary line, then every failure, note and ignored file (sorted by path)."""
        logger.info(f"{title}: {len(self.done)} done, {len(self.skipped)} already done (skipped), "
                    f"{len(self.failed)} failed, {len(self.ignored)} ignored")
        for outcome in sorted(self.failed, key=lambda o: o.rel):
            logger.warning(f"FAILED {outcome.rel}: {outcome.note}")
        for outcome in sorted(self.done, key=lambda o: o.rel):
            if outcome.note:
                logger.warning(f"NOTE {outcome.rel}: {outcome.note}")
        for line in sorted(self.ignored):
            logger.warning(f"IGNORED {line}")


def speaker_files(in_dir: Path, extensions: frozenset[str], report: Report) -> Iterator[tuple[str, Path]]:
    """(speaker, file) for every audio file below each speaker folder of `in_dir`, sorted.

    Extensions count in any case (`TAKE.WAV`). Hidden names (starting with '.') are left out, and like every
    other file left out they are listed in report.ignored with the reason; a broken link is a failed file.
    """
    if not in_dir.is_dir():
        raise SvcError(f"input folder {in_dir} does not exist; put audio in {in_dir}/<speaker>/")
    for entry in sorted(in_dir.iterdir()):
        if entry.name.startswith("."):
            _ignore_hidden(entry, in_dir, report)
        elif not entry.is_dir():
            report.ignored.append(f"{entry.name}: not inside a speaker folder ({in_dir}/<speaker>/)")
        else:
            yield from _speaker_audio(entry, in_dir, extensions, report)


def _speaker_audio(folder: Path, in_dir: Path, extensions: frozenset[str],
                   report: Report) -> Iterator[tuple[str, Path]]:
    for path in sorted(_walk(folder, in_dir, report)):
        rel = path.relative_to(in_dir).as_posix()
        if path.suffix.lower() not in extensions:
            report.ignored.append(f"{rel}: not an audio format this tool reads")
        elif path.is_symlink() and not path.exists():
            report.add(Outcome(rel, "failed", f"a broken link (to {os.readlink(path)}, which does not exist)"))
        else:
            yield folder.name, path


def _walk(folder: Path, in_dir: Path, report: Report) -> Iterator[Path]:
    """Every file below `folder`; hidden files and folders go to report.ignored instead."""
    for root, dirs, files in os.walk(folder):
        for name in [d for d in dirs if d.startswith(".")]:
            _ignore_hidden(Path(root) / name, in_dir, report)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                _ignore_hidden(Path(root) / name, in_dir, report)
            else:
                yield Path(root) / name


def _ignore_hidden(path: Path, in_dir: Path, report: Report) -> None:
    """List a hidden file or folder as ignored; this tool's own records (`.<stem>.slices.json`) go unlisted."""
    if OWN_RECORD.fullmatch(path.name):
        return
    what = "folder" if path.is_dir() else "file"
    report.ignored.append(f"{path.relative_to(in_dir).as_posix()}: hidden {what} (its name starts with '.')")


def drop_collisions(jobs: Iterable[Job], report: Report) -> list[Job]:
    """Keep the first job per target; later ones (e.g. x.wav beside x.flac) are reported as failed."""
    kept: dict[Path, Job] = {}
    for job in jobs:
        if job.target in kept:
            report.add(Outcome(job.rel, "failed", f"same output name as {kept[job.target].rel}"))
        else:
            kept[job.target] = job
    return list(kept.values())


def is_up_to_date(target: Path, source: Path) -> bool:
    """True when `target` exists and is not older than `source` (make's rule)."""
    try:
        return target.stat().st_mtime >= source.stat().st_mtime
    except OSError:
        return False


def default_workers() -> int:
    """4.1's choice: 30 on machines with more than 60 cores, cores - 2 above 4 cores, else 1."""
    cores = os.cpu_count() or 1
    return 30 if cores > 60 else cores - 2 if cores > 4 else 1


def run_jobs(jobs: list[Job], work: Callable[[Job], Outcome], num_processes: int, desc: str,
             report: Report) -> Report:
    """Run `work` on every job (in a process pool when num_processes > 1) with a progress bar.

    `work` must be a picklable top-level callable; any exception it raises becomes a failed outcome.
    """
    bar = tqdm(total=len(jobs), desc=desc, unit="file", dynamic_ncols=True)
    if num_processes <= 1 or len(jobs) <= 1:
        for job in jobs:
            report.add(_guarded(work, job))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=num_processes) as pool:
            for outcome in pool.map(_guarded, [work] * len(jobs), jobs, chunksize=1):
                report.add(outcome)
                bar.update()
    bar.close()
    return report


def _guarded(work: Callable[[Job], Outcome], job: Job) -> Outcome:
    try:
        return work(job)
    except SvcError as error:
        return Outcome(job.rel, "failed", str(error))
    except Exception as error:  # one bad file must not end the batch; the report names it
        return Outcome(job.rel, "failed", f"unexpected {type(error).__name__}: {error}")
