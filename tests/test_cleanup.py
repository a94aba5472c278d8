"""The output stage (inference/cleanup.py): DC removal and the pause gate on constructed clips, its wiring into
`Svc.convert_clip` on a stand-in model, the flags that turn it off, and one conversion with the tiny model."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from core.dsp import volume
from inference.cleanup import CleanupSettings, clean_output, pause_gain, remove_dc, settle_samples
from inference.svc import ClipInputs, ConversionOptions, Svc
from tests.tiny_model import SR, add_content_encoder, save_model, tone

HOP = 512
DC = 0.15
SUNG_DB, PAUSE_DB = -20.0, -70.0


def db_to_rms(db: float) -> float:
    return 10 ** (db / 20)


def rms_db(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def frame_mask(pattern: list[tuple[bool, int]]) -> np.ndarray:
    """[(sung, n_frames), ...] -> per-frame bool."""
    return np.concatenate([np.full(n, sung) for sung, n in pattern])


def converted(sung: np.ndarray, pause_sound: float = 0.1) -> np.ndarray:
    """What the decoder gives for a source sung in `sung` frames: a DC offset, a buzz everywhere (the NSF source
    runs on in the pauses), a 220 Hz tone in the sung frames."""
    n = len(sung) * HOP
    t = np.arange(n) / SR
    buzz = pause_sound * np.sin(2 * np.pi * 150 * t + 0.3)
    return (DC + buzz + tone(n / SR) * np.repeat(sung, HOP)).astype(np.float32)


def edges(gain: np.ndarray, reach: int) -> np.ndarray:
    """Samples within `reach` of a gate edge (where the gain changes)."""
    changes = np.flatnonzero(np.diff(gain) != 0)
    near = np.zeros(len(gain) - 1, dtype=bool)
    for i in changes:
        near[max(i - reach, 0):i + reach] = True
    return near


# ----- DC removal -----------------------------------------------------------------------------------

@pytest.mark.parametrize("f0", [80.0, 220.0])
@pytest.mark.parametrize("causal", [False, True])
def test_a_known_offset_is_removed_and_the_tone_kept(f0, causal):
    sung = tone(1.0, f0=f0)
    out = remove_dc(sung + DC, SR, causal=causal)
    skip = int(0.05 * SR)
    assert out.dtype == np.float32 and len(out) == len(sung)
    assert abs(out[skip:].mean()) < 0.005
    assert abs(rms_db(out[skip:-skip]) - rms_db(sung[skip:-skip])) < 0.2


def test_the_causal_filter_does_not_look_ahead():
    x = tone(1.0) + DC
    short, full = remove_dc(x[:20000], SR, causal=True), remove_dc(x, SR, causal=True)
    np.testing.assert_allclose(short, full[:20000], atol=1e-6)


def test_the_settling_time_follows_the_cutoff():
    assert 0.1 < settle_samples(SR) / SR < 0.2
    assert settle_samples(SR, CleanupSettings(highpass_hz=40.0)) < settle_samples(SR)


def test_tiny_clips_only_lose_their_mean():
    assert remove_dc(np.array([0.3], dtype=np.float32), SR).tolist() == [0.0]
    assert len(remove_dc(np.zeros(0, dtype=np.float32), SR)) == 0


# ----- the pause gate -------------------------------------------------------------------------------

@pytest.fixture
def song() -> tuple[np.ndarray, np.ndarray]:
    """(source frame RMS, decoder output) for pause, sung, pause, sung, pause."""
    sung = frame_mask([(False, 30), (True, 60), (False, 40), (True, 60), (False, 30)])
    rms = np.where(sung, db_to_rms(SUNG_DB), db_to_rms(PAUSE_DB))
    return rms, converted(sung)


def test_pauses_become_silence_and_sung_frames_keep_their_level(song):
    rms, audio = song
    out = clean_output(audio, rms, HOP, SR)
    sung = np.repeat(rms > db_to_rms(-45), HOP)
    margin = int(0.1 * SR)  # attack or hold, the fade, and a frame of rounding
    deep_pause = ~sung & ~np.convolve(sung, np.ones(2 * margin + 1), mode="same").astype(bool)
    assert deep_pause.sum() > SR // 2 and np.all(out[deep_pause] == 0)
    assert np.array_equal(out[sung], remove_dc(audio, SR)[sung])
    assert abs(rms_db(out[sung]) - rms_db((audio - DC)[sung])) < 0.2


def test_the_gate_opens_before_an_onset_and_holds_after_the_end(song):
    rms, _ = song
    settings = CleanupSettings()
    gain = pause_gain(rms, HOP, SR, settings)
    onset, end = 30 * HOP, 90 * HOP
    assert np.all(gain[onset - int(settings.attack_seconds * SR):end + int(settings.hold_seconds * SR)] == 1)
    fade = int(settings.fade_seconds * SR)
    assert np.abs(np.diff(gain)).max() <= np.pi / (2 * fade) + 1e-6  # a raised cosine, no step


def test_no_click_at_any_gate_edge(song):
    rms, audio = song
    # the constructed tone starts and stops with a step of its own: an attack and a hold keep the gate's edges
    # away from those, so that only the gate's own steps are measured
    settings = CleanupSettings(attack_seconds=0.02, hold_seconds=0.06)
    out = clean_output(audio, rms, HOP, SR, settings)
    gain = pause_gain(rms, HOP, SR, settings)
    near = edges(gain, reach=HOP)
    sung = np.repeat(rms > db_to_rms(-45), HOP)
    inside = ~np.convolve(~sung, np.ones(2 * HOP + 1), mode="same").astype(bool)[:-1]  # off the tone's own ends
    own_step = np.abs(np.diff(out))[inside].max()
    assert near.any() and np.abs(np.diff(out))[near].max() <= own_step
    hard = clean_output(audio, rms, HOP, SR, CleanupSettings(attack_seconds=0.02, hold_seconds=0.06, fade_seconds=0))
    assert np.abs(np.diff(hard))[near].max() > own_step  # without the fades the same edges click


def test_a_quiet_consonant_above_the_threshold_is_kept_and_one_below_is_not():
    frames = frame_mask([(False, 40), (True, 3), (False, 40)])
    audio = converted(frames, pause_sound=0.02)
    burst = np.repeat(frames, HOP)
    for level, kept in ((-40.0, True), (-50.0, False)):
        rms = np.where(frames, db_to_rms(level), db_to_rms(PAUSE_DB))
        out = clean_output(audio, rms, HOP, SR)
        if kept:
            assert np.array_equal(out[burst], remove_dc(audio, SR)[burst])
        else:
            assert np.all(out == 0)


def test_a_clip_without_any_sound_is_silenced():
    out = clean_output(np.full(10 * HOP, DC, dtype=np.float32), np.full(10, db_to_rms(PAUSE_DB)), HOP, SR)
    assert np.all(out == 0)


# ----- convert_clip on a stand-in model ------------------------------------------------------------

class DcSvc(Svc):
    """Svc without a model: the 'decoder' returns the clip plus a DC offset (0 outside `frames`, as the real one)."""

    def __init__(self, precision: str = "fp32"):
        self.target_sample, self.hop_length = SR, HOP
        self.precision, self.enhancer, self.diffusion = precision, None, None
        self.decoded: list[tuple[int, int] | None] = []

    def clip_inputs(self, wav, opts, mix, pitch=None):
        n = len(wav) // HOP
        zeros = torch.zeros(1, n)
        return ClipInputs(torch.zeros(1, 1, n), zeros, zeros, torch.zeros(1, 1),
                          volume(torch.from_numpy(wav)[None], HOP)[:, :n])

    def synthesize(self, x, wav, opts, frames=None):
        self.decoded.append(frames)
        audio = wav[:x.f0.shape[1] * HOP] + DC
        if frames is not None:
            audio[:frames[0] * HOP] = 0
            audio[frames[1] * HOP:] = 0
        return audio, x.f0


def padded_song(pad: int = SR // 2) -> tuple[np.ndarray, tuple[int, int]]:
    wav = np.concatenate([tone(0.5), np.zeros(SR // 2, dtype=np.float32), tone(0.5, f0=330)])
    return np.pad(wav, (pad, pad)), (pad, pad + len(wav))


def test_without_cleanup_the_clip_is_returned_untouched():
    wav, keep = padded_song()
    out, n = DcSvc().convert_clip(wav, ConversionOptions(cleanup=False), keep=keep)
    np.testing.assert_array_equal(out, (wav[:n * HOP] + DC).astype(np.float32))


def test_with_cleanup_the_kept_part_has_no_offset_and_silent_pauses():
    wav, (start, stop) = padded_song()
    out, _ = DcSvc().convert_clip(wav, ConversionOptions(), keep=(start, stop))
    kept = out[start:stop]
    assert abs(kept.mean()) < 0.005
    assert np.all(kept[int(0.62 * SR):int(0.95 * SR)] == 0)  # the pause: 0.5..1.0 s less hold and attack


def test_a_windowed_decode_gives_the_kept_samples_of_a_whole_one():
    """On ONNX Runtime the decoder skips the padding; the decoded window then grows by the stage's margin."""
    wav, keep = padded_song()
    windowed = DcSvc("onnx")
    whole, _ = DcSvc().convert_clip(wav, ConversionOptions(), keep=keep)
    part, _ = windowed.convert_clip(wav, ConversionOptions(), keep=keep)
    first, last = windowed.decoded[0]
    assert first < keep[0] // HOP and last * HOP > keep[1]
    np.testing.assert_allclose(part[keep[0]:keep[1]], whole[keep[0]:keep[1]], atol=1e-5)
    windowed.convert_clip(wav, ConversionOptions(cleanup=False), keep=keep)
    assert windowed.decoded[1] == (keep[0] // HOP, -(-keep[1] // HOP))  # 4.1's window without the stage


# ----- the switches ---------------------------------------------------------------------------------

def test_no_cleanup_flags_reach_the_options_and_the_result_name():
    import inference_main
    import realtime
    from inference.convert_files import options_for
    from inference.live import stream_options
    from inference.naming import output_name

    args = inference_main.build_parser().parse_args(["--no_cleanup", "-m", "G_7.pth"])
    assert options_for(args, "alto", 0).cleanup is False
    assert output_name("song.wav", 0, "alto", args) == "song.wav_0key_alto_sovits_pm_step7_raw.flac"
    default = inference_main.build_parser().parse_args(["-m", "G_7.pth"])
    assert options_for(default, "alto", 0).cleanup is True
    assert output_name("song.wav", 0, "alto", default) == "song.wav_0key_alto_sovits_pm_step7.flac"
    assert stream_options(realtime.build_parser().parse_args(["--no_cleanup"])).cleanup is False
    assert stream_options(realtime.build_parser().parse_args([])).cleanup is True


def test_the_server_field_and_the_web_form():
    from pathlib import Path
    from types import SimpleNamespace

    from server.params import conversion_options, flag
    from webui.convert import ConvertSettings, ModelChoice, script_args

    assert flag({}, "cleanup", default=True) and flag({"cleanup": " "}, "cleanup", default=True)
    assert not flag({"cleanup": "false"}, "cleanup", default=True) and not flag({"cleanup": False}, "cleanup", True)
    assert not flag({}, "auto_predict_f0")
    model = SimpleNamespace(pretrain_dir=Path("pretrain"), speakers=["alto"], check=lambda options: None,
                            svc=SimpleNamespace(speaker_id=lambda speaker: 0))
    assert conversion_options({}, model).cleanup is True
    assert conversion_options({"cleanup": "0"}, model).cleanup is False
    choice = ModelChoice(Path("G_1.pth"), Path("config.json"))
    assert script_args(choice, ConvertSettings(), Path("pretrain"), "cpu").no_cleanup is False
    assert script_args(choice, ConvertSettings(cleanup=False), Path("pretrain"), "cpu").no_cleanup is True


# ----- the tiny model -------------------------------------------------------------------------------

@pytest.mark.shared
def test_a_conversion_has_no_offset_and_silent_pauses_and_without_cleanup_is_unchanged(tmp_path, monkeypatch,
                                                                                         one_thread):
    import inference.svc

    save_model(tmp_path)
    add_content_encoder(tmp_path)
    svc = Svc(tmp_path / "G_1.pth", tmp_path / "config.json", device="cpu", pretrain_dir=tmp_path / "pretrain")
    source = np.concatenate([tone(1.0, start=0.2), np.zeros(SR // 2, dtype=np.float32), tone(1.0, f0=330)])
    out = svc.convert(source, SR, ConversionOptions(speaker="alto"))
    assert len(out) == len(source) and abs(out.mean()) < 0.01
    assert np.all(out[:int(0.15 * SR)] == 0) and np.all(out[int(1.1 * SR):int(1.45 * SR)] == 0)
    assert np.abs(out[int(0.3 * SR):SR]).max() > 0.01

    calls = []
    monkeypatch.setattr(inference.svc, "clean_output", lambda audio, *args, **kwargs: calls.append(1) or audio)
    raw = svc.convert(source, SR, ConversionOptions(speaker="alto", cleanup=False))
    assert not calls and abs(raw.mean()) > 0.05  # the tiny model's decoder has the offset too
    np.testing.assert_array_equal(raw, svc.convert(source, SR, ConversionOptions(speaker="alto")))
    assert calls  # the stage was the only difference
