"""Where each pretrained file goes and where users get it, and one clear error when it is missing.

Encoder and F0 predictor files are described by their records in core.registry; this module adds the
files of neither family and the views (SOURCES, DOWNLOADS) that look files up across all of them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from core.errors import MissingPretrainedError
from core.registry import DirectDownload, all_records

_NSF_HIFIGAN_SOURCE = ("https://github.com/openvpi/vocoders/releases (nsf-hifigan-v1/nsf_hifigan_20221211.zip; "
                       "unpack it into pretrain/nsf_hifigan/)")
_NSF_HIFIGAN_ZIP = "https://github.com/openvpi/vocoders/releases/download/nsf-hifigan-v1/nsf_hifigan_20221211.zip"


@dataclass(frozen=True)
class OtherPretrained:
    """Pretrained files that belong to no encoder or F0 predictor (paths under the pretrain folder)."""
    files: tuple[str, ...]
    source: str
    download: DirectDownload | None = None


# download_pretrained.py name -> files outside both registries
OTHER_PRETRAINED: dict[str, OtherPretrained] = {
    "nsf_hifigan": OtherPretrained(
        files=("nsf_hifigan/model", "nsf_hifigan/config.json"), source=_NSF_HIFIGAN_SOURCE,
        download=DirectDownload("NSF-HiFiGAN 44.1 kHz (openvpi, CC BY-NC-SA 4.0)", _NSF_HIFIGAN_ZIP,
                                unzip=(("model", "nsf_hifigan/model"), ("config.json", "nsf_hifigan/config.json")))),
}


def _sources() -> dict[str, str]:
    """File name under pretrain/ (without folders) -> where users get it."""
    sources = {record.file: record.source for record in all_records() if record.file and record.source}
    for other in OTHER_PRETRAINED.values():
        sources.update((PurePosixPath(file).name, other.source) for file in other.files)
    return sources


def _downloads() -> tuple[DirectDownload, ...]:
    """Each direct download once: the records' (encoders, then F0 predictors), then the other files'."""
    found = [record.download for record in all_records() if record.download]
    found += [other.download for other in OTHER_PRETRAINED.values() if other.download]
    return tuple(dict.fromkeys(found))


# Views of the registries: file name -> where users get it, and the files with a direct URL. The others
# (ContentVec, CN-HuBERT, DPHuBERT, WavLM, the MoeSS ONNX encoders, fcpe) have no stable direct URL: users
# fetch them by hand from the place SOURCES names.
SOURCES: dict[str, str] = _sources()
DOWNLOADS: tuple[DirectDownload, ...] = _downloads()


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


def direct_download(file: str) -> DirectDownload | None:
    """The direct download that provides `file` (a path under the pretrain folder), if there is one."""
    return next((entry for entry in DOWNLOADS if file in entry.files), None)
