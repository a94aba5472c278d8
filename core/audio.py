"""Reading, resampling and writing audio.

soundfile reads every format libsndfile knows (wav, flac, ogg, mp3 with libsndfile >= 1.1) at any
bit depth and channel count; soxr resamples. Bad files raise AudioError naming the file.

Memory stays bounded whatever a header claims: a file may hold at most MAX_AUDIO_SAMPLES samples (frames x
channels), a header of an uncompressed format may not claim more samples than the file's bytes hold, and the
samples are decoded block by block, so a compressed file claiming billions of frames costs only what it really
decodes to.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import soundfile
import soxr

from core.errors import AudioError
from core.fileio import atomic_path

# The most samples (frames x channels) one file may hold: 2 GiB as float32. That is ~93 min of 48 kHz stereo,
# ~101 min of 44.1 kHz stereo, ~23 min of 192 kHz stereo; longer recordings are split into parts first.
MAX_AUDIO_SAMPLES = 2 ** 29
READ_BLOCK_FRAMES = 2 ** 18              # frames decoded at a time
UNKNOWN_LENGTH = 2 ** 63 - 1             # libsndfile's frame count of a stream that does not state its length
SAMPLE_BYTES = {"PCM_S8": 1, "PCM_U8": 1, "ULAW": 1, "ALAW": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4,
                "FLOAT": 4, "DOUBLE": 8}  # uncompressed subtypes: bytes per sample
COMPRESSED_FORMATS = frozenset({"FLAC", "OGG", "MP3", "MPEG"})  # subtype PCM_16 in FLAC is a bit depth, not a size
READ_ERRORS = (soundfile.LibsndfileError, RuntimeError, OSError, TypeError, ValueError, EOFError)


def load_audio(path: str | os.PathLike, sr: int | None = None, mono: bool = True) -> tuple[np.ndarray, int]:
    """Read `path` as float32 in [-1, 1] (mono by channel mean unless mono=False, then [channels, N]).

    With `sr`, the audio is resampled to that rate. Empty files, NaN/inf samples and files over
    MAX_AUDIO_SAMPLES (before or after resampling) are refused.
    """
    path = Path(path)
    name = f"audio {path}"
    try:
        with soundfile.SoundFile(str(path)) as sound:
            audio = read_sound(sound, name, os.path.getsize(path), mono)
            file_sr = sound.samplerate
    except READ_ERRORS as error:
        raise AudioError(f"cannot read {name}: {read_error_reason(error)}") from None
    if sr is not None and sr != file_sr:
        check_resampled_size(audio.shape[-1] * (audio.shape[0] if audio.ndim == 2 else 1), file_sr, sr, name)
        audio = resample(audio, file_sr, sr)
        file_sr = sr
    return np.ascontiguousarray(audio, dtype=np.float32), int(file_sr)


def read_sound(sound: soundfile.SoundFile, name: str, size: int, mono: bool = True) -> np.ndarray:
    """The samples of an open file of `size` bytes: [N] (channel mean) or, with mono=False, [channels, N].

    `name` begins the messages ("audio x.wav", "the uploaded file 'sample'"). The header's claim is checked
    first (check_claim); blocks are then decoded one at a time and checked for NaN/inf as they come."""
    check_claim(sound, name, size)
    blocks, frames = [], 0
    limit = MAX_AUDIO_SAMPLES // sound.channels
    while True:
        block = _read_block(sound, name, frames)
        if len(block) == 0:
            break
        if not np.isfinite(block).all():
            raise AudioError(f"{name} holds NaN or infinite samples")
        frames += len(block)
        if frames > limit:
            raise AudioError(f"{name} is longer than {_too_long(sound.samplerate, sound.channels)}")
        blocks.append(block.mean(axis=1) if mono else np.ascontiguousarray(block.T))
        if len(block) < READ_BLOCK_FRAMES:
            break
    if frames == 0:
        raise AudioError(f"{name} holds no samples")
    return np.concatenate(blocks, axis=-1) if len(blocks) > 1 else blocks[0]


def _read_block(sound: soundfile.SoundFile, name: str, frames_read: int) -> np.ndarray:
    try:
        return sound.read(READ_BLOCK_FRAMES, dtype="float32", always_2d=True)
    except READ_ERRORS as error:
        claimed = "" if sound.frames == UNKNOWN_LENGTH else f" of the {sound.frames} its header claims"
        raise AudioError(f"{name} is damaged or cut short: decoding failed after {frames_read} frames{claimed} "
                         f"({read_error_reason(error)})") from None


def check_claim(sound: soundfile.SoundFile, name: str, size: int) -> None:
    """Refuse a header whose rate or channel count is impossible, that claims more than MAX_AUDIO_SAMPLES
    samples, or (uncompressed formats) more samples than the file's `size` bytes hold: reading such a file
    would allocate what the header says before finding out it lies."""
    channels, rate, frames = sound.channels, sound.samplerate, sound.frames
    if channels < 1 or rate < 1:
        raise AudioError(f"{name} is damaged: its header gives {channels} channel(s) at {rate} Hz")
    if frames == UNKNOWN_LENGTH:
        return  # a stream without a stated length: read_sound stops at the limit
    if frames * channels > MAX_AUDIO_SAMPLES:
        raise AudioError(f"{name} claims {frames} frames x {channels} channel(s) ({frames / rate / 60:.0f} min at "
                         f"{rate} Hz), more than {_too_long(rate, channels)}; split it into shorter files, "
                         "or replace it if it is damaged")
    width = None if sound.format in COMPRESSED_FORMATS else SAMPLE_BYTES.get(sound.subtype)
    if width is not None and frames * channels * width > size:
        raise AudioError(f"{name} is damaged: its header claims {frames} frames x {channels} channel(s) of "
                         f"{sound.subtype} ({frames * channels * width} bytes) but the file has {size} bytes")


def check_resampled_size(samples: int, sr_in: int, sr_out: int, name: str) -> None:
    """Refuse resampling that would give more than MAX_AUDIO_SAMPLES samples (a header claiming 1 Hz)."""
    if samples * sr_out / sr_in > MAX_AUDIO_SAMPLES:
        raise AudioError(f"{name} at {sr_in} Hz would become {samples * sr_out // sr_in} samples at {sr_out} Hz, "
                         f"more than the {MAX_AUDIO_SAMPLES} read at once; is its sample rate damaged?")


def _too_long(rate: int, channels: int) -> str:
    minutes = MAX_AUDIO_SAMPLES / channels / rate / 60
    return f"the {MAX_AUDIO_SAMPLES} samples read at once ({minutes:.0f} min at {rate} Hz, {channels} channel(s))"


def read_error_reason(error: BaseException) -> str:
    """soundfile's reason without its "Error opening <file>:" prefix, which repeats the path or shows an
    in-memory file's object address."""
    text = str(getattr(error, "error_string", None) or error).strip()
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the file", re.sub(r"^Error opening .*?: ", "", text))
    return text.splitlines()[0] if text else type(error).__name__


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample along the last axis with soxr's very-high-quality filter."""
    if sr_in == sr_out:
        return audio.astype(np.float32, copy=False)
    if audio.ndim == 1:
        return soxr.resample(audio, sr_in, sr_out, quality="VHQ").astype(np.float32)
    return soxr.resample(audio.T, sr_in, sr_out, quality="VHQ").T.astype(np.float32)


def fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Cut or zero-pad `[N]` audio at the end to exactly `length` samples."""
    if len(audio) >= length:
        return audio[:length]
    return np.pad(audio, (0, length - len(audio)))


def write_audio(path: str | os.PathLike, audio: np.ndarray, sr: int, subtype: str | None = "PCM_16",
                format: str | None = None) -> None:
    """Write audio atomically. The format follows the extension unless `format` is given."""
    path = Path(path)
    fmt = (format or path.suffix.lstrip(".") or "wav").upper()
    with atomic_path(path, suffix=path.suffix or ".wav") as tmp:
        soundfile.write(str(tmp), np.asarray(audio), sr, subtype=subtype, format=fmt)
