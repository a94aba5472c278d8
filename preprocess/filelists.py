"""Train/validation filelists and the two training configs, as so-vits-svc 4.1's preprocess_flist_config.py.

Unlike 4.1 the result is reproducible: speakers get ids in sorted order and the split is shuffled with
a seeded generator, so the same dataset gives the same files on every machine.
"""
from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import soundfile

from core.config import HParams, load_template, save_config
from core.errors import SvcError
from core.fileio import atomic_path
from core.registry import encoder_record

MIN_SECONDS = 0.3                      # 4.1 leaves shorter files out
VAL_PER_SPEAKER = 2                    # 4.1: two validation files per speaker
SAFE_NAME = re.compile(r"[.a-zA-Z0-9_/]+")   # 4.1 warns about other characters
TINY_FILTER_CHANNELS = 512


@dataclass
class Dataset:
    """Usable wavs per speaker (paths relative to the speaker folder, '/'-separated), and warnings."""
    files: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def scan_dataset(source_dir: Path) -> Dataset:
    """Find `<source_dir>/<speaker>/**/*.wav` of at least 0.3 s; speakers without any are left out."""
    if not source_dir.is_dir():
        raise SvcError(f"dataset folder {source_dir} does not exist; run resample.py first")
    dataset = Dataset()
    odd_names: list[str] = []
    for folder in sorted(p for p in source_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        usable = []
        for path in sorted(_wavs(folder, dataset.warnings)):
            rel = path.relative_to(folder).as_posix()
            duration = _duration(path, dataset.warnings)
            if duration is None:
                continue
            if duration < MIN_SECONDS:
                dataset.warnings.append(
                    f"{folder.name}/{rel}: {duration:.2f} s is shorter than {MIN_SECONDS} s; left out")
                continue
            if not SAFE_NAME.fullmatch(rel):
                odd_names.append(f"{folder.name}/{rel}")
            usable.append(rel)
        if usable:
            dataset.files[folder.name] = usable
        else:
            dataset.warnings.append(f"speaker folder {folder.name} has no usable wav; speaker left out")
    if odd_names:
        dataset.warnings.append(f"{len(odd_names)} file names use characters other than a-z A-Z 0-9 _ . "
                                f"(some tools mishandle them), e.g. {', '.join(odd_names[:3])}")
    if not dataset.files:
        raise SvcError(f"no usable wav files (>= {MIN_SECONDS} s) in {source_dir}/<speaker>/; run resample.py first")
    return dataset


def _wavs(folder: Path, warnings: list[str]) -> list[Path]:
    """The wavs below `folder` (`.wav` in any case); hidden ones are left out and named in `warnings`."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        wavs = [Path(root) / f for f in files if f.lower().endswith(".wav")]
        for path in wavs:
            if path.name.startswith("."):
                warnings.append(f"{folder.name}/{path.relative_to(folder).as_posix()}: a hidden file "
                                "(its name starts with '.'); left out")
            else:
                found.append(path)
    return found


def _duration(path: Path, warnings: list[str]) -> float | None:
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
        warnings.append(f"{path}: unreadable ({error}); left out")
        return None
    return info.frames / info.samplerate


def split_dataset(dataset: Dataset, source_prefix: str, seed: int) -> tuple[list[str], list[str]]:
    """Seeded 4.1 split: per speaker (sorted) shuffle and take 2 for validation, then shuffle both lists.

    A speaker with fewer than 3 files keeps all of them for training and lends its first one to
    validation too, so it is trained on and the validation list is never empty.
    """
    rng = random.Random(seed)
    train, val = [], []
    for speaker, files in sorted(dataset.files.items()):
        paths = [f"{source_prefix}/{speaker}/{rel}" for rel in files]
        rng.shuffle(paths)
        if len(paths) <= VAL_PER_SPEAKER:
            dataset.warnings.append(f"speaker {speaker} has only {len(paths)} usable file(s): all are used for "
                                    "training and the first is also used for validation")
            train += paths
            val.append(paths[0])
        else:
            val += paths[:VAL_PER_SPEAKER]
            train += paths[VAL_PER_SPEAKER:]
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val


def build_configs(speakers: list[str], speech_encoder: str, vol_aug: bool = False, tiny: bool = False,
                  train_list: str | None = None, val_list: str | None = None) -> tuple[HParams, HParams]:
    """config.json and diffusion.yaml contents for these speakers (ids in the given order)."""
    config = load_template("config_tiny_template.json" if tiny else "config_template.json")
    diffusion = load_template("diffusion_template.yaml")
    spk = {name: i for i, name in enumerate(speakers)}
    encoder = encoder_record(speech_encoder)
    dim = encoder.dim

    config.spk = spk
    config.model.n_speakers = len(spk)
    config.model.speech_encoder = speech_encoder
    config.model.ssl_dim = config.model.gin_channels = dim
    if encoder.wide_filter:
        config.model.filter_channels = dim
    if tiny:
        config.model.filter_channels = TINY_FILTER_CHANNELS
    if vol_aug:
        config.train.vol_aug = config.model.vol_embedding = True

    diffusion.spk = spk
    diffusion.model.n_spk = len(spk)
    diffusion.data.encoder = speech_encoder
    diffusion.data.encoder_out_channels = dim
    for key, path in (("training_files", train_list), ("validation_files", val_list)):
        _set_list_path(config.data, key, path)
        _set_list_path(diffusion.data, key, path)
    return config, diffusion


def _set_list_path(data: HParams, key: str, path: str | None) -> None:
    """Point the config at a filelist given on the command line, keeping the template's spelling for the default."""
    if path is not None and os.path.normpath(path) != os.path.normpath(data[key]):
        data[key] = path


def write_filelist(path: Path, lines: list[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def write_configs(config: HParams, diffusion: HParams, config_dir: Path) -> tuple[Path, Path]:
    paths = config_dir / "config.json", config_dir / "diffusion.yaml"
    save_config(config, paths[0])
    save_config(diffusion, paths[1])
    return paths
