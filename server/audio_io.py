"""Uploaded audio in, encoded audio out, entirely in memory (nothing a client sends touches the disk by name)."""
from __future__ import annotations

import io

import numpy as np
import soundfile

from core.audio import READ_ERRORS, fit_length, read_error_reason, read_sound, resample
from core.errors import AudioError, SvcError
from inference.preflight import check_output_format
from server.errors import PayloadTooLarge, RequestError
from server.settings import Limits

# Float audio lies within -1..1; a sample this far beyond (60 dB) is not sound, and one past ~1e19 overflows
# float32 once squared, which turns a conversion's energies into inf and its output into NaN.
MAX_SAMPLE_MAGNITUDE = 1000.0


def decode_upload(data: bytes, field: str, limits: Limits) -> tuple[np.ndarray, int]:
    """The uploaded file `data` as mono float32 and its rate; empty, unreadable, NaN or too long is refused.

    The header's length is checked before anything is decoded, and core.audio.read_sound decodes block by
    block within its bounds, so a small upload claiming billions of frames allocates nothing of that size."""
    if not data:
        raise RequestError(f"the uploaded file '{field}' is empty")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            seconds = sound.frames / sound.samplerate if sound.frames > 0 and sound.samplerate > 0 else 0.0
            if seconds > limits.max_seconds:
                raise PayloadTooLarge(f"'{field}' is {seconds:.1f} s long; this server converts at most "
                                      f"{limits.max_seconds:g} s per request (--max_seconds)")
            samples = read_sound(sound, f"the uploaded file '{field}'", len(data))
            sr = sound.samplerate
    except AudioError as error:
        raise RequestError(str(error)) from None
    except READ_ERRORS as error:
        raise RequestError(f"the uploaded file '{field}' is not audio soundfile can read "
                           f"({read_error_reason(error)})") from None
    return check_samples(samples, f"the uploaded file '{field}'", sr, limits), int(sr)


def check_samples(audio: np.ndarray, name: str, sr: int, limits: Limits) -> np.ndarray:
    """`audio` as contiguous float32 once it is known to be convertible: some samples, none NaN, infinite or
    beyond MAX_SAMPLE_MAGNITUDE, at an accepted rate. `name` begins the messages ("the uploaded file 'sample'",
    "a block"): uploads and the stream's blocks are held to the same checks."""
    if len(audio) == 0:
        raise RequestError(f"{name} holds no samples")
    if not np.isfinite(audio).all():
        raise RequestError(f"{name} holds NaN or infinite samples")
    peak = float(np.abs(audio).max())
    if peak > MAX_SAMPLE_MAGNITUDE:
        raise RequestError(f"{name} holds samples of magnitude up to {peak:.3g}; audio lies within -1..1 and "
                           f"at most {MAX_SAMPLE_MAGNITUDE:g} is accepted")
    if not limits.min_sample_rate <= sr <= limits.max_sample_rate:
        raise RequestError(f"{name} has a sample rate of {sr} Hz; "
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
