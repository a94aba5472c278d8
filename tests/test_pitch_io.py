"""Pitch files (inference/pitch_io.py): CSV, .f0.npy and MIDI readers, refusals, fuzzing, pitch.py and the
--export_pitch / --pitch_file round trip of inference_main.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import SPEC, run_script
from inference.pitch_io import PitchFileError, read_pitch, write_pitch_csv
from tests.fuzz import fuzz_reader

SR, HOP = 44100, 512
FUZZ_FRAMES = 260


def read_fuzz_pitch(path: str):
    """The pitch reader (CSV or MIDI, by suffix) onto a fixed grid, for tests/fuzz.py."""
    return read_pitch(path, FUZZ_FRAMES, HOP, SR)


def two_notes_midi(path: Path) -> None:
    """A4 (69) for 0.5 s, a 0.5 s rest, C5 (72) for 0.5 s, at 120 bpm (480 ticks = 0.5 s)."""
    import mido

    track = mido.MidiTrack([mido.Message("note_on", note=69, velocity=90, time=0),
                            mido.Message("note_off", note=69, velocity=0, time=480),
                            mido.Message("note_on", note=72, velocity=90, time=480),
                            mido.Message("note_on", note=72, velocity=0, time=480)])
    mido.MidiFile(tracks=[track], ticks_per_beat=480).save(path)


def test_csv_round_trip(tmp_path):
    f0 = np.where(np.arange(100) % 30 < 20, 200 + np.arange(100), 0.0)
    voiced = (f0 > 0).astype(np.float32)
    write_pitch_csv(tmp_path / "p.csv", f0, voiced, HOP, SR)
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "time_s,f0_hz,voiced"
    back, on = read_pitch(tmp_path / "p.csv", 100, HOP, SR)
    np.testing.assert_allclose(back, f0, rtol=1e-6)
    np.testing.assert_array_equal(on, voiced)


def test_csv_with_another_time_step_is_resampled_in_log_frequency(tmp_path):
    (tmp_path / "p.csv").write_text("time_s,f0_hz,voiced\n0,100,1\n0.5,400,1\n0.75,0,0\n1.0,0,0\n")
    f0, voiced = read_pitch(tmp_path / "p.csv", 87, HOP, SR)
    middle = round(0.25 * SR / HOP)
    assert f0[middle] == pytest.approx(200, rel=0.02)  # halfway in log-frequency, not 250
    assert voiced[:40].all() and not voiced[70:].any() and (f0[70:] == 0).all()


@pytest.mark.parametrize("text, found", [
    ("", ":1: is empty"),
    ("time,f0_hz,voiced\n0,1,1\n", ":1: the header lacks the column(s) time_s"),
    ("time_s,f0_hz,voiced\n0,100,1\n0.1,abc,1\n", ":3: f0_hz 'abc' is not a number"),
    ("time_s,f0_hz,voiced\n0,nan,1\n", ":2: f0_hz is 'nan'"),
    ("time_s,f0_hz,voiced\n0,inf,1\n", ":2: f0_hz is 'inf'"),
    ("time_s,f0_hz,voiced\n0,-5,1\n", ":2: f0_hz -5 is negative"),
    ("time_s,f0_hz,voiced\n0,100,1\n0.5,100,1\n0.5,100,1\n", ":4: time_s 0.5 does not increase"),
    ("time_s,f0_hz,voiced\n0,100,2\n", ":2: voiced 2 must be 0 or 1"),
    ("time_s,f0_hz,voiced\n0,100\n", ":2: has 2 column(s)"),
])
def test_bad_csv_is_refused_with_its_line(tmp_path, text, found):
    (tmp_path / "p.csv").write_text(text)
    with pytest.raises(PitchFileError) as error:
        read_pitch(tmp_path / "p.csv", 40, HOP, SR)
    assert found in str(error.value) and str(tmp_path / "p.csv") in str(error.value)
    assert "\n" not in str(error.value)


def test_too_many_rows_and_bytes_are_refused(tmp_path, monkeypatch):
    import inference.pitch_io as pitch_io

    (tmp_path / "p.csv").write_text("time_s,f0_hz,voiced\n" + "".join(f"{i / 100},100,1\n" for i in range(50)))
    monkeypatch.setattr(pitch_io, "MAX_ROWS", 10)
    with pytest.raises(PitchFileError, match=r"p.csv:12: more than 10 rows"):
        read_pitch(tmp_path / "p.csv", 40, HOP, SR)
    monkeypatch.setattr(pitch_io, "MAX_CSV_BYTES", 100)
    with pytest.raises(PitchFileError, match=r"bytes; a pitch CSV holds at most 100"):
        read_pitch(tmp_path / "p.csv", 40, HOP, SR)


def test_length_mismatch_is_refused_with_both_lengths(tmp_path):
    write_pitch_csv(tmp_path / "p.csv", np.full(100, 200.0), np.ones(100), HOP, SR)  # 1.15 s
    with pytest.raises(PitchFileError, match=r"lasts 1.15 s but the input lasts 3.48 s"):
        read_pitch(tmp_path / "p.csv", 300, HOP, SR)


def test_midi_notes_give_the_pitch_and_the_rest_is_unvoiced(tmp_path):
    two_notes_midi(tmp_path / "song.mid")
    f0, voiced = read_pitch(tmp_path / "song.mid", round(2.0 * SR / HOP), HOP, SR)
    frame = lambda seconds: round(seconds * SR / HOP)  # noqa: E731
    assert f0[frame(0.25)] == pytest.approx(440.0) and voiced[frame(0.25)] == 1
    assert f0[frame(0.75)] == 0 and voiced[frame(0.75)] == 0
    assert f0[frame(1.25)] == pytest.approx(440 * 2 ** (3 / 12)) and voiced[frame(1.25)] == 1
    assert not voiced[frame(1.6):].any()


def test_damaged_midi_is_refused(tmp_path):
    (tmp_path / "bad.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00")
    with pytest.raises(PitchFileError, match="is not a readable MIDI file"):
        read_pitch(tmp_path / "bad.mid", 40, HOP, SR)


def test_f0_npy_of_the_preprocessing_is_read(tmp_path):
    f0 = np.full(172, 330.0)
    uv = np.ones(172)
    uv[100:] = 0
    np.save(tmp_path / "a.wav.f0.npy", np.asanyarray((f0, uv), dtype=object), allow_pickle=True)
    out, voiced = read_pitch(tmp_path / "a.wav.f0.npy", 172 * 2, 256, SR)  # another hop: twice the frames
    assert voiced[:195].all() and not voiced[205:].any()
    np.testing.assert_allclose(out[:195], 330.0)


@pytest.mark.parametrize("name", ["csv", "midi"])
def test_mutated_pitch_files_are_refused_without_crashing(tmp_path, name):
    if name == "csv":
        f0 = np.where(np.arange(FUZZ_FRAMES) % 50 < 30, 220.0, 0.0)
        write_pitch_csv(tmp_path / "seed.csv", f0, f0 > 0, HOP, SR)
        seed, reader = tmp_path / "seed.csv", "tests.test_pitch_io:read_fuzz_pitch"
    else:
        two_notes_midi(tmp_path / "seed.mid")
        seed, reader = tmp_path / "seed.mid", "tests.test_pitch_io:read_fuzz_pitch"
    report = fuzz_reader(reader, [seed], cases=2000, seed=5, keep_dir=tmp_path, timeout=120)
    assert report.ok, report.summary()


def test_pitch_script_finds_a_220_hz_tone(tmp_path):
    t = np.arange(2 * SR) / SR
    sf.write(tmp_path / "tone.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SR)
    run_script("pitch.py", "-n", "tone.wav", "-f0p", "pm", "-o", "out.csv", cwd=tmp_path)
    rows = np.loadtxt(tmp_path / "out.csv", delimiter=",", skiprows=1)
    voiced = rows[rows[:, 2] == 1, 1]
    assert len(voiced) > 0.8 * len(rows)
    assert np.abs(voiced / 220 - 1).max() < 0.01


@pytest.mark.skipif(not SPEC.is_dir(), reason="needs the shared spec folder (tiny model fixtures)")
def test_exported_pitch_given_back_converts_to_the_same_audio(tmp_path):
    from tests.tiny_model import SR as MODEL_SR, add_content_encoder, add_vocoder, save_model, tone

    save_model(tmp_path)
    add_content_encoder(tmp_path)
    add_vocoder(tmp_path)
    (tmp_path / "raw").mkdir()
    sf.write(tmp_path / "raw" / "song.wav", tone(2.0, start=0.3), MODEL_SR)
    common = ("-m", "G_1.pth", "-c", "config.json", "-d", "cpu", "-n", "song.wav", "-s", "alto", "-wf", "wav")
    run_script("inference_main.py", *common, "-t", "3", "--export_pitch", cwd=tmp_path)
    exported = tmp_path / "results" / "song.wav_3key_alto_sovits_pm_step1.pitch.csv"
    assert exported.is_file()
    run_script("inference_main.py", *common, "--pitch_file", str(exported), cwd=tmp_path)
    first, _ = sf.read(tmp_path / "results" / "song.wav_3key_alto_sovits_pm_step1.wav", dtype="float32")
    second, _ = sf.read(tmp_path / "results" / "song.wav_0key_alto_sovits_pm_step1_pitchfile.wav", dtype="float32")
    np.testing.assert_allclose(second, first, atol=1e-4)
    refused = run_script("inference_main.py", *common, "-t", "2", "--pitch_file", str(exported), cwd=tmp_path,
                         check=False)
    assert refused.returncode != 0 and "-t must be 0" in refused.stderr
