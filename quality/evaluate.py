"""Measure conversions: convert the sources with a model (or take results already converted), compute every
figure of evaluation.report per file and overall, print tables and write JSON.

A run is one set of inference_main.py options. `--compare "FLAGS"` adds a second run: the same options with
FLAGS applied on top (another -m checkpoint, -cr 0.5 -cm ..., --converted other_folder ...). The second run's
table then also says how much each result differs from the first run's (`change dB`).
"""
from __future__ import annotations

import argparse
import copy
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from loguru import logger

from core.audio import load_audio
from core.errors import SvcError
from core.fileio import atomic_path
from core.outputs import safe_stem
from evaluation import artefacts, speaker
from evaluation.pitch import check_tracker
from evaluation.report import COLUMNS, MEANINGS, FileReport, SourceAnalysis, analyse_source, measure, overall, table

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aiff", ".aif"}
MAX_TARGET_FILES = 20  # the target speaker's embedding is the mean of at most this many training files


@dataclass
class Run:
    label: str
    args: argparse.Namespace
    reports: list[FileReport] = field(default_factory=list)
    results: list[np.ndarray] = field(default_factory=list)
    flags: str = ""  # --compare's flags for the second run

    def describe(self) -> str:
        if self.label != "A":
            return f"run A's options with {self.flags} on top"
        if self.args.converted:
            return "converted files " + " ".join(self.args.converted)
        options = [f"-m {self.args.model_path}"]
        if self.args.cluster_infer_ratio:
            options.append(f"-cr {self.args.cluster_infer_ratio:g} -cm {self.args.cluster_model_path}"
                           + (" -fr" if self.args.feature_retrieval else ""))
        options.append(f"-f0p {self.args.f0_predictor}")
        return " ".join(options)


def compare_args(parser: argparse.ArgumentParser, base: argparse.Namespace, flags: str) -> argparse.Namespace:
    """The second run's options: `base` with `flags` (one string, shell-quoted) parsed on top."""
    args = parser.parse_args(shlex.split(flags), namespace=copy.deepcopy(base))
    args.compare = None
    return args


def audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def source_paths(names: list[str], raw_dir: str) -> list[Path]:
    """-n entries: a file or folder (as given, else inside --raw_dir); a folder stands for its audio files."""
    paths: list[Path] = []
    for name in names:
        path = Path(name)
        if not path.exists() and (Path(raw_dir) / name).exists():
            path = Path(raw_dir) / name
        if path.is_dir():
            found = audio_files(path)
            if not found:
                raise SvcError(f"-n {name}: the folder holds no audio file ({', '.join(sorted(AUDIO_SUFFIXES))})")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise SvcError(f"-n {name}: no such file or folder (looked in the current folder and in {raw_dir}/)")
    return paths


def transpositions(trans: list[float], count: int) -> list[float]:
    """-t per source, the list padded with its first value (as inference_main.py does)."""
    return list(trans[:count]) + [trans[0]] * max(count - len(trans), 0)


def pair_converted(sources: list[Path], converted: list[str]) -> list[tuple[int, Path]]:
    """(source index, result) for every converted file: the source whose file name (or stem) begins the
    result's name, the longest such name winning. A result that matches no source is an error."""
    results = [p for entry in converted for p in (audio_files(Path(entry)) if Path(entry).is_dir() else [Path(entry)])]
    pairs = []
    for result in results:
        if not result.is_file():
            raise SvcError(f"--converted {result}: no such file")
        matches = [(len(prefix), i) for i, source in enumerate(sources)
                   for prefix in (source.name, source.stem, safe_stem(source.name))
                   if result.name.startswith(prefix)]
        if not matches:
            raise SvcError(f"--converted {result.name}: no source's name begins its name; give its source with -n "
                           f"({', '.join(s.name for s in sources)})")
        pairs.append((max(matches)[1], result))
    if not pairs:
        raise SvcError("--converted names no audio file")
    return pairs


