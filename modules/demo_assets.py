"""The speech encoder the demo uses (whisper-ppg-base), found or made in the most useful way available.

Order: a `base.pt` already in the pretrain folder; OpenAI's Whisper base downloaded (sha256 checked); the
encoder-only copy in the shared assets folder; and only as a last resort a seeded random-weight encoder of
Whisper base's shape, which lets the pipeline run end to end but cannot convert a voice. The random file is
marked inside (key `random_weights`), so a later run replaces it as soon as a real encoder can be had.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from loguru import logger

from modules.download import MIRROR_ENV, ChecksumError, DownloadError, download, mirror_url
from modules.fileio import atomic_path, torch_save
from modules.pretrained import DirectDownload, direct_download
from vencoder import ENCODERS
from vencoder.whisper import AudioEncoder, AudioEncoderDims

DEMO_ENCODER = "whisper-ppg-base"
RANDOM_MARKER = "random_weights"
WHISPER_BASE = AudioEncoderDims(n_mels=80, n_audio_ctx=1500, n_audio_state=512, n_audio_head=8, n_audio_layer=6)
SHARED_ENCODER = Path("assets") / "whisper" / "base_encoder.pt"  # under the shared folder


def resolve_demo_encoder(pretrain_dir: str | os.PathLike, shared_dir: str | os.PathLike = Path("../shared"),
                         allow_download: bool = True, *, base_url: str | None = None,
                         remote: DirectDownload | None = None, timeout: float = 10.0,
                         seed: int = 0) -> tuple[str, Path, str]:
    """Make `<pretrain_dir>/base.pt` usable; return (encoder name, its path, where it came from, in one line).

    `base_url` is a download mirror (default: $SVC_DOWNLOAD_MIRROR); `remote` replaces the table's URL and
    sha256 (tests); `timeout` keeps the attempt short when there is no network.
    """
    target = Path(pretrain_dir) / ENCODERS[DEMO_ENCODER].file
    placeholder = target.is_file() and is_random_placeholder(target)
    if target.is_file() and not placeholder:
        return DEMO_ENCODER, target, f"{target} (already present)"
    if allow_download:
        source = _try_download(target, remote or direct_download(target.name),
                               base_url or os.environ.get(MIRROR_ENV), timeout)
        if source:
            return DEMO_ENCODER, target, source
    shared_copy = Path(shared_dir) / SHARED_ENCODER
    if shared_copy.is_file():
        with atomic_path(target) as tmp:
            shutil.copyfile(shared_copy, tmp)
        logger.info(f"using the Whisper base encoder from {shared_copy} (copied to {target})")
        return DEMO_ENCODER, target, f"the Whisper base encoder from {shared_copy}, copied to {target}"
    if not placeholder:
        torch_save(random_whisper_checkpoint(WHISPER_BASE, seed), target)
    _announce_random(target, shared_copy)
    return DEMO_ENCODER, target, (f"{target}: RANDOM weights (seed {seed}), not a real encoder; the demo's "
                                  "conversion will not sound like the target voice")


def _try_download(target: Path, remote: DirectDownload, base_url: str | None, timeout: float) -> str | None:
    """Download Whisper base to `target`; the description on success, None (with a warning) on failure."""
    url = mirror_url(remote.url, base_url)
    logger.info(f"fetching Whisper base for the demo from {url}")
    try:
        download(url, target, remote.sha256, remote.sha256_prefix, timeout=timeout, desc="Whisper base")
    except DownloadError as error:
        logger.warning(f"no network: could not fetch Whisper base ({error})")
        return None
    except ChecksumError as error:
        logger.warning(f"could not fetch Whisper base: {error}")
        return None
    return f"OpenAI Whisper base, downloaded from {url} (sha256 checked)"


def _announce_random(target: Path, shared_copy: Path) -> None:
    url = direct_download(target.name).url
    logger.warning(
        "\n" + "!" * 78 + "\n"
        f"RANDOM SPEECH ENCODER: no real Whisper base is available (no download, no {shared_copy}).\n"
        f"{target} holds seeded RANDOM weights of Whisper base's shape. Every step runs, but the demo's\n"
        "conversion will not sound like the target voice.\n"
        f"For a real result put OpenAI's base.pt ({url}) at {target} and run the demo again.\n"
        + "!" * 78)


def is_random_placeholder(path: str | os.PathLike) -> bool:
    """True for a file written by `random_whisper_checkpoint` (read lazily: the tensors stay on disk)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # any unreadable file is not ours; the encoder's loader reports it properly
        return False
    return isinstance(checkpoint, dict) and RANDOM_MARKER in checkpoint


def random_whisper_checkpoint(dims: AudioEncoderDims, seed: int = 0) -> dict:
    """An encoder-only openai-whisper checkpoint with seeded random weights (float16, like the real files).

    The weights are PyTorch's default initialisation drawn from `seed`; the global random state is
    restored afterwards.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = AudioEncoder(dims)
    state = {f"encoder.{name}": tensor.half() for name, tensor in encoder.state_dict().items()}
    return {"dims": asdict(dims), "model_state_dict": state, RANDOM_MARKER: {"seed": seed}}
