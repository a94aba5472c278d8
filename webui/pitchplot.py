"""The figure under a conversion: the output's spectrogram with the input's (transposed) and the output's pitch.

Drawn with numpy and Pillow into an RGB array, so the page needs no plotting library.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

WIDTH, HEIGHT = 900, 300
LOW_HZ, HIGH_HZ = 50.0, 2000.0       # log-frequency axis: every singing pitch and its first harmonics
N_FFT = 2048
FLOOR_DB = -80.0
PALETTE = np.array([[10, 10, 30], [70, 20, 110], [190, 60, 90], [250, 200, 70]], dtype=np.float32)
INPUT_COLOUR, OUTPUT_COLOUR = (80, 220, 255), (255, 140, 30)
TICKS_HZ = (100, 200, 500, 1000)


def spectrogram_db(audio: np.ndarray, hop: int) -> np.ndarray:
    """Magnitude in dB relative to the peak, `[N_FFT // 2 + 1, frames]`."""
    padded = np.pad(np.asarray(audio, dtype=np.float32), (N_FFT // 2, N_FFT // 2))
    frames = max((len(padded) - N_FFT) // hop + 1, 1)
    padded = np.pad(padded, (0, max(N_FFT + (frames - 1) * hop - len(padded), 0)))
    index = np.arange(N_FFT)[None, :] + hop * np.arange(frames)[:, None]
    magnitude = np.abs(np.fft.rfft(padded[index] * np.hanning(N_FFT), axis=1)).T
    db = 20 * np.log10(np.maximum(magnitude, 1e-9))
    return np.maximum(db - db.max(), FLOOR_DB)


def row_of(hz: np.ndarray | float) -> np.ndarray:
    """Image row (0 at the top) of a frequency on the log axis."""
    position = np.log(np.clip(hz, LOW_HZ, HIGH_HZ) / LOW_HZ) / np.log(HIGH_HZ / LOW_HZ)
    return (1 - position) * (HEIGHT - 1)


def colour(db: np.ndarray) -> np.ndarray:
    """dB (FLOOR_DB..0) -> RGB through PALETTE."""
    scaled = (db - FLOOR_DB) / -FLOOR_DB * (len(PALETTE) - 1)
    low = np.clip(np.floor(scaled).astype(int), 0, len(PALETTE) - 2)
    share = (scaled - low)[..., None]
    return PALETTE[low] * (1 - share) + PALETTE[low + 1] * share


def spectrogram_image(audio: np.ndarray, sr: int, hop: int) -> Image.Image:
    db = spectrogram_db(audio, hop)
    row_hz = LOW_HZ * (HIGH_HZ / LOW_HZ) ** (1 - np.arange(HEIGHT) / (HEIGHT - 1))
    bins = np.arange(db.shape[0]) * sr / N_FFT
    on_axis = np.stack([np.interp(row_hz, bins, column) for column in db.T], axis=1)
    image = Image.fromarray(colour(on_axis).astype(np.uint8), "RGB")
    return image.resize((WIDTH, HEIGHT), Image.BILINEAR)


def draw_pitch(draw: ImageDraw.ImageDraw, f0: np.ndarray, fill: tuple[int, int, int]) -> None:
    """A line per voiced run of `f0` (Hz, 0 where unvoiced), stretched over the image width."""
    f0 = np.asarray(f0, dtype=np.float64)
    if len(f0) < 2:
        return
    xs, ys = np.linspace(0, WIDTH - 1, len(f0)), row_of(f0)
    run: list[tuple[float, float]] = []
    for x, y, voiced in zip(xs, ys, f0 > 0):
        if voiced:
            run.append((float(x), float(y)))
        elif run:
            if len(run) > 1:
                draw.line(run, fill=fill, width=2)
            run = []
    if len(run) > 1:
        draw.line(run, fill=fill, width=2)


def pitch_figure(output: np.ndarray, sr: int, hop: int, input_f0: np.ndarray, output_f0: np.ndarray,
                 semitones: float = 0.0) -> np.ndarray:
    """RGB `[HEIGHT, WIDTH, 3]` uint8: the output's spectrogram, input pitch (shifted) and output pitch."""
    image = spectrogram_image(output, sr, hop)
    draw = ImageDraw.Draw(image)
    for hz in TICKS_HZ:
        y = float(row_of(hz))
        draw.line([(0, y), (8, y)], fill=(220, 220, 220))
        draw.text((11, y - 6), f"{hz} Hz", fill=(220, 220, 220))
    draw_pitch(draw, input_f0, INPUT_COLOUR)
    draw_pitch(draw, output_f0, OUTPUT_COLOUR)
    shift = f" {semitones:+g} st" if semitones else ""
    draw.text((WIDTH - 250, HEIGHT - 18), f"input pitch{shift}", fill=INPUT_COLOUR)
    draw.text((WIDTH - 120, HEIGHT - 18), "output pitch", fill=OUTPUT_COLOUR)
    return np.asarray(image)
