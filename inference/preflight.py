"""What inference_main.py checks before it loads a model, so that a mistake costs seconds, not a conversion.

Everything that can be known from the command line, the config files and the file system is checked
here, in the order a user would fix things: inputs, the results folder, the output format, speakers,
-a, pretrained files, and last the model files themselves (so that a wrong speaker is reported even
when the model file is broken too). Each problem is one SvcError naming the file or flag.
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from loguru import logger

from inference.spkmix import Timeline, load_timeline
from inference.speakers import speaker_id
from core.cli_types import check_device
from core.config import HParams, load_diffusion_config, load_model_config
from core.errors import AudioError, ConfigError, SvcError
from core.filekind import describe_non_checkpoint
from core.fileio import NotACheckpointError, make_output_dir
from core.pretrained import OTHER_PRETRAINED, require_pretrained
from core.registry import encoder_record, f0_predictor_record
from f0_predictor.weights import pretrained_weights

DEFAULT_KMEANS = "logs/44k/kmeans_10000.pt"
DEFAULT_INDEX = "logs/44k/feature_and_index.pkl"
NO_F0_DECODER_IN_CONFIG = "config model.use_automatic_f0_prediction is false"
NO_F0_DECODER_WEIGHTS = "the checkpoint has no f0_decoder weights"


def auto_f0_refusal(reason: str) -> ConfigError:
    """-a on a model without an F0 decoder; `reason` says how the model lacks it."""
    return ConfigError(f"-a/--auto_predict_f0 needs the model's F0 decoder, and this model has none ({reason}); "
                       "leave out -a: the f0 predictor (-f0p) gives the pitch")


@dataclass(frozen=True)
class ModelFacts:
    """What the configs say about the model that will convert (So-VITS, or diffusion alone with -od)."""
    sample_rate: int
    spk2id: dict[str, int]
    speech_encoder: str
    has_f0_decoder: bool


@dataclass(frozen=True)
class InputFile:
    name: str     # as given to -n
    path: Path    # under --raw_dir
    trans: float  # semitones


@dataclass(frozen=True)
class Job:
    """The checked plan of a run: what to convert, for whom, and where the results go."""
    inputs: list[InputFile]
    speakers: list[str | None]  # None: the speaker-mix timeline
    timeline: Timeline | None
    results_dir: Path


def check_before_loading(args: argparse.Namespace) -> Job:
    """Check the whole run without loading a model; return its plan or raise one SvcError."""
    check_device(getattr(args, "device", None))
    facts = model_facts(args)
    inputs = check_inputs(args)
    results_dir = prepare_results_dir(Path(args.results_dir))
    check_output_format(args.wav_format, facts.sample_rate)
    speakers, timeline = resolve_speakers(args, facts.spk2id)
    check_auto_f0(args, facts)
    check_pretrained_files(args, facts)
    check_model_files(args)
    return Job(inputs, speakers, timeline, results_dir)


# ----- the model's configs -------------------------------------------------------------------------

def model_facts(args: argparse.Namespace) -> ModelFacts:
    if args.only_diffusion:
        config = diffusion_config(args)
        spk = config.get("spk") or {"speaker": 0}
        return ModelFacts(int(config.data.sampling_rate), {str(k): int(v) for k, v in spk.items()},
                          str(config.data.encoder), has_f0_decoder=False)
    config = load_model_config(args.config_path)
    return ModelFacts(int(config.data.sampling_rate), {str(k): int(v) for k, v in config.spk.items()},
                      str(config.model.speech_encoder),
                      has_f0_decoder=bool(config.model.get("use_automatic_f0_prediction", True)))


# ----- inputs and outputs --------------------------------------------------------------------------

def input_path(raw_dir: Path, name: str) -> Path:
    """4.1 appends .wav to a name without a dot."""
    return raw_dir / (name if "." in name else f"{name}.wav")


def check_inputs(args: argparse.Namespace) -> list[InputFile]:
    """Every -n file: there, a readable audio file with samples; its -t (the list padded with its first)."""
    raw_dir = Path(args.raw_dir)
    make_output_dir(raw_dir, "--raw_dir")
    trans = list(args.trans) + [args.trans[0]] * max(len(args.clean_names) - len(args.trans), 0)
    return [InputFile(name, check_input(raw_dir, name), shift) for name, shift in zip(args.clean_names, trans)]


def check_input(raw_dir: Path, name: str) -> Path:
    path = input_path(raw_dir, name)
    if path.is_symlink() and not path.exists():
        raise AudioError(f"input {path} is a symbolic link to {os.readlink(path)}, which does not exist")
    if path.is_dir():
        raise AudioError(f"input {path} is a folder, not an audio file; name the files inside it "
                         f"(-n {name}/<file>) or move them into {raw_dir}/")
    if not path.exists():
        raise AudioError(f"input not found: {path} (put the files to convert into {raw_dir}/){_near_miss(path)}")
    if not path.is_file():
        raise AudioError(f"input {path} is not a regular file (a pipe or a device?)")
    _check_readable_audio(path)
    if path.name.startswith("."):
        logger.warning(f"input {path} is a hidden file (its name starts with '.'); converting it, and naming its "
                       "result without the leading '.' so that the result is not hidden too")
    return path


def _near_miss(path: Path) -> str:
    with_wav = path.with_name(path.name + ".wav")
    return f"; did you mean {with_wav.name}?" if with_wav.is_file() else ""


def _check_readable_audio(path: Path) -> None:
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, OSError, TypeError, ValueError) as error:
        hint = " (a macOS '._' metadata file, not audio)" if path.name.startswith("._") else ""
        raise AudioError(f"input {path} is not an audio file soundfile can read{hint}: {error}") from None
    if info.frames == 0:
        raise AudioError(f"input {path} holds no samples")


def check_input_length(n_samples: int, sr: int, model_rate: int, hop_length: int, what: str) -> None:
    """Refuse audio shorter than one model frame (hop_length samples at the model rate): it converts to nothing."""
    if n_samples * model_rate < hop_length * sr:
        raise AudioError(f"{what} is too short to convert: {n_samples} sample(s) at {sr} Hz, less than one model "
                         f"frame ({hop_length} samples at {model_rate} Hz, {1000 * hop_length / model_rate:.1f} ms)")


def prepare_results_dir(folder: Path) -> Path:
    """Create --results_dir if needed and prove it writable, before any conversion is computed."""
    make_output_dir(folder, "--results_dir")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise SvcError(f"--results_dir {folder} is not writable ({error.strerror or error})") from None
    return folder


def check_output_format(wav_format: str, sample_rate: int) -> None:
    """-wf must name a format soundfile writes (any case), and one that takes the model's sample rate."""
    formats = soundfile.available_formats()
    if wav_format.upper() not in formats:
        raise SvcError(f"-wf/--wav_format {wav_format!r} is not an audio format soundfile can write; "
                       f"choose one of: {', '.join(name.lower() for name in formats)}")
    try:
        soundfile.write(io.BytesIO(), np.zeros(sample_rate // 10, dtype=np.float32), sample_rate,
                        format=wav_format.upper())
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise SvcError(f"-wf/--wav_format {wav_format!r} cannot be written at the model's {sample_rate} Hz "
                       f"({error}); use flac or wav") from None


# ----- speakers and options ------------------------------------------------------------------------

def spk_mix_path(args: argparse.Namespace) -> Path:
    if args.spk_mix_file:
        return Path(args.spk_mix_file)
    json_path = Path("spkmix.json")
    return json_path if json_path.is_file() else Path("spkmix.py")


def resolve_speakers(args: argparse.Namespace, spk2id: dict[str, int]) -> tuple[list[str | None], Timeline | None]:
    """The speakers to convert for: -s (each checked), or [None] with a speaker-mix timeline of 2+ speakers."""
    if args.use_spk_mix:
        timeline = load_timeline(spk_mix_path(args), spk2id)
        if len(timeline) > 1:
            return [None], timeline
    for speaker in args.spk_list:
        speaker_id(spk2id, speaker)
    return list(args.spk_list), None


def check_auto_f0(args: argparse.Namespace, facts: ModelFacts) -> None:
    if not args.auto_predict_f0:
        return
    if args.only_diffusion:
        raise ConfigError("-a/--auto_predict_f0 uses the So-VITS model's F0 decoder, and -od/--only_diffusion "
                          "uses no So-VITS model; leave out -a")
    if not facts.has_f0_decoder:
        raise auto_f0_refusal(NO_F0_DECODER_IN_CONFIG)


# ----- files ---------------------------------------------------------------------------------------

def cluster_path(args: argparse.Namespace) -> str | None:
    if args.cluster_infer_ratio == 0:
        return None
    return args.cluster_model_path or (DEFAULT_INDEX if args.feature_retrieval else DEFAULT_KMEANS)


def check_pretrained_files(args: argparse.Namespace, facts: ModelFacts) -> None:
    """The speech encoder's, the f0 predictor's, the enhancer's and the vocoder's weights, and -cm."""
    pretrain = Path(args.pretrain_dir)
    encoder = encoder_record(facts.speech_encoder)  # an unknown encoder name is a clear ConfigError
    require_pretrained(pretrain / encoder.file, f"speech encoder {facts.speech_encoder}")
    check_f0_predictor(args.f0_predictor, pretrain)
    if args.enhance and not args.shallow_diffusion and not args.only_diffusion:
        for file in OTHER_PRETRAINED["nsf_hifigan"].files:
            require_pretrained(pretrain / file, "the enhancer (-eh)")
    if args.shallow_diffusion or args.only_diffusion:
        check_vocoder(args, pretrain)
    path = cluster_path(args)
    if path and not Path(path).is_file():
        raise SvcError(f"cluster model not found: {path} (train one with "
                       f"{'train_index.py' if args.feature_retrieval else 'train_cluster.py'})")


def check_f0_predictor(name: str, pretrain: Path) -> None:
    """A known predictor, and its weight file where it has one (or the copy a package ships, as for fcpe)."""
    record = f0_predictor_record(name)
    if record.file is not None:
        pretrained_weights(record, pretrain)


def diffusion_config(args: argparse.Namespace) -> HParams:
    """The diffusion config (-dc), once the diffusion model (-dm) is known to exist."""
    _required_file(args.diffusion_model_path, "diffusion model", "-dm", "; train one with train_diff.py")
    return load_diffusion_config(_required_file(args.diffusion_config_path, "diffusion config", "-dc"))


def check_vocoder(args: argparse.Namespace, pretrain: Path) -> None:
    """Diffusion's NSF-HiFiGAN: the diffusion config's vocoder.ckpt, else the one under --pretrain_dir."""
    config = diffusion_config(args)
    configured = Path(config.get("vocoder", {}).get("ckpt", "pretrain/nsf_hifigan/model"))
    model = configured if configured.is_file() else pretrain / "nsf_hifigan" / "model"
    what = "diffusion (-shd/-od), for its vocoder,"
    require_pretrained(model, what)
    require_pretrained(model.parent / "config.json", what)


def check_model_files(args: argparse.Namespace) -> None:
    """The checkpoints exist and are not plainly something else (their contents are checked on loading)."""
    if args.shallow_diffusion or args.only_diffusion:
        diffusion = _required_file(args.diffusion_model_path, "diffusion model", "-dm",
                                   "; train one with train_diff.py")
        _check_checkpoint(diffusion)
    if not args.only_diffusion:
        _check_checkpoint(_required_file(args.model_path, "model file", "-m"))


def _required_file(path: str | Path, what: str, flag: str, advice: str = "") -> Path:
    path = Path(path)
    if path.is_dir():
        raise SvcError(f"{what} {path} ({flag}) is a folder, not a file")
    if not path.is_file():
        raise SvcError(f"{what} not found: {path} ({flag}){advice}")
    return path


def _check_checkpoint(path: Path) -> None:
    looks_like = describe_non_checkpoint(path)
    if looks_like is not None:
        raise NotACheckpointError(f"{path} is not a checkpoint ({looks_like})")
