"""The quality meter: its figures recover known values on constructed cases made from real recordings, training
logs validation figures and keeps G_best.pth through keep_ckpts pruning, evaluate.py runs end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import ASSETS, run_script
from core.audio import load_audio
from evaluation import artefacts, speaker
from evaluation.pitch import f0_metrics, track_f0
from evaluation.report import analyse_source, measure

SR = 44100
SINGING = ASSETS / "audio" / "singing"
SPEECH = ASSETS / "audio" / "speech"
needs_speaker_encoder = pytest.mark.skipif(not speaker.speaker_encoder_available(),
                                           reason="Resemblyzer's weights are not installed")


def excerpt(path: Path, seconds: float, start: float = 0.0) -> np.ndarray:
    audio, _ = load_audio(path, SR)
    return audio[int(start * SR):int((start + seconds) * SR)]


@pytest.fixture(scope="module")
def song() -> tuple[np.ndarray, np.ndarray]:
    """Four sung seconds and their f0 track (CREPE tiny, 20 ms)."""
    audio = excerpt(SINGING / "vocadito_1.wav", 4.0)
    return audio, track_f0(audio, SR, hop_seconds=0.02)


@pytest.mark.shared
@pytest.mark.parametrize("semitones", [2, -3])
def test_a_copy_shifted_by_k_semitones_is_100k_cents_off_and_in_tune_after_transposition(song, semitones):
    import librosa

    audio, source_f0 = song
    shifted = librosa.effects.pitch_shift(audio, sr=SR, n_steps=semitones)
    shifted_f0 = track_f0(shifted, SR, hop_seconds=0.02)
    raw = f0_metrics(source_f0, shifted_f0)
    assert raw.mean_cents == pytest.approx(100 * semitones, abs=20)
    assert raw.rmse_cents == pytest.approx(100 * abs(semitones), abs=30) and raw.within_50 < 0.1
    transposed = f0_metrics(source_f0, shifted_f0, semitones=semitones)
    assert abs(transposed.mean_cents) < 20 and transposed.rmse_cents < 40 and transposed.within_50 > 0.9
    assert transposed.correlation > 0.98 and transposed.vuv_error < 0.2


@pytest.mark.shared
def test_the_source_against_itself_is_exact(song):
    audio, source_f0 = song
    assert 0.3 < np.mean(source_f0 > 0) < 0.95  # sung notes and pauses, both
    same = f0_metrics(source_f0, track_f0(audio, SR, hop_seconds=0.02))
    assert same.rmse_cents == pytest.approx(0, abs=1e-6) and same.correlation == pytest.approx(1.0)
    assert same.vuv_error == 0 and same.voiced_both == int(np.sum(source_f0 > 0))


def test_f0_metrics_of_unrelated_and_empty_tracks():
    rising, falling = np.geomspace(200, 400, 50), np.geomspace(400, 200, 50)
    assert f0_metrics(rising, falling).correlation == pytest.approx(-1.0, abs=0.01)
    half_voiced = np.where(np.arange(50) < 25, rising, 0.0)
    assert f0_metrics(rising, half_voiced).vuv_error == pytest.approx(0.5)
    nothing = f0_metrics(rising, np.zeros(50))
    assert nothing.rmse_cents is None and nothing.voiced_both == 0 and nothing.vuv_error == 1.0


@pytest.mark.shared
@needs_speaker_encoder
def test_another_speaker_is_less_similar_than_the_same_speaker():
    lj_a, lj_b = (speaker.embed(*load_audio(SPEECH / name)) for name in ("LJ001-0001.wav", "LJ001-0003.wav"))
    other = speaker.embed(*load_audio(SPEECH / "cmu_us_awb_arctic_a0007.wav"))
    same, different = speaker.similarity(lj_a, lj_b), speaker.similarity(lj_a, other)
    assert same > 0.85 and different < same - 0.2
    assert speaker.similarity(lj_a, lj_a) == pytest.approx(1.0)
    assert speaker.embed(np.zeros(SR), SR) is None


@pytest.mark.shared
def test_a_known_dc_offset_and_sound_in_the_pauses_are_measured_and_flagged():
    voice = excerpt(SPEECH / "LJ001-0001.wav", 2.0).astype(np.float64)
    source = np.concatenate([voice, np.zeros(SR), voice])  # a one-second pause
    assert artefacts.dc_offset(source + 0.05) == pytest.approx(artefacts.dc_offset(source) + 0.05, abs=1e-9)
    clean = artefacts.level_in_source_silence(source, source, SR)
    assert clean.result_dbfs == pytest.approx(clean.source_dbfs, abs=0.01) and clean.result_dbfs < -60  # DC removed
    assert clean.silent_share > 0.15
    assert artefacts.flags(artefacts.dc_offset(source), clean) == []

    rng = np.random.default_rng(0)
    hum = source + 0.05 + np.where(source == 0, 10 ** (-30 / 20) * rng.standard_normal(len(source)), 0.0)
    noisy = artefacts.level_in_source_silence(source, hum, SR)
    pause_share = 1.0 / 5.0 / noisy.silent_share  # of the source's silent frames, those of the pause
    expected = 10 * np.log10(pause_share * 10 ** (-30 / 10) + (1 - pause_share) * 10 ** (clean.source_dbfs / 10))
    assert noisy.result_dbfs == pytest.approx(expected, abs=0.5)  # the DC is not counted as sound
    found = artefacts.flags(artefacts.dc_offset(hum), noisy)
    assert len(found) == 2 and found[0].startswith("DC offset +0.05") and "pauses" in found[1]


def test_difference_of_two_results():
    rng = np.random.default_rng(1)
    audio = rng.standard_normal(SR)
    assert artefacts.difference_db(audio, audio) == artefacts.NO_SOUND_DBFS
    assert artefacts.difference_db(audio, 1.01 * audio) == pytest.approx(-40, abs=0.01)
    assert artefacts.difference_db(audio, -audio) == pytest.approx(6.02, abs=0.01)


@pytest.mark.shared
def test_a_report_of_a_transposed_copy(song):
    import librosa

    audio, _ = song
    source = analyse_source("vocadito_1.wav", audio, SR, hop_seconds=0.02, with_speaker=False)
    result = librosa.effects.pitch_shift(audio, sr=SR, n_steps=12)
    report = measure(source, result + 0.02, "up_an_octave.wav", semitones=12, hop_seconds=0.02)
    figures = report.figures()
    assert figures["f0_rmse_cents"] < 50 and figures["f0_corr"] > 0.98
    assert figures["dc_offset"] == pytest.approx(0.02 + np.mean(result), abs=1e-6)
    assert report.flags == ["DC offset +0.020 (above 0.01)"]
    assert figures["hop_buzz_db"] < -5 and figures["speaker_target"] is None


# ----- training: validation figures in TensorBoard, G_best.pth kept through keep_ckpts pruning -------------

def test_training_logs_validation_figures_and_keeps_the_best_generator(tmp_path, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from core.checkpoint import read_checkpoint
    from tests.test_train import tiny_config
    from training.loop import RunOptions, train

    hps = tiny_config(tmp_path, eval_interval=2, keep_ckpts=1)
    model_dir = tmp_path / "run"
    assert train(hps, RunOptions(model_dir=model_dir, num_workers=0, max_steps=4)) == 0

    events = EventAccumulator(str(model_dir / "eval"), size_guidance={"audio": 1}).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"eval/mel_l1", "eval/vuv_error"} <= tags  # F0 RMSE and correlation need frames voiced in both
    mel = {event.step: event.value for event in events.Scalars("eval/mel_l1")}
    assert sorted(mel) == [0, 2, 4]
    record = json.loads((model_dir / "G_best.pth.json").read_text())
    best_step = min(mel, key=mel.get)
    assert record["metric"] == "mel_l1" and record["step"] == best_step
    assert record["value"] == pytest.approx(mel[best_step], rel=1e-5)
    assert read_checkpoint(model_dir / "G_best.pth")["global_step"] == best_step
    assert sorted(p.name for p in model_dir.glob("[GD]_*.pth")) == ["D_0.pth", "D_4.pth", "G_0.pth", "G_4.pth",
                                                                  "G_best.pth"]


def test_a_best_metric_that_is_no_figure_is_refused(tmp_path):
    from core.errors import SvcError
    from tests.test_train import tiny_config
    from training.loop import check_config

    hps = tiny_config(tmp_path, best_metric="loudness")
    with pytest.raises(SvcError, match="train.best_metric 'loudness'.*mel_l1"):
        check_config(hps)
    del hps.train["best_metric"]  # a 4.1 config has no such key: the default
    check_config(hps)


# ----- evaluate.py end to end on the tiny model ------------------------------------------------------------------

@pytest.mark.slow
def test_evaluate_py_converts_measures_compares_and_reads_converted_files(tmp_path, monkeypatch, capsys):
    from tests.tiny_model import add_content_encoder, save_model, tone

    save_model(tmp_path)
    add_content_encoder(tmp_path)
    (tmp_path / "raw").mkdir()
    sf.write(tmp_path / "raw" / "tone.wav", np.concatenate([tone(1.5), np.zeros(SR // 2, np.float32)]), SR)
    sf.write(tmp_path / "alto.wav", tone(2.0, f0=330.0), SR)
    result = run_script("evaluate.py", "-m", "G_1.pth", "-c", "config.json", "-s", "alto", "-n", "raw",
                        "-d", "cpu", "--target_audio", "alto.wav", "--json", "figures.json",
                        "--compare=-ns 0", cwd=tmp_path)
    assert "What the figures mean:" in result.stdout and "overall (mean over files)" in result.stdout
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert [run["label"] for run in figures["runs"]] == ["A", "B"] and figures["target_speaker"] == "alto"
    first, second = (run["files"][0] for run in figures["runs"])
    assert first["name"] == "tone.wav" and first["result"].startswith("tone.wav_0key_alto_sovits_pm")
    assert (tmp_path / "results" / first["result"]).is_file()
    assert first["difference_db"] is None and second["difference_db"] > -120  # -ns 0 changes the result
    assert 0 <= first["pitch"]["vuv_error"] <= 1 and abs(first["dc_offset"]) < 1
    assert first["silence"]["silent_share"] > 0.1 and first["flags"] == [
        f for f in first["flags"] if f.startswith(("DC offset", "sound in"))]
    if speaker.speaker_encoder_available():
        assert -1 <= first["speaker_target"] <= 1 and figures["runs"][0]["overall"]["speaker_target"] is not None

    import evaluate as script  # the results just written, read back in this process (no second torch start)
    from quality.evaluate import evaluate

    monkeypatch.chdir(tmp_path)
    parser = script.build_parser()
    evaluate(parser, parser.parse_args(["-n", "raw/tone.wav", "--converted", "results", "--json", "again.json",
                                        "--no_speaker"]))
    reread = json.loads((tmp_path / "again.json").read_text())["runs"][0]["files"]
    assert sorted(f["result"] for f in reread) == sorted(p.name for p in (tmp_path / "results").iterdir())
    by_name = {f["result"]: f for f in reread}
    assert by_name[first["result"]]["dc_offset"] == pytest.approx(first["dc_offset"], abs=1e-4)
    assert by_name[first["result"]]["speaker_target"] is None
    assert "run A: converted files results" in capsys.readouterr().out


def test_converted_files_are_paired_with_their_sources_by_name(tmp_path):
    from core.errors import SvcError
    from quality.evaluate import pair_converted

    sources = [tmp_path / "song.wav", tmp_path / "song_two.wav"]
    results = [tmp_path / name for name in ("song.wav_0key_a_sovits_pm.flac", "song_two.wav_2key_a_sovits_pm.flac",
                                            "song.flac", "other.wav")]
    for path in results:
        sf.write(path, np.zeros(100, np.float32), SR)
    pairs = pair_converted(sources, [str(p) for p in results[:3]])
    assert [(index, path.name) for index, path in pairs] == [(0, results[0].name), (1, results[1].name),
                                                             (0, "song.flac")]
    with pytest.raises(SvcError, match="other.wav: no source's name begins its name"):
        pair_converted(sources, [str(results[3])])


def test_train_diff_keeps_the_model_of_the_lowest_validation_loss(tmp_path):
    import torch

    from core.checkpoint import latest_diffusion_checkpoint, read_checkpoint
    from diffusion.trainer import keep_best_diffusion

    model = torch.nn.Linear(2, 2)
    for step, loss in ((10, 0.5), (20, 0.7), (30, 0.3), (40, float("nan"))):
        keep_best_diffusion(tmp_path, model, step, loss)
    record = json.loads((tmp_path / "model_best.pt.json").read_text())
    assert record == {"metric": "validation_loss", "value": 0.3, "step": 30}
    assert read_checkpoint(tmp_path / "model_best.pt", kind="diffusion")["global_step"] == 30
    assert latest_diffusion_checkpoint(tmp_path) is None  # never taken for a step to resume from