def target_embedding(args: argparse.Namespace, speaker_name: str | None) -> tuple[np.ndarray | None, str]:
    """The target speaker's embedding from --target_audio (default dataset/44k/<speaker>) and where it came from."""
    if args.no_speaker or not speaker.speaker_encoder_available():
        return None, "speaker similarity off" if args.no_speaker else f"no speaker encoder ({speaker.INSTALL})"
    folder = Path(args.target_audio) if args.target_audio else (
        Path("dataset") / "44k" / speaker_name if speaker_name else None)
    if folder is None or not folder.exists():
        if args.target_audio:
            raise SvcError(f"--target_audio {args.target_audio}: no such file or folder")
        return None, "no target audio (give --target_audio; dataset/44k/<speaker> is not here)"
    files = audio_files(folder) if folder.is_dir() else [folder]
    if not files:
        raise SvcError(f"--target_audio {folder}: no audio file in it")
    chosen = files[::max(1, -(-len(files) // MAX_TARGET_FILES))]
    return speaker.embed_many([load_audio(p) for p in chosen]), f"{len(chosen)} file(s) of {folder}"


def evaluate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """evaluate.py's work; returns what it writes as JSON."""
    check_tracker(args.f0_tracker)
    runs = [Run("A", args)]
    if args.compare:
        runs.append(Run("B", compare_args(parser, args, args.compare), flags=args.compare))
    sources = source_paths(args.clean_names, args.raw_dir)
    target_speaker = _target_speaker(args)
    target, target_from = target_embedding(args, target_speaker)
    logger.info(f"target speaker: {target_speaker or '-'}; its voice from {target_from}")
    with_speaker = not args.no_speaker and speaker.speaker_encoder_available()
    analyses: dict[int, SourceAnalysis] = {}
    for run in runs:
        shifts = transpositions(run.args.trans, len(sources))
        for index, name, result in _results(run.args, sources, shifts, target_speaker):
            if index not in analyses:
                audio, sr = load_audio(sources[index], result[1])
                analyses[index] = analyse_source(sources[index].name, audio, sr, tracker=args.f0_tracker,
                                                 hop_seconds=args.f0_hop, with_speaker=with_speaker)
            source = analyses[index]
            audio = _at_rate(result, source.sampling_rate)
            report = measure(source, audio, name, semitones=shifts[index], target_embedding=target,
                             tracker=args.f0_tracker, hop_seconds=args.f0_hop)
            run.reports.append(report)
            run.results.append(audio)
    if len(runs) == 2:
        _differences(runs)
    summary = _summary(runs, target_speaker, target_from, args)
    print_summary(runs)
    if args.json:
        with atomic_path(args.json) as tmp:
            Path(tmp).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        logger.info(f"figures written to {args.json}")
    return summary


def _target_speaker(args: argparse.Namespace) -> str | None:
    if args.spk_list and len(args.spk_list) > 1:
        raise SvcError("-s: evaluate.py measures one target speaker at a time; name one")
    if args.spk_list:
        return args.spk_list[0]
    if args.converted:
        return None
    from core.config import load_model_config

    speakers = list(load_model_config(args.config_path).spk)
    if len(speakers) != 1:
        raise SvcError(f"-s: name the target speaker ({', '.join(speakers)})")
    return speakers[0]


def _at_rate(result: tuple[np.ndarray, int], sampling_rate: int) -> np.ndarray:
    from core.audio import resample

    audio, sr = result
    return audio if sr == sampling_rate else resample(audio, sr, sampling_rate)


def _results(args: argparse.Namespace, sources: list[Path], shifts: list[float], target_speaker: str | None):
    """(source index, result name, (audio, rate)) for every result of a run: read, or converted now."""
    if args.converted:
        for index, path in pair_converted(sources, args.converted):
            yield index, path.name, load_audio(path)
        return
    yield from _convert(args, sources, shifts, target_speaker)


def _convert(args: argparse.Namespace, sources: list[Path], shifts: list[float], target_speaker: str):
    """Convert every source with inference_main.py's machinery (checks, model, options, result names)."""
    from core.audio import write_audio
    from inference.convert_files import load_svc, options_for
    from inference.naming import claim_result_path, output_name
    from inference.preflight import check_before_loading

    checked = copy.copy(args)
    checked.clean_names, checked.raw_dir, checked.spk_list = [str(p.resolve()) for p in sources], ".", [target_speaker]
    checked.trans = shifts
    job = check_before_loading(checked)
    svc = load_svc(checked)
    for index, (item, path) in enumerate(zip(job.inputs, sources)):
        audio, sr = load_audio(item.path)
        out = svc.convert(audio, sr, options_for(checked, target_speaker, item.trans),
                          label=f"{path.name} -> {target_speaker}")
        target = claim_result_path(job.results_dir, output_name(path.name, item.trans, target_speaker, checked),
                                   args.overwrite)
        write_audio(target, out, svc.target_sample, subtype=None, format=args.wav_format)
        logger.info(f"{path.name} -> {target}")
        yield index, target.name, (out, svc.target_sample)


def _differences(runs: list[Run]) -> None:
    """The second run's `difference_db` against the first run's (first) result of the same source."""
    first: dict[str, np.ndarray] = {}
    for report, audio in zip(runs[0].reports, runs[0].results):
        first.setdefault(report.name, audio)
    for report, audio in zip(runs[1].reports, runs[1].results):
        if report.name in first:
            report.difference_db = artefacts.difference_db(first[report.name], audio)


def _summary(runs: list[Run], target_speaker: str | None, target_from: str, args: argparse.Namespace) -> dict:
    return {"target_speaker": target_speaker, "target_audio": target_from, "f0_tracker": args.f0_tracker,
            "meanings": MEANINGS,
            "runs": [{"label": run.label, "options": run.describe(), "overall": overall(run.reports),
                      "files": [r.to_dict() for r in run.reports]} for run in runs]}


def print_summary(runs: list[Run]) -> None:
    print("\nWhat the figures mean:")
    for key in COLUMNS:
        print(f"  {MEANINGS[key]}")
    for run in runs:
        print(f"\nrun {run.label}: {run.describe()}")
        print(table([(r.result, r.figures()) for r in run.reports]))
    print("\noverall (mean over files)")
    print(table([(f"run {run.label}", overall(run.reports)) for run in runs]))
    for run in runs:
        for report in run.reports:
            for flag in report.flags:
                print(f"FLAG run {run.label} {report.result}: {flag}")
