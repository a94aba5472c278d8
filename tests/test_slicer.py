"""core/slicer.py against 4.1's cut points, and slice_audio.py run as a user would."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import soundfile

from conftest import VECTORS, run_script
from core.slicer import Segment, Slicer

SR = 44100


def _reference_cases() -> list[tuple[str, dict, list[dict]]]:
    """(label, Slicer kwargs, expected non-empty chunks) for every case in slicer_chunks.json."""
    cases = []
    for label, entry in json.loads((VECTORS / "slicer_chunks.json").read_text()).items():
        if label.startswith("cut("):
            db, min_len = map(int, re.findall(r"=(-?\d+)", label))
            kwargs = {"threshold_db": db, "min_length_ms": min_len}
        else:
            _, db, min_len, interval, hop, kept = map(int, re.findall(r"=(-?\d+)", label))
            kwargs = {"threshold_db": db, "min_length_ms": min_len, "min_interval_ms": interval,
                      "hop_size_ms": hop, "max_sil_kept_ms": kept}
        chunks = [c for c in entry["chunks"].values() if len(set(c["split_time"].split(","))) == 2]
        cases.append((label, kwargs, chunks))
    return cases


@pytest.fixture(scope="module")
def sil_tone() -> np.ndarray:
    audio, sr = soundfile.read(VECTORS / "in_sil_tone_44k.wav", dtype="float32")
    assert sr == SR
    return audio


@pytest.mark.shared
def test_rms_matches_reference(sil_tone, vector):
    expected = vector("slicer_rms_sil_tone")
    rms = Slicer(SR).rms(sil_tone)
    assert rms.shape == expected.shape == (501,)
    np.testing.assert_allclose(rms, expected, atol=1e-6)


_CASES = _reference_cases() if VECTORS.is_dir() else []


@pytest.mark.shared
@pytest.mark.parametrize("label, kwargs, expected", _CASES, ids=[f"case{i}" for i in range(len(_CASES))])
def test_cut_points_match_reference(sil_tone, label, kwargs, expected):
    """4.1's chunks minus its zero-length ranges (e.g. "282240,282240")."""
    assert list(Slicer(SR, **kwargs).chunks(sil_tone).values()) == expected


@pytest.mark.shared
def test_default_inference_cut_is_two_voiced_pieces(sil_tone):
    segments = Slicer(SR, threshold_db=-40).segments(sil_tone)
    assert segments == [Segment(0, 282240, False), Segment(282240, 441000, False)]


