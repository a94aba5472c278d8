"""Pitch files a user controls: write and read `time_s,f0_hz,voiced` CSVs, and read `.f0.npy` and MIDI files.

Every reader returns (f0 Hz `[T]`, voiced `[T]`) on the model's frame grid (frame i at i * hop / sample_rate
seconds), with f0 0 where unvoiced. Rows on another time step are resampled: f0 by linear interpolation in
log-frequency between voiced rows, voicing from the nearest row. A CSV or `.f0.npy` whose duration differs
from the input's by more than `duration_tolerance` is refused; a MIDI file only when its notes run past it.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

import numpy as np

from core.errors import SvcError

HEADER = ("time_s", "f0_hz", "voiced")
MAX_ROWS = 10_000_000
MAX_CSV_BYTES = 512 * 1024 * 1024
MAX_MIDI_BYTES = 64 * 1024 * 1024
DATASET_SR, DATASET_HOP = 44100, 512  # the frame grid of preprocess_hubert_f0.py's .f0.npy files
MIDI_SUFFIXES = (".mid", ".midi")


class PitchFileError(SvcError):
    """A pitch file (CSV, .f0.npy, MIDI) cannot be used."""


def duration_tolerance(seconds: float) -> float:
    """How far a pitch file's duration may differ from the input's: 1 s, or 10 % of a longer input."""
    return max(1.0, 0.1 * seconds)


def write_pitch_csv(path: str | os.PathLike, f0: np.ndarray, voiced: np.ndarray, hop: int, sr: int) -> None:
    """One row per model frame; f0 is written as 0 where unvoiced."""
    f0 = np.asarray(f0, dtype=np.float64)
    on = np.asarray(voiced) > 0.5
    lines = [",".join(HEADER)]
    lines += [f"{i * hop / sr:.9f},{(value if flag else 0.0):.10g},{int(flag)}"
              for i, (value, flag) in enumerate(zip(f0.tolist(), on.tolist()))]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_pitch(path: str | os.PathLike, n_frames: int, hop: int, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """A pitch CSV, `.f0.npy` or MIDI file -> (f0 `[n_frames]`, voiced `[n_frames]` float32) on the model grid."""
    name = str(path).lower()
    if name.endswith(MIDI_SUFFIXES):
        return read_midi_pitch(path, n_frames, hop, sr)
    if name.endswith(".npy"):
        return read_npy_pitch(path, n_frames, hop, sr)
    return read_pitch_csv(path, n_frames, hop, sr)


def read_pitch_csv(path: str | os.PathLike, n_frames: int, hop: int, sr: int) -> tuple[np.ndarray, np.ndarray]:
    times, f0, voiced = parse_pitch_csv(path)
    check_duration(path, float(times[-1]), n_frames, hop, sr)
    return resample_pitch(times, f0, voiced, n_frames, hop, sr)


def read_npy_pitch(path: str | os.PathLike, n_frames: int, hop: int, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """preprocess_hubert_f0.py's `X.wav.f0.npy` (filled f0 and uv at hop 512, 44.1 kHz)."""
    from core.feature_io import load_f0

    f0, uv = load_f0(path)
    if len(f0) == 0:
        raise PitchFileError(f"{path}: holds no frames")
    if not (np.isfinite(f0).all() and np.isfinite(uv).all()) or (f0 < 0).any():
        raise PitchFileError(f"{path}: holds NaN, infinite or negative f0 values")
    times = np.arange(len(f0)) * DATASET_HOP / DATASET_SR
    check_duration(path, float(times[-1]), n_frames, hop, sr)
    return resample_pitch(times, f0, uv > 0.5, n_frames, hop, sr)


def check_duration(path: str | os.PathLike, seconds: float, n_frames: int, hop: int, sr: int) -> None:
    expected = n_frames * hop / sr
    if abs(seconds - expected) > duration_tolerance(expected):
        raise PitchFileError(f"{path}: lasts {seconds:.2f} s but the input lasts {expected:.2f} s "
                             f"(at most {duration_tolerance(expected):.2f} s apart)")


