"""Uploaded audio in, encoded audio out, entirely in memory (nothing a client sends touches the disk by name)."""
from __future__ import annotations

import io

import numpy as np
import soundfile

from core.audio import fit_length, resample
from core.errors import SvcError
from inference.preflight import check_output_format
from server.errors import PayloadTooLarge, RequestError
from server.settings import Limits

READ_ERRORS = (soundfile.LibsndfileError, RuntimeError, OSError, TypeError, ValueError)


def decode_upload(data: bytes, field: str, limits: Limits) -> tuple[np.ndarray, int]:
    """The uploaded file `data` as mono float32 and its rate; empty, unreadable, NaN or too long is refused."""
    if not data:
        raise RequestError(f"the uploaded file '{field}' is empty")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            seconds = sound.frames / sound.samplerate if sound.frames > 0 else 0.0
            if seconds > limits.max_seconds:
                raise PayloadTooLarge(f"'{field}' is {seconds:.1f} s long; this server converts at most "
                                      f"{limits.max_seconds:g} s per request (--max_seconds)")
            samples = sound.read(dtype="float32", always_2d=True)
            sr = sound.samplerate
    except READ_ERRORS as error:
        raise RequestError(f"the uploaded file '{field}' is not audio soundfile can read ({error})") from None
    return check_samples(samples.mean(axis=1), field, sr, limits), int(sr)


def check_samples(audio: np.ndarray, field: str, sr: int, limits: Limits) -> np.ndarray:
    if len(audio) == 0:
        raise RequestError(f"the uploaded file '{field}' holds no samples")
    if not np.isfinite(audio).all():
        raise RequestError(f"the uploaded file '{field}' holds NaN or infinite samples")
    if not limits.min_sample_rate <= sr <= limits.max_sample_rate:
        raise RequestError(f"the uploaded file '{field}' has a sample rate of {sr} Hz; "
                           f"{limits.min_sample_rate}..{limits.max_sample_rate} Hz is accepted")
    return np.ascontiguousarray(audio, dtype=np.float32)


def to_rate(audio: np.ndarray, sr_in: int, sr_out: int, length: int) -> np.ndarray:
    """Resample to `sr_out` and cut or pad to exactly `length` samples."""
    return fit_length(resample(audio, sr_in, sr_out), length)


def check_format(wav_format: str, sr: int) -> None:
    """inference_main.py's -wf check, its message naming the request field."""
    try:
        check_output_format(wav_format, sr)
    except SvcError as error:
        raise RequestError(str(error).replace("-wf/--wav_format", "wav_format")) from None


def encode_audio(audio: np.ndarray, sr: int, wav_format: str = "wav", subtype: str | None = None) -> bytes:
    """`audio` as a file of `wav_format` (soundfile's default subtype: 16-bit PCM for wav and flac)."""
    check_format(wav_format, sr)
    buffer = io.BytesIO()
    clipped = np.clip(np.nan_to_num(audio), -1.0, 1.0)
    soundfile.write(buffer, clipped, sr, format=wav_format.upper(), subtype=subtype)
    return buffer.getvalue()


def media_type(wav_format: str) -> str:
    return {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg", "mp3": "audio/mpeg"}.get(
        wav_format.lower(), "application/octet-stream")
