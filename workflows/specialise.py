"""Specialisation (specialize.py): content units of a dataset taken from its conversion by another model.

Encoders such as CN-HuBERT leak the source timbre into their units. To build a B->A model that converts B's
voice well: train model B on speaker B; convert every wav of A's dataset into B's voice with model B; take the
content units of that converted audio while F0, spectrogram, volume and mels stay those of A's originals; train
A on them. Both So-VITS and diffusion training read `<wav>.soft.pt`, so they use these units with no other change.

Per wav `X.wav` this writes `X.wav.soft.pt` (units of the conversion, by the dataset config's speech encoder,
like preprocess_hubert_f0.py) and then `X.wav.specialised.json` (which model, speaker, transposition and f0
predictor made it). A rerun skips every wav whose record matches this run and whose units load; a killed run
leaves either the old or the new complete file (atomic writes). The converted audio is kept only with
`keep_converted` (a folder outside the dataset, same relative names).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger
from tqdm import tqdm

from core.audio import resample, write_audio
from core.cli_types import MAX_TRANSPOSE, check_number
from core.config import load_model_config, parse_config_text, read_config_text
from core.errors import ConfigError, SvcError
from core.fileio import atomic_path, torch_save
from preprocess.features import FeatureExtractor, FeatureSettings, feature_paths, output_is_valid

RECORD_SUFFIX = ".specialised.json"
ORIGINAL_KINDS = ("f0", "spec")  # what must already be there, from preprocess_hubert_f0.py on the originals


@dataclass(frozen=True)
class SpecialiseSettings:
    model_path: Path             # model B: G_*.pth
    config_path: Path            # model B's config.json
    speaker: str                 # B's speaker name (or id) in that config
    dataset_config: Path         # the config A trains with: its speech encoder, rate and hop make the units
    trans: float = 0.0           # semitones applied when converting
    f0_predictor: str = "pm"     # f0 of the conversion (A's own .f0.npy is not touched)
    pretrain_dir: Path = Path("pretrain")
    device: str | None = None
    keep_converted: Path | None = None
    pattern: str = "*.wav"       # which wavs under in_dir (recursive glob)


@dataclass
class SpecialiseResult:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def record_path(wav: Path) -> Path:
    return wav.with_name(wav.name + RECORD_SUFFIX)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_record(settings: SpecialiseSettings, speech_encoder: str) -> dict[str, Any]:
    """What decides a file's units: a rerun with the same record skips the file."""
    return {"model_sha256": file_sha256(settings.model_path), "speaker": str(settings.speaker),
            "trans": float(settings.trans), "f0_predictor": settings.f0_predictor, "speech_encoder": speech_encoder}


def find_wavs(in_dir: Path, pattern: str) -> list[Path]:
    if not in_dir.is_dir():
        raise SvcError(f"dataset folder not found: {in_dir} (--in_dir)")
    wavs = sorted(p for p in in_dir.rglob(pattern) if p.is_file() and p.suffix.lower() == ".wav")
    if not wavs:
        raise SvcError(f"no .wav files matching {pattern!r} under {in_dir}")
    return wavs


def check_inputs(in_dir: Path, wavs: list[Path], settings: SpecialiseSettings) -> None:
    """Refuse before loading anything: missing model files, a keep folder inside the dataset, wavs without
    their original features."""
    check_number(settings.trans, "-t/--trans", -MAX_TRANSPOSE, MAX_TRANSPOSE)
    for path, flag in ((settings.model_path, "-m"), (settings.config_path, "-c"),
                       (settings.dataset_config, "--dataset_config")):
        if not Path(path).is_file():
            raise SvcError(f"{path} ({flag}) not found")
    keep = settings.keep_converted
    if keep is not None and keep.resolve().is_relative_to(in_dir.resolve()):
        raise SvcError(f"--keep_converted {keep} lies inside the dataset {in_dir}; the converted wavs would be "
                       "taken for training items. Choose a folder outside it")
    probe = FeatureSettings()
    missing = [w for w in wavs if not all(output_is_valid(kind, feature_paths(w, probe)[kind]) for kind in ORIGINAL_KINDS)]
    if missing:
        raise SvcError(f"{len(missing)} wav(s) lack their original features (.f0.npy, .spec.pt), e.g. {missing[0]}; "
                       "run preprocess_hubert_f0.py on the dataset first: specialisation keeps those and only "
                       "replaces the units")


