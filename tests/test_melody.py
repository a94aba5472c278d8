"""What the demo reports: frame-wise f0 agreement within a tolerance after transposition, and the level of a
hop-rate buzz between the sung harmonics."""
import numpy as np
import pytest
import soundfile

from evaluation.melody import compare_files, hop_buzz_db, melody_match

SR = 44100


def cents_above(f0: np.ndarray, cents: float) -> np.ndarray:
    return f0 * 2.0 ** (cents / 1200.0)


def test_identical_tracks_match_on_their_voiced_frames():
    f0 = np.array([0.0, 220.0, 230.0, 0.0, 250.0])
    result = melody_match(f0, f0)
    assert (result.within, result.compared) == (1.0, 3)


def test_tolerance_is_in_cents():
    source = np.full(10, 300.0)
    assert melody_match(source, cents_above(source, 40)).within == 1.0
    assert melody_match(source, cents_above(source, -60)).within == 0.0
    assert melody_match(source, cents_above(source, 60), tolerance_cents=70).within == 1.0


def test_transposition_moves_the_source():
    source = np.array([200.0, 220.0, 240.0, 260.0])
    octave_up = source * 2
    assert melody_match(source, octave_up).within == 0.0
    assert melody_match(source, octave_up, semitones=12).within == 1.0
    assert melody_match(source, octave_up, semitones=11).within == 0.0


def test_unvoiced_frames_and_lengths():
    source = np.array([0.0, 200.0, 200.0, 200.0, 200.0, 200.0])
    converted = np.array([200.0, 0.0, 200.0, 400.0])  # shorter; frame 0 unvoiced in source, 1 in result
    result = melody_match(source, converted)
    assert result.compared == 2 and result.within == 0.5
    assert "50 %" in result.describe()
    nothing = melody_match(np.zeros(5), np.full(5, 100.0))
    assert (nothing.within, nothing.compared) == (0.0, 0)
    assert "no frame" in nothing.describe()


def test_compare_files_tracks_real_audio(tmp_path):
    t = np.arange(2 * SR) / SR
    glide = 200.0 * 2.0 ** (t / 2)  # one octave up over two seconds
    phase = 2 * np.pi * np.cumsum(glide) / SR
    soundfile.write(tmp_path / "source.wav", 0.5 * np.sin(phase), SR)
    soundfile.write(tmp_path / "fifth.wav", 0.5 * np.sin(phase * 1.5), SR)  # 7.02 semitones higher
    assert compare_files(tmp_path / "source.wav", tmp_path / "fifth.wav", semitones=7).within > 0.9
    assert compare_files(tmp_path / "source.wav", tmp_path / "fifth.wav", semitones=0).within == pytest.approx(0.0)


def test_hop_buzz_separates_a_sung_tone_from_a_frame_rate_buzz():
    seconds, f0 = 1.5, 300.0
    t = np.arange(int(seconds * SR)) / SR
    tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 9))
    tone += 1e-3 * np.random.default_rng(0).standard_normal(len(t))
    hop_rate = SR / 512
    pulses = sum(0.3 * np.sin(2 * np.pi * hop_rate * k * t) for k in range(1, 35))  # repeats every hop
    frames = len(t) // 512
    track = np.full(frames, f0)
    clean, buzzing = hop_buzz_db(track, tone), hop_buzz_db(track, tone + pulses)
    assert clean < -40 and buzzing > -5, (clean, buzzing)
    assert hop_buzz_db(np.full(frames, f0 / 2), tone, semitones=12) == pytest.approx(clean)
    assert hop_buzz_db(np.zeros(frames), tone) is None
