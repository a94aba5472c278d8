"""--f0_repair: octave folding, flicker removal and smoothing of F0 tracks (f0_predictor.repair)."""
from __future__ import annotations

import numpy as np
import pytest

from f0_predictor.repair import RepairSettings, repair_f0, repair_raw_f0
from tests.conftest import ASSETS

MODEL_FPS = 44100 / 512
FRAME_RATES = (100.0, MODEL_FPS)
NOTES_HZ = (220.0, 262.0, 330.0, 392.0, 440.0, 349.0)
NOTE_SECONDS = 0.4
JUMP_CENTS = 900.0
RECORDING = ASSETS / "audio" / "singing" / "vocadito_1.wav"


def cents(f0: np.ndarray) -> np.ndarray:
    return 1200 * np.log2(f0)


def melody(fps: float) -> np.ndarray:
    """A sung line over 220-440 Hz: one note per 0.4 s, 5.5 Hz vibrato of ±50 cents."""
    n = int(round(NOTE_SECONDS * fps))
    base = np.repeat(NOTES_HZ, n)
    t = np.arange(len(base)) / fps
    return base * 2 ** (50 * np.sin(2 * np.pi * 5.5 * t) / 1200)


def plant(f0: np.ndarray, fps: float, at_seconds: float, octaves: float, seconds: float = 0.06) -> slice:
    """Shift `seconds` of `f0` from `at_seconds` by `octaves` in place; -> the frames shifted."""
    start = int(round(at_seconds * fps))
    frames = slice(start, start + int(round(seconds * fps)))
    f0[frames] *= 2.0 ** octaves
    return frames


@pytest.mark.parametrize("fps", FRAME_RATES)
def test_planted_octave_errors_are_folded_back(fps):
    truth = melody(fps)
    tracked = truth.copy()
    for at, octaves in ((0.5, 1), (1.3, -1), (1.7, 2), (2.1, -2)):
        plant(tracked, fps, at, octaves)
    voiced = np.ones(len(truth), dtype=bool)
    repaired, repaired_voiced = repair_f0(tracked, voiced, 1 / fps)
    assert repaired_voiced.all()
    assert np.abs(cents(repaired) - cents(truth)).max() < 20


@pytest.mark.parametrize("fps", FRAME_RATES)
def test_an_error_next_to_a_pause_is_folded_back(fps):
    truth = melody(fps)
    voiced = np.ones(len(truth), dtype=bool)
    voiced[int(0.8 * fps):int(1.2 * fps)] = False
    tracked = truth.copy()
    plant(tracked, fps, 1.2, 1)
    repaired, _ = repair_f0(tracked, voiced, 1 / fps)
    assert np.abs(cents(repaired[voiced]) - cents(truth[voiced])).max() < 20


@pytest.mark.parametrize("fps", FRAME_RATES)
def test_a_genuine_half_second_octave_leap_is_kept(fps):
    sung = melody(fps)
    leap = plant(sung, fps, 1.0, 1, seconds=0.5)
    repaired, _ = repair_f0(sung, np.ones(len(sung), dtype=bool), 1 / fps)
    np.testing.assert_allclose(repaired, sung)
    assert np.all(repaired[leap] > 400)


@pytest.mark.parametrize("fps", FRAME_RATES)
def test_short_flicker_is_removed_and_longer_runs_kept(fps):
    f0 = np.full(int(3 * fps), 300.0)
    voiced = np.zeros(len(f0), dtype=bool)
    voiced[int(0.5 * fps):int(2.0 * fps)] = True
    mid = int(0.5 * fps)
    one, two, long_gap = mid + 20, mid + 40, mid + 80
    voiced[one] = False
    voiced[two:two + 2] = False
    voiced[long_gap:long_gap + 5] = False
    f0[one - 1], f0[one + 1] = 200.0, 400.0
    blip_one, blip_two, kept = int(2.3 * fps), int(2.5 * fps), int(2.7 * fps)
    voiced[blip_one] = True
    voiced[blip_two:blip_two + 2] = True
    voiced[kept:kept + 5] = True
    repaired, repaired_voiced = repair_f0(f0, voiced, 1 / fps)
    assert repaired_voiced[one] and repaired_voiced[two:two + 2].all()
    assert not repaired_voiced[long_gap:long_gap + 5].any()
    assert repaired[one] == pytest.approx(np.sqrt(200.0 * 400.0))  # log-linear: the geometric mean
    assert not repaired_voiced[blip_one] and not repaired_voiced[blip_two:blip_two + 2].any()
    assert repaired_voiced[kept:kept + 5].all()


def test_median_smoothing_is_off_by_default_and_works_on_voiced_frames():
    fps = 100.0
    sung = melody(fps)
    sung[100] *= 2 ** (150 / 1200)
    voiced = np.ones(len(sung), dtype=bool)
    voiced[150:160] = False
    plain, _ = repair_f0(sung, voiced, 1 / fps)
    np.testing.assert_allclose(plain, sung)
    smoothed, smoothed_voiced = repair_f0(sung, voiced, 1 / fps, RepairSettings(median_frames=5))
    assert abs(cents(smoothed[100]) - cents(sung[99:102:2]).mean()) < 20
    np.testing.assert_array_equal(smoothed[150:160], sung[150:160])
    np.testing.assert_array_equal(smoothed_voiced, voiced)