def is_finished(wav: Path, record: dict[str, Any]) -> bool:
    path = record_path(wav)
    if not path.is_file() or not output_is_valid("soft", feature_paths(wav, FeatureSettings())["soft"]):
        return False
    return read_record(path) == record


def read_record(path: Path) -> Any:
    """A wav's specialised.json, or None when it cannot be read (damaged, huge, binary, nested absurdly):
    such a file is redone, not trusted."""
    try:
        return parse_config_text(read_config_text(path, "specialisation record"), path, "specialisation record")
    except ConfigError as error:
        logger.warning(f"{error}; converting the wav again")
        return None


def unit_extractor(settings: SpecialiseSettings, device: str) -> FeatureExtractor:
    """The dataset's speech encoder, set up exactly as preprocess_hubert_f0.py sets it up."""
    config = load_model_config(settings.dataset_config)
    data = config.data
    return FeatureExtractor(FeatureSettings(
        speech_encoder=config.model.speech_encoder, f0_predictor="pm", sampling_rate=int(data.sampling_rate),
        hop_length=int(data.hop_length), filter_length=int(data.get("filter_length", 2048)),
        win_length=int(data.get("win_length", 2048)), pretrain_dir=str(settings.pretrain_dir)), device)


def specialise_dataset(in_dir: str | Path, settings: SpecialiseSettings, progress: bool = True) -> SpecialiseResult:
    """Replace the units of every wav under `in_dir` with those of its conversion by model B (see the module doc)."""
    from inference.svc import ConversionOptions, Svc

    in_dir = Path(in_dir)
    wavs = find_wavs(in_dir, settings.pattern)
    check_inputs(in_dir, wavs, settings)
    speech_encoder = str(load_model_config(settings.dataset_config).model.speech_encoder)
    record = run_record(settings, speech_encoder)
    finished = {wav for wav in wavs if is_finished(wav, record)}
    pending = [wav for wav in wavs if wav not in finished]
    result = SpecialiseResult(skipped=sorted(str(wav) for wav in finished))
    logger.info(f"{len(wavs)} wav files, {len(result.skipped)} already specialised with this model, "
                f"{len(pending)} to convert")
    if not pending:
        return result
    svc = Svc(settings.model_path, settings.config_path, device=settings.device, pretrain_dir=settings.pretrain_dir)
    svc.speaker_id(settings.speaker)  # an unknown speaker stops here, naming the model's speakers
    extractor = unit_extractor(settings, str(svc.device))
    options = ConversionOptions(speaker=settings.speaker, trans=settings.trans, f0_predictor=settings.f0_predictor)
    for wav in tqdm(pending, desc="specialise", unit="file", disable=not progress):
        try:
            specialise_file(svc, extractor, options, wav, in_dir, settings.keep_converted, record)
        except SvcError as error:
            logger.error(f"{wav}: {error}")
            result.failed.append((str(wav), str(error)))
            continue
        result.done.append(str(wav))
    logger.info(f"specialised {len(result.done)}, skipped {len(result.skipped)}, failed {len(result.failed)}")
    return result


def specialise_file(svc: Any, extractor: FeatureExtractor, options: Any, wav: Path, in_dir: Path,
                    keep_converted: Path | None, record: dict[str, Any]) -> None:
    """Convert one wav with model B and write the units of the conversion, then its record."""
    audio = extractor.load(wav)  # at the dataset rate; too short or silent files are refused here
    sr = extractor.settings.sampling_rate
    converted = svc.convert(audio, sr, options)
    if keep_converted is not None:
        target = keep_converted / wav.relative_to(in_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_audio(target, converted, svc.target_sample)
    converted = resample(np.asarray(converted, dtype=np.float32), svc.target_sample, sr)
    torch_save(extractor.units(converted), feature_paths(wav, extractor.settings)["soft"])
    with atomic_path(record_path(wav)) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")

