"""Where each pretrained file goes and where users get it, and one clear error when it is missing."""
from __future__ import annotations

import os
from pathlib import Path

from modules.errors import MissingPretrainedError

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