def resample_pitch(times: np.ndarray, f0: np.ndarray, voiced: np.ndarray, n_frames: int, hop: int, sr: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Rows at increasing `times` -> the model grid: log-f0 interpolated over voiced rows, voicing of the
    nearest row."""
    grid = np.arange(n_frames) * hop / sr
    on = np.asarray(voiced, dtype=bool) & (f0 > 0)
    nearest = _nearest_rows(times, grid)
    out_voiced = on[nearest] if len(times) else np.zeros(n_frames, dtype=bool)
    if not on.any():
        return np.zeros(n_frames, dtype=np.float64), out_voiced.astype(np.float32)
    log_f0 = np.interp(grid, times[on], np.log(f0[on]))
    out = np.where(out_voiced, np.exp(log_f0), 0.0)
    return out, out_voiced.astype(np.float32)


def _nearest_rows(times: np.ndarray, grid: np.ndarray) -> np.ndarray:
    right = np.clip(np.searchsorted(times, grid), 0, len(times) - 1)
    left = np.clip(right - 1, 0, len(times) - 1)
    return np.where(np.abs(grid - times[left]) <= np.abs(times[right] - grid), left, right)


# ----- CSV ----------------------------------------------------------------------------------------

def parse_pitch_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (times, f0, voiced) of the rows, checked; PitchFileError naming the file and line otherwise."""
    text = _read_text(path)
    rows = csv.reader(io.StringIO(text, newline=""))
    columns = _header_columns(path, rows)
    times, f0s, flags = [], [], []
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(times) >= MAX_ROWS:
            raise PitchFileError(f"{path}:{rows.line_num}: more than {MAX_ROWS} rows")
        time, f0, flag = _parse_row(path, rows.line_num, row, columns)
        if times and time <= times[-1]:
            raise PitchFileError(f"{path}:{rows.line_num}: time_s {time:g} does not increase "
                                 f"(the row before is at {times[-1]:g})")
        times.append(time)
        f0s.append(f0)
        flags.append(flag)
    if not times:
        raise PitchFileError(f"{path}: has a header but no rows")
    return np.array(times), np.array(f0s), np.array(flags, dtype=bool)


def _read_text(path: str | os.PathLike) -> str:
    try:
        size = os.path.getsize(path)
        if size > MAX_CSV_BYTES:
            raise PitchFileError(f"{path}: {size} bytes; a pitch CSV holds at most {MAX_CSV_BYTES}")
        return Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise PitchFileError(f"{path}: is not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise PitchFileError(f"{path}: cannot be read ({error.strerror or error})") from None


def _header_columns(path: str | os.PathLike, rows) -> tuple[int, int, int]:
    try:
        header = next(rows, None)
    except csv.Error as error:
        raise PitchFileError(f"{path}:{rows.line_num}: is not CSV ({error})") from None
    if header is None:
        raise PitchFileError(f"{path}:1: is empty; expected the header {','.join(HEADER)}")
    names = [cell.strip().lower() for cell in header]
    missing = [name for name in HEADER if name not in names]
    if missing:
        raise PitchFileError(f"{path}:{rows.line_num}: the header lacks the column(s) {', '.join(missing)} "
                             f"(expected {','.join(HEADER)})")
    return tuple(names.index(name) for name in HEADER)


def _parse_row(path: str | os.PathLike, line: int, row: list[str], columns: tuple[int, int, int]
               ) -> tuple[float, float, bool]:
    if len(row) <= max(columns):
        raise PitchFileError(f"{path}:{line}: has {len(row)} column(s); expected {len(HEADER)}")
    time, f0, flag = (_number(path, line, name, row[i]) for name, i in zip(HEADER, columns))
    if time < 0:
        raise PitchFileError(f"{path}:{line}: time_s {time:g} is negative")
    if f0 < 0:
        raise PitchFileError(f"{path}:{line}: f0_hz {f0:g} is negative")
    if flag not in (0.0, 1.0):
        raise PitchFileError(f"{path}:{line}: voiced {flag:g} must be 0 or 1")
    return time, f0, flag == 1.0


def _number(path: str | os.PathLike, line: int, name: str, cell: str) -> float:
    try:
        value = float(cell.strip())
    except ValueError:
        raise PitchFileError(f"{path}:{line}: {name} {cell.strip()[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise PitchFileError(f"{path}:{line}: {name} is {cell.strip()[:40]!r}; it must be a finite number")
    return value


# ----- MIDI ---------------------------------------------------------------------------------------

def note_hz(note: np.ndarray | float) -> np.ndarray | float:
    return 440.0 * 2 ** ((note - 69) / 12)


def read_midi_pitch(path: str | os.PathLike, n_frames: int, hop: int, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """The notes of a MIDI file as pitch: the highest sounding note per frame, unvoiced between notes."""
    notes = midi_notes(path)
    if notes:
        last = max(end for _, end, _ in notes)
        expected = n_frames * hop / sr
        if last - expected > duration_tolerance(expected):
            raise PitchFileError(f"{path}: its notes last {last:.2f} s but the input lasts {expected:.2f} s")
    highest = np.full(n_frames, -1.0)
    rate = sr / hop
    for start, end, note in notes:
        first, stop = math.ceil(start * rate), min(math.ceil(end * rate), n_frames)
        if first < stop:
            highest[first:stop] = np.maximum(highest[first:stop], note)
    voiced = highest >= 0
    f0 = np.where(voiced, note_hz(highest), 0.0)
    return f0, voiced.astype(np.float32)


def midi_notes(path: str | os.PathLike) -> list[tuple[float, float, int]]:
    """(start s, end s, note number) of every note; a note still on at the end ends with the file."""
    import mido

    try:
        size = os.path.getsize(path)
    except OSError as error:
        raise PitchFileError(f"{path}: cannot be read ({error.strerror or error})") from None
    if size > MAX_MIDI_BYTES:
        raise PitchFileError(f"{path}: {size} bytes; a MIDI file holds at most {MAX_MIDI_BYTES}")
    try:
        messages = list(mido.MidiFile(path))
    except Exception as error:  # mido raises many types on a damaged file (EOFError, KeyError, IOError ...)
        raise PitchFileError(f"{path}: is not a readable MIDI file ({_first_line(error)})") from None
    return _collect_notes(messages)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:120] if text else type(error).__name__


def _collect_notes(messages: list) -> list[tuple[float, float, int]]:
    now, sounding, notes = 0.0, {}, []
    for message in messages:
        now += message.time
        if message.type not in ("note_on", "note_off"):
            continue
        key = (message.channel, message.note)
        if key in sounding:
            notes.append((sounding.pop(key), now, message.note))
        if message.type == "note_on" and message.velocity > 0:
            sounding[key] = now
    notes += [(start, now, note) for (_, note), start in sounding.items()]
    return notes
