"""Where each pretrained file goes and where users get it, and one clear error when it is missing."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import MissingPretrainedError

# file name under pretrain/ -> where users get it
SOURCES = {
    "checkpoint_best_legacy_500.pt": "ContentVec legacy checkpoint (so-vits-svc README, IBM box link), or "
    "hubert_base.pt from the Hugging Face repo lj1995/VoiceConversionWebUI renamed to this name",
    "hubert-soft-0d54a1f4.pt": "https://github.com/bshall/hubert/releases (v0.1)",
    "medium.pt": "https://openaipublic.azureedge.net/main/whisper/models/"
    "345ae4da62f9b3d59415adc60127b97c714f32e89e936602e85993674d08dcb1/medium.pt",
    "large-v2.pt": "https://openaipublic.azureedge.net/main/whisper/models/"
    "81f7c96c852ee8fc832187b0132e569d6c3065a3252ed18e56effd0b6a73e524/large-v2.pt",
    "small.pt": "https://openaipublic.azureedge.net/main/whisper/models/"
    "9ecf779972d90ba49c06d968637d720dd632c55bbf19d441fb42bf17a411e794/small.pt",
    "base.pt": "https://openaipublic.azureedge.net/main/whisper/models/"
    "ed3a0b6b1c0edf879ad9b11b1af5a0e6ab5db9205f891f668f8b0e6c6326e34e/base.pt",
    "chinese-hubert-large-fairseq-ckpt.pt": "Hugging Face TencentGameMate/chinese-hubert-large",
    "DPHuBERT-sp0.75.pth": "Hugging Face pyf98/DPHuBERT",
    "WavLM-Base+.pt": "the microsoft/unilm WavLM release (WavLM Base+)",
    "vec-256-layer-9.onnx": "Hugging Face NaruseMioShirakana/MoeSS-SUBModel",
    "vec-256-layer-12.onnx": "Hugging Face NaruseMioShirakana/MoeSS-SUBModel",
    "vec-768-layer-9.onnx": "Hugging Face NaruseMioShirakana/MoeSS-SUBModel",
    "vec-768-layer-12.onnx": "Hugging Face NaruseMioShirakana/MoeSS-SUBModel",
    "hubert-soft.onnx": "Hugging Face NaruseMioShirakana/MoeSS-SUBModel",
    "rmvpe.pt": "https://github.com/yxlllc/RMVPE/releases (230917/rmvpe.zip; rename its model.pt to rmvpe.pt)",
    "fcpe.pt": "Hugging Face dataset ylzz1997/rmvpe_pretrain_model, file fcpe.pt",
    "model": "https://github.com/openvpi/vocoders/releases (nsf-hifigan-v1/nsf_hifigan_20221211.zip; "
    "unpack it into pretrain/nsf_hifigan/)",
    "config.json": "https://github.com/openvpi/vocoders/releases (nsf-hifigan-v1/nsf_hifigan_20221211.zip; "
    "unpack it into pretrain/nsf_hifigan/)",
}


def require_pretrained(path: str | os.PathLike, what: str) -> Path:
    """Return `path` if it is a file, else raise one clear error: the file, the path, where to get it.

    `what` names the user's choice that needs the file, e.g. "speech encoder vec768l12".
    """
    path = Path(path)
    if path.is_file():
        return path
    source = SOURCES.get(path.name, "see pretrain/README.md")
    raise MissingPretrainedError(
        f"{what} needs the pretrained file '{path.name}', expected at {path}, which does not exist. "
        f"Get it from {source} and put it there (pretrain/README.md lists every file)."
    )


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


_WHISPER = "https://openaipublic.azureedge.net/main/whisper/models"
_NSF_HIFIGAN_ZIP = "https://github.com/openvpi/vocoders/releases/download/nsf-hifigan-v1/nsf_hifigan_20221211.zip"

# The files with a direct URL. The others in SOURCES (ContentVec, CN-HuBERT, DPHuBERT, WavLM, the MoeSS ONNX
# encoders, fcpe) have no stable direct URL: users fetch them by hand from the place SOURCES names.
DOWNLOADS: tuple[DirectDownload, ...] = (
    DirectDownload("Whisper medium", f"{_WHISPER}/345ae4da62f9b3d59415adc60127b97c714f32e89e936602e85993674d08dcb1/"
                   "medium.pt", file="medium.pt",
                   sha256="345ae4da62f9b3d59415adc60127b97c714f32e89e936602e85993674d08dcb1"),
    DirectDownload("Whisper large-v2", f"{_WHISPER}/81f7c96c852ee8fc832187b0132e569d6c3065a3252ed18e56effd0b6a73e524/"
                   "large-v2.pt", file="large-v2.pt",
                   sha256="81f7c96c852ee8fc832187b0132e569d6c3065a3252ed18e56effd0b6a73e524"),
    DirectDownload("Whisper small", f"{_WHISPER}/9ecf779972d90ba49c06d968637d720dd632c55bbf19d441fb42bf17a411e794/"
                   "small.pt", file="small.pt",
                   sha256="9ecf779972d90ba49c06d968637d720dd632c55bbf19d441fb42bf17a411e794"),
    DirectDownload("Whisper base", f"{_WHISPER}/ed3a0b6b1c0edf879ad9b11b1af5a0e6ab5db9205f891f668f8b0e6c6326e34e/"
                   "base.pt", file="base.pt",
                   sha256="ed3a0b6b1c0edf879ad9b11b1af5a0e6ab5db9205f891f668f8b0e6c6326e34e"),
    DirectDownload("HuBERT-Soft", "https://github.com/bshall/hubert/releases/download/v0.1/hubert-soft-0d54a1f4.pt",
                   file="hubert-soft-0d54a1f4.pt", sha256_prefix="0d54a1f4"),
    DirectDownload("RMVPE", "https://github.com/yxlllc/RMVPE/releases/download/230917/rmvpe.zip",
                   unzip=(("model.pt", "rmvpe.pt"),)),
    DirectDownload("NSF-HiFiGAN 44.1 kHz (openvpi, CC BY-NC-SA 4.0)", _NSF_HIFIGAN_ZIP,
                   unzip=(("model", "nsf_hifigan/model"), ("config.json", "nsf_hifigan/config.json"))),
)


def direct_download(file: str) -> DirectDownload | None:
    """The direct download that provides `file` (a path under the pretrain folder), if there is one."""
    return next((entry for entry in DOWNLOADS if file in entry.files), None)
