"""Result file names: 4.1's pattern, then tags for what 4.1's names leave out, then a free number.

4.1 names a result `{name}_{key}_{spk}{cluster}_{mode}_{f0p}.{fmt}`, so two runs that differ in feature
retrieval, loudness mixing, diffusion depth or model step write the same name and the later one
overwrites the earlier. Here that name stays the prefix and tags follow it:

    _fr        feature retrieval (-fr, with -cr > 0) instead of k-means
    _lea<x>    loudness envelope adjustment (-lea) other than 1
    _ks<k>     shallow-diffusion depth (-shd with -ks)
    _step<n>   the So-VITS model's step, from a model file named G_<n>.pth
    _raw       no output stage (--no_cleanup): the output before DC removal and the pause gate
    _repair    octave errors and voicing flicker of the F0 track repaired (--f0_repair)
    _pitchfile the pitch came from a file (--pitch_file) instead of the F0 predictor

Whatever the input or speaker name holds (folders, `..`, NUL, control characters, hundreds of bytes), the
result is one plain name inside the results folder (core.outputs.safe_stem), checked again where it is claimed.

An existing file is never replaced unless asked (--overwrite): the result goes to `<stem>_1.<fmt>`,
`<stem>_2.<fmt>` ... instead.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from loguru import logger

from core.outputs import file_in_folder, safe_stem

MODEL_STEP = re.compile(r"^G_(\d+)\.pth$")
SPEAKER_BYTES = 60


def model_step(model_path: str | Path) -> int | None:
    """The training step in a generator file name `G_<step>.pth`, else None."""
    match = MODEL_STEP.match(Path(model_path).name)
    return int(match.group(1)) if match else None


def base_stem(clean_name: str, trans: float, speaker: str, args: argparse.Namespace) -> str:
    """4.1's name without its extension: {name}_{key}_{spk}{cluster}_{mode}_{f0p}."""
    key = "auto" if args.auto_predict_f0 else f"{trans:g}key"
    cluster = f"_{args.cluster_infer_ratio:g}" if args.cluster_infer_ratio != 0 else ""
    mode = "diff" if args.only_diffusion else "sovdiff" if args.shallow_diffusion else "sovits"
    return f"{safe_stem(clean_name)}_{key}_{speaker_part(speaker)}{cluster}_{mode}_{args.f0_predictor}"


def speaker_part(speaker: str | int) -> str:
    """A speaker name as a part of a result name (config.json's names are text of any kind)."""
    return safe_stem(str(speaker), fallback="speaker", max_bytes=SPEAKER_BYTES)


def upload_stem(path: str | Path) -> str:
    """An uploaded file's name without its extension, as a safe part of a result name."""
    return safe_stem(Path(safe_stem(str(path))).stem)


def result_tags(args: argparse.Namespace) -> list[str]:
    """The tags after 4.1's name for the options that change the audio but not 4.1's name."""
    tags = []
    if args.feature_retrieval and args.cluster_infer_ratio != 0:
        tags.append("fr")
    if args.loudness_envelope_adjustment != 1:
        tags.append(f"lea{args.loudness_envelope_adjustment:g}")
    if args.shallow_diffusion and not args.only_diffusion:
        tags.append(f"ks{args.k_step}")
    step = None if args.only_diffusion else model_step(args.model_path)
    if step is not None:
        tags.append(f"step{step}")
    if getattr(args, "no_cleanup", False):
        tags.append("raw")
    if getattr(args, "f0_repair", False):
        tags.append("repair")
    if getattr(args, "pitch_file", None):
        tags.append("pitchfile")
    return tags


def output_name(clean_name: str, trans: float, speaker: str, args: argparse.Namespace) -> str:
    """The result's file name before any numbering: 4.1's name, the tags, the format as typed.

    Only the input's base name counts (`sub/x.wav` gives `x.wav_...`); a hidden input (`.take.wav`) loses its
    leading dots, so that its result is not hidden too.
    """
    stem = "_".join([base_stem(clean_name, trans, speaker, args), *result_tags(args)])
    return f"{stem}.{args.wav_format}"


def claim_result_path(folder: Path, name: str, overwrite: bool) -> Path:
    """`folder/name`, or when that exists and `overwrite` is off, the first free `<stem>_<n><ext>`."""
    target = file_in_folder(folder, name)
    if overwrite or not _taken(target):
        return target
    stem, dot, ext = name.rpartition(".")
    number = 1
    while _taken(candidate := file_in_folder(folder, f"{stem}_{number}{dot}{ext}")):
        number += 1
    logger.info(f"{target} exists already; writing {candidate.name} instead (--overwrite replaces it)")
    return candidate


def _taken(path: Path) -> bool:
    return path.exists() or path.is_symlink()
