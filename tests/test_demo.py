"""`make demo`'s script end to end on the bundled samples, with a two-step training to keep it short."""
import json

import pytest
import soundfile

from conftest import REPO, run_script

SR = 44100


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path):
    work = tmp_path / "work"
    result = run_script("demo.py", "--work_dir", work, "--train_steps", "2", timeout=1200)
    assert "demo finished" in result.stdout and "Traceback" not in result.stderr

    clips = sorted((work / "dataset_raw_sliced").rglob("*.wav"))
    wavs = sorted((work / "dataset/44k").rglob("*.wav"))
    assert [p.relative_to(work / "dataset/44k") for p in wavs] == [p.relative_to(work / "dataset_raw_sliced")
                                                                    for p in clips]
    assert len(clips) >= 8
    for path in wavs:
        info = soundfile.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16") and info.duration <= 5.0
        assert path.with_name(path.name + ".soft.pt").is_file() and path.with_name(path.name + ".f0.npy").is_file()
    config = json.loads((work / "configs/config.json").read_text(encoding="utf-8"))
    assert config["spk"] == {"sms_tools": 0, "vocadito": 1}
    assert config["model"]["speech_encoder"] == "whisper-ppg-base" and config["model"]["ssl_dim"] == 512
    val = (work / "filelists/val.txt").read_text(encoding="utf-8").splitlines()
    assert len(val) == 4

    assert (work / "logs/44k/G_2.pth").is_file()
    assert (work / "logs/44k/kmeans_100.pt").is_file() and (work / "logs/44k/feature_and_index.pkl").is_file()
    source = soundfile.info(REPO / "samples/dataset_raw/sms_tools/sms_singing_female.wav")
    results = sorted((work / "results").glob("sms_singing_female.wav_0key_vocadito*_sovits_pm.flac"))
    assert len(results) == 2
    for path in results:
        info = soundfile.info(path)
        assert info.samplerate == SR and abs(info.duration - source.duration) < 0.05
