"""`make demo`'s script end to end on the bundled samples: every step's output, and results that sing the
source melodies after a short CPU training (200 steps here; the demo's default is 300), measured by the demo's
own quality check (evaluate.py)."""
import json

import pytest
import soundfile

from conftest import REPO, run_script

SR = 44100


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path):
    work = tmp_path / "work"
    result = run_script("demo.py", "--work_dir", work, "--train_steps", "200", timeout=1500)
    assert "demo finished" in result.stdout and "Traceback" not in result.stderr

    clips = sorted((work / "dataset_raw_sliced").rglob("*.wav"))
    wavs = sorted((work / "dataset/44k").rglob("*.wav"))
    assert [p.relative_to(work / "dataset/44k") for p in wavs] == [p.relative_to(work / "dataset_raw_sliced")
                                                                    for p in clips]
    assert len(clips) >= 16
    for path in wavs:
        info = soundfile.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16") and info.duration <= 2.0
        assert path.with_name(path.name + ".soft.pt").is_file() and path.with_name(path.name + ".f0.npy").is_file()
    config = json.loads((work / "configs/config.json").read_text(encoding="utf-8"))
    assert config["spk"] == {"sms_tools": 0, "vocadito": 1}
    assert config["model"]["speech_encoder"] == "whisper-ppg-base" and config["model"]["ssl_dim"] == 512
    assert config["data"]["filter_length"] == 4096 and config["train"]["learning_rate"] == 1e-3
    val = (work / "filelists/val.txt").read_text(encoding="utf-8").splitlines()
    assert len(val) == 4

    assert (work / "logs/44k/G_200.pth").is_file()
    assert (work / "logs/44k/kmeans_100.pt").is_file() and (work / "logs/44k/feature_and_index.pkl").is_file()
    songs = {"vocadito_14.wav_0key_sms_tools_sovits_pm_step200.flac": "vocadito/vocadito_14.wav",
             "sms_singing_female.wav_0key_vocadito_sovits_pm_step200.flac": "sms_tools/sms_singing_female.wav",
             "sms_singing_female.wav_0key_vocadito_0.5_sovits_pm_fr_step200.flac": "sms_tools/sms_singing_female.wav"}
    assert sorted(p.name for p in (work / "results").glob("*.flac")) == sorted(songs)
    for name, song in songs.items():
        source = REPO / "samples/dataset_raw" / song
        info = soundfile.info(work / "results" / name)
        assert info.samplerate == SR and abs(info.duration - soundfile.info(source).duration) < 0.05

    assert result.stdout.count("What the figures mean:") == 2 and "F0 RMSE: root mean square" in result.stdout
    measured = {}
    for speaker in ("sms_tools", "vocadito"):
        report = json.loads((work / f"results/evaluation_{speaker}.json").read_text(encoding="utf-8"))
        assert report["target_speaker"] == speaker and report["target_audio"].endswith(f"dataset/44k/{speaker}")
        for run in report["runs"]:
            for item in run["files"]:
                measured[item["result"]] = (run["label"], item)
                for flag in item["flags"]:
                    assert f"FLAG {run['label']} {item['result']}: {flag}" in result.stdout
    assert sorted(measured) == sorted(songs)
    retrieval = measured["sms_singing_female.wav_0key_vocadito_0.5_sovits_pm_fr_step200.flac"]
    assert retrieval[0] == "B" and retrieval[1]["difference_db"] is not None
    for name, (_, item) in measured.items():
        pitch = item["pitch"]
        assert pitch["voiced_both"] > 150 and pitch["within_50"] > 0.8, (name, pitch)  # the melody comes through
        assert item["hop_buzz_db"] < -5.0  # a buzz-dominated result lies above 0 dB