def test_inputs_are_not_modified_and_empty_or_unvoiced_inputs_come_back_unchanged():
    fps = 100.0
    tracked = melody(fps)
    plant(tracked, fps, 0.5, 1)
    voiced = np.ones(len(tracked), dtype=bool)
    voiced[10] = False
    before_f0, before_voiced = tracked.copy(), voiced.copy()
    repaired, repaired_voiced = repair_f0(tracked, voiced, 1 / fps)
    np.testing.assert_array_equal(tracked, before_f0)
    np.testing.assert_array_equal(voiced, before_voiced)
    assert repaired is not tracked and repaired_voiced is not voiced
    empty_f0, empty_voiced = repair_f0(np.zeros(0), np.zeros(0, dtype=bool), 1 / fps)
    assert empty_f0.shape == (0,) and empty_voiced.shape == (0,)
    silent = np.full(50, 220.0)
    out_f0, out_voiced = repair_f0(silent, np.zeros(50, dtype=bool), 1 / fps)
    np.testing.assert_array_equal(out_f0, silent)
    assert not out_voiced.any()


def test_repair_raw_f0_keeps_zeros_for_unvoiced_frames():
    raw = np.concatenate([np.zeros(20), melody(100.0), np.zeros(20)])
    plant(raw, 100.0, 0.7, -1)
    repaired = repair_raw_f0(raw, 0.01)
    assert np.all(repaired[:20] == 0) and np.all(repaired[-20:] == 0)
    assert np.abs(cents(repaired[20:-20]) - cents(melody(100.0))).max() < 20


def octave_jumps(f0: np.ndarray) -> int:
    """Frame-to-frame steps over 900 cents between voiced (> 0) neighbours."""
    both = (f0[1:] > 0) & (f0[:-1] > 0)
    steps = np.abs(np.diff(cents(np.where(f0 > 0, f0, 1.0))))
    return int(np.sum(both & (steps > JUMP_CENTS)))


def jump_frames(f0: np.ndarray) -> np.ndarray:
    """Frames on either side of an octave jump."""
    both = (f0[1:] > 0) & (f0[:-1] > 0)
    jump = both & (np.abs(np.diff(cents(np.where(f0 > 0, f0, 1.0)))) > JUMP_CENTS)
    marked = np.zeros(len(f0), dtype=bool)
    marked[1:] |= jump
    marked[:-1] |= jump
    return marked


@pytest.mark.shared
@pytest.mark.skipif(not RECORDING.is_file(), reason=f"needs {RECORDING}")
@pytest.mark.parametrize("name", ["pm", "dio"])
def test_a_real_recording_has_no_more_octave_jumps_and_keeps_its_contour(name):
    import soundfile as sf

    from core.audio import resample
    from f0_predictor import get_f0_predictor

    wav, sr = sf.read(RECORDING, dtype="float32", always_2d=True)
    wav = resample(wav.mean(axis=1), sr, 44100)
    raw = np.asarray(get_f0_predictor(name, 512, 44100).compute_raw_f0(wav, len(wav) // 512), dtype=np.float64)
    repaired = repair_raw_f0(raw, 512 / 44100)
    assert octave_jumps(repaired) <= octave_jumps(raw)
    kept = (raw > 0) & (repaired > 0) & ~jump_frames(raw)
    close = np.abs(cents(raw[kept]) - cents(repaired[kept])) <= 50
    assert close.mean() >= 0.95


@pytest.mark.shared
def test_off_by_default_gives_the_same_conversion_and_on_repairs(tmp_path, monkeypatch, one_thread):
    import f0_predictor.repair
    from inference.svc import ConversionOptions, Svc
    from tests.tiny_model import SR, add_content_encoder, save_model, tone

    save_model(tmp_path)
    add_content_encoder(tmp_path)
    svc = Svc(tmp_path / "G_1.pth", tmp_path / "config.json", device="cpu", pretrain_dir=tmp_path / "pretrain")
    source = np.concatenate([tone(0.6, start=0.1), tone(0.6, f0=330)])
    default = svc.convert(source, SR, ConversionOptions(speaker="alto"))
    calls = []
    real = f0_predictor.repair.repair_raw_f0
    monkeypatch.setattr(f0_predictor.repair, "repair_raw_f0", lambda *a, **k: calls.append(1) or real(*a, **k))
    np.testing.assert_array_equal(default, svc.convert(source, SR, ConversionOptions(speaker="alto", f0_repair=False)))
    assert not calls
    repaired = svc.convert(source, SR, ConversionOptions(speaker="alto", f0_repair=True))
    assert calls and repaired.shape == default.shape and np.isfinite(repaired).all()


def test_the_flag_reaches_the_options_the_server_and_the_result_name():
    from types import SimpleNamespace

    from inference.convert_files import options_for
    from inference.naming import result_tags
    from inference_main import build_parser
    from server.params import conversion_options

    plain, repaired = build_parser().parse_args([]), build_parser().parse_args(["--f0_repair"])
    assert not options_for(plain, "alto", 0).f0_repair and options_for(repaired, "alto", 0).f0_repair
    assert "repair" not in result_tags(plain) and result_tags(repaired)[-1] == "repair"
    model = SimpleNamespace(speakers=["alto"], pretrain_dir="pretrain", check=lambda options: None,
                            svc=SimpleNamespace(speaker_id=lambda speaker: 0))
    assert not conversion_options({}, model).f0_repair
    assert conversion_options({"f0_repair": "true"}, model).f0_repair