def _tone(seconds: float, freq: float = 220.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _silence(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(0, 1e-4, int(seconds * SR))).astype(np.float32)


def _assert_covers(segments: list[Segment], n: int) -> None:
    assert segments[0].start == 0 and segments[-1].end == n
    assert all(a.end == b.start for a, b in zip(segments, segments[1:]))
    assert all(s.end > s.start for s in segments)


def test_segments_cover_the_input_and_remove_long_silence():
    audio = np.concatenate([_silence(1.0, 1), _tone(6.0), _silence(2.0, 2), _tone(3.0, 330), _silence(1.0, 3)])
    segments = Slicer(SR, min_length_ms=3000, max_sil_kept_ms=300).segments(audio)
    _assert_covers(segments, len(audio))
    assert [s.silent for s in segments] == [True, False, True, False, True]
    hop = 882
    # each removed silence keeps at most max_sil_kept (300 ms) next to the sound
    lead, middle = segments[0], segments[2]
    assert 1.0 * SR - 0.3 * SR - hop <= lead.end <= 1.0 * SR
    assert 7.0 * SR < middle.start <= 7.3 * SR + hop and 8.7 * SR - hop <= middle.end < 9.0 * SR


def test_stereo_input_is_sliced_on_its_channel_mean():
    mono = np.concatenate([_tone(6.0), _silence(1.0), _tone(2.0)])
    stereo = np.stack([mono, mono])
    slicer = Slicer(SR, min_length_ms=1000, max_sil_kept_ms=300)
    assert slicer.segments(stereo) == slicer.segments(mono)


def test_short_or_empty_input():
    slicer = Slicer(SR)
    short = np.concatenate([_tone(1.0), _silence(1.0)])
    assert slicer.segments(short) == [Segment(0, len(short), False)]
    assert slicer.segments(np.zeros(0, np.float32)) == []
    assert slicer.segments(_silence(1.0)) == [Segment(0, SR, True)]
    assert slicer.chunks(short) == {"0": {"slice": False, "split_time": f"0,{len(short)}"}}


def test_all_silence_is_one_silent_segment():
    audio = np.zeros(8 * SR, np.float32)
    assert Slicer(SR, min_length_ms=1000).segments(audio) == [Segment(0, len(audio), True)]


def test_max_clip_splits_long_voiced_stretches_at_the_quietest_point():
    audio = _tone(22.0)
    audio[int(7.0 * SR):int(7.1 * SR)] *= 0.05       # a dip, well above the -40 dB silence threshold
    audio[int(15.5 * SR):int(15.6 * SR)] *= 0.1
    segments = Slicer(SR, max_clip_s=10.0).segments(audio)
    _assert_covers(segments, len(audio))
    assert all(not s.silent and s.end - s.start <= 10 * SR for s in segments)
    cuts = [s.start for s in segments[1:]]
    assert len(cuts) == 2
    assert 7.0 * SR <= cuts[0] <= 7.1 * SR and 15.5 * SR <= cuts[1] <= 15.6 * SR


def test_max_clip_never_leaves_a_tiny_last_piece():
    audio = _tone(10.5)
    segments = Slicer(SR, max_clip_s=10.0).segments(audio)
    lengths = [s.end - s.start for s in segments]
    assert len(lengths) == 2 and min(lengths) >= 2.5 * SR - 882 and max(lengths) <= 10 * SR


def test_invalid_parameters_are_refused():
    with pytest.raises(ValueError):
        Slicer(SR, min_length_ms=100, min_interval_ms=300)
    with pytest.raises(ValueError):
        Slicer(SR, max_sil_kept_ms=5)


# ---- slice_audio.py ------------------------------------------------------------------------------

def _recording() -> np.ndarray:
    return np.concatenate([_silence(0.5), _tone(6.0), _silence(1.0), _tone(7.0, 330), _silence(0.8),
                           _tone(2.0, 440), _silence(0.4)])


@pytest.fixture(scope="module")
def sliced(tmp_path_factory):
    """One run of slice_audio.py over a raw dataset with good, nested, non-ASCII and bad files."""
    root = tmp_path_factory.mktemp("slice")
    raw = root / "dataset_raw"
    (raw / "alto" / "take 2").mkdir(parents=True)
    (raw / "bass").mkdir()
    soundfile.write(raw / "alto" / "song.wav", _recording(), SR, subtype="PCM_16")
    soundfile.write(raw / "alto" / "take 2" / "chœur.flac", np.stack([_recording()] * 2, axis=1), SR, subtype="PCM_24")
    soundfile.write(raw / "bass" / "hush.wav", np.zeros(SR * 3, np.float32), SR)
    (raw / "bass" / "empty.wav").write_bytes(b"")
    result = run_script("slice_audio.py", "--in_dir", raw, "--out_dir", root / "sliced", "--num_processes", "2",
                        "--min_length", "3000", "--max_clip", "8", cwd=root)
    return root, result


def test_slice_audio_writes_numbered_clips_matching_the_slicer(sliced):
    root, result = sliced
    slicer = Slicer(SR, min_length_ms=3000, max_sil_kept_ms=500, max_clip_s=8)
    for rel, subtype, channels in (("alto/song.wav", "PCM_16", 1), ("alto/take 2/chœur.flac", "FLOAT", 2)):
        source = soundfile.read(root / "dataset_raw" / rel, dtype="float32", always_2d=True)[0]
        expected = [s for s in slicer.segments(source.T) if not s.silent]
        assert len(expected) >= 3
        folder, stem = (root / "sliced" / rel).parent, (root / "sliced" / rel).stem
        clips = sorted(folder.glob(f"{stem}_*.wav"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        assert [p.name for p in clips] == [f"{stem}_{k}.wav" for k in range(len(expected))]
        for clip, segment in zip(clips, expected):
            info = soundfile.info(clip)
            assert (info.frames, info.samplerate, info.subtype, info.channels) == (
                segment.end - segment.start, SR, subtype, channels)
            assert info.duration <= 8.0
        first = soundfile.read(clips[0], dtype="float32", always_2d=True)[0]
        np.testing.assert_array_equal(first, source[expected[0].start:expected[0].end])


def test_slice_audio_reports_bad_files_without_traceback(sliced):
    _, result = sliced
    log = result.stdout + result.stderr
    assert "Traceback" not in log
    assert re.search(r"FAILED bass/empty\.wav: empty file", log)
    assert re.search(r"FAILED bass/hush\.wav: no sound above -40 dB", log)
    assert "2 done, 0 already done (skipped), 2 failed" in log


def test_slice_audio_second_run_skips_and_new_settings_reslice(sliced):
    root, _ = sliced
    out = root / "sliced" / "alto"
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.wav")}
    again = run_script("slice_audio.py", "--in_dir", "dataset_raw", "--out_dir", "sliced", "--num_processes", "1",
                       "--min_length", "3000", "--max_clip", "8", cwd=root)
    assert "0 done, 2 already done (skipped)" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.wav")} == before
    stale = out / "song_9.wav"
    stale.write_bytes(b"left by an interrupted run")
    changed = run_script("slice_audio.py", "--in_dir", "dataset_raw", "--out_dir", "sliced", "--num_processes", "1",
                         "--min_length", "20000", "--max_clip", "0", cwd=root)
    assert "2 done, 0 already done (skipped), 2 failed" in changed.stderr
    assert sorted(p.name for p in out.glob("song_*.wav")) == ["song_0.wav"]


def test_slice_audio_refuses_to_write_into_its_input(tmp_path):
    (tmp_path / "raw" / "a").mkdir(parents=True)
    result = run_script("slice_audio.py", "--in_dir", "raw", "--out_dir", "raw/", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "must differ" in result.stderr and "Traceback" not in result.stderr
    missing = run_script("slice_audio.py", "--in_dir", "nowhere", cwd=tmp_path, check=False)
    assert missing.returncode == 1 and "nowhere" in missing.stderr and "Traceback" not in missing.stderr
    assert not os.path.exists(tmp_path / "dataset_raw_sliced" / "a")
