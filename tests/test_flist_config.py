"""preprocess_flist_config.py: filelists, config.json and diffusion.yaml as 4.1 writes them, reproducibly."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import soundfile
import yaml

from conftest import REPO, run_script
from core.config import load_template
from preprocess.filelists import build_configs

SR = 44100
# encoder -> (ssl_dim = gin_channels = diffusion encoder_out_channels, filter_channels with the normal template)
ENCODER_DIMS = {
    "vec768l12": (768, 768), "vec256l9": (256, 768), "hubertsoft": (256, 768), "dphubert": (768, 768),
    "wavlmbase+": (768, 768), "whisper-ppg": (1024, 1024), "cnhubertlarge": (1024, 1024),
    "whisper-ppg-large": (1280, 1280), "whisper-ppg-small": (768, 768), "whisper-ppg-base": (512, 768),
    "vec256l9-onnx": (256, 768), "vec256l12-onnx": (256, 768), "vec768l9-onnx": (768, 768),
    "vec768l12-onnx": (768, 768), "hubertsoft-onnx": (256, 768),
}
# speaker -> {file: seconds}; created in this (unsorted) order
DATASET = {
    "zoe": {"z1.wav": 1.0, "z2.wav": 0.5, "z3.wav": 0.8, "z4.wav": 1.2, "tiny.wav": 0.2},
    "adam": {"a1.wav": 0.4, "a2.wav": 0.6, "part 2/a3.wav": 0.7, "a4.wav": 0.35, "notes.txt": None},
    "mia": {"m1.wav": 1.0, "m2.wav": 0.31},
    "empty": {"short.wav": 0.1},
}


@pytest.mark.parametrize("encoder", ENCODER_DIMS)
@pytest.mark.parametrize("tiny", [False, True])
def test_encoder_sets_dimensions_as_4_1(encoder, tiny):
    dim, filter_channels = ENCODER_DIMS[encoder]
    config, diffusion = build_configs(["b", "a"], encoder, tiny=tiny)
    assert (config.model.ssl_dim, config.model.gin_channels) == (dim, dim)
    assert config.model.filter_channels == (512 if tiny else filter_channels)
    assert config.model.speech_encoder == diffusion.data.encoder == encoder
    assert diffusion.data.encoder_out_channels == dim
    template = load_template("config_tiny_template.json" if tiny else "config_template.json").to_dict()
    changed = {k for k, v in config.model.to_dict().items() if template["model"][k] != v}
    assert changed <= {"ssl_dim", "gin_channels", "filter_channels", "speech_encoder", "n_speakers"}
    assert config.train.to_dict() == template["train"] and config.data.to_dict() == template["data"]


def test_vol_aug_and_list_paths():
    config, diffusion = build_configs(["a"], "vec768l12", vol_aug=True, train_list="./filelists/train.txt",
                                      val_list="lists/v.txt")
    assert config.train.vol_aug is True and config.model.vol_embedding is True
    assert config.data.training_files == diffusion.data.training_files == "filelists/train.txt"
    assert config.data.validation_files == diffusion.data.validation_files == "lists/v.txt"
    plain, _ = build_configs(["a"], "vec768l12")
    assert plain.train.vol_aug is False and plain.model.vol_embedding is False


def _make_dataset(root):
    for speaker, files in DATASET.items():
        for name, seconds in files.items():
            path = root / "dataset" / "44k" / speaker / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if seconds is None:
                path.write_text("x", encoding="utf-8")
            else:
                soundfile.write(path, np.zeros(int(seconds * SR), np.int16), SR, subtype="PCM_16")
    (root / "dataset" / "44k" / "adam" / ".hidden.wav").write_bytes(b"")


def _outputs(root) -> dict[str, bytes]:
    names = ["filelists/train.txt", "filelists/val.txt", "configs/config.json", "configs/diffusion.yaml"]
    return {name: (root / name).read_bytes() for name in names}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The script with default paths, run in two copies of the dataset created in different orders."""
    first = tmp_path_factory.mktemp("first")
    _make_dataset(first)
    second = tmp_path_factory.mktemp("second")
    for speaker in reversed(list(DATASET)):
        shutil.copytree(first / "dataset/44k" / speaker, second / "dataset/44k" / speaker)
    results = [run_script("preprocess_flist_config.py", "--speech_encoder", "vec256l9", cwd=root)
               for root in (first, second)]
    return first, second, results


def test_speaker_ids_are_sorted_and_configs_written(run):
    root, _, results = run
    config = json.loads((root / "configs/config.json").read_text(encoding="utf-8"))
    assert config["spk"] == {"adam": 0, "mia": 1, "zoe": 2}
    assert config["model"]["n_speakers"] == 3
    assert (config["model"]["speech_encoder"], config["model"]["ssl_dim"], config["model"]["filter_channels"]) == (
        "vec256l9", 256, 768)
    diffusion = yaml.safe_load((root / "configs/diffusion.yaml").read_text(encoding="utf-8"))
    assert diffusion["spk"] == config["spk"] and diffusion["model"]["n_spk"] == 3
    assert (diffusion["data"]["encoder"], diffusion["data"]["encoder_out_channels"]) == ("vec256l9", 256)
    assert (root / "configs/config.json").read_text(encoding="utf-8").startswith('{\n  "train": {\n    "log_interval"')
    assert "Traceback" not in results[0].stderr


def test_filelists_split_two_validation_files_per_speaker(run):
    root, _, results = run
    train = (root / "filelists/train.txt").read_text(encoding="utf-8").splitlines()
    val = (root / "filelists/val.txt").read_text(encoding="utf-8").splitlines()
    usable = {f"./dataset/44k/{spk}/{name}" for spk, files in DATASET.items() for name, sec in files.items()
              if sec is not None and sec >= 0.3}
    by_speaker = {spk: [line for line in val if line.split("/")[3] == spk] for spk in DATASET}
    assert len(by_speaker["zoe"]) == 2 and len(by_speaker["adam"]) == 2
    assert len(by_speaker["mia"]) == 1 and not by_speaker["empty"]
    # two files or fewer: all train, the first also validates; otherwise train and val are disjoint
    assert set(train) == usable - set(by_speaker["zoe"]) - set(by_speaker["adam"])
    assert set(val) <= usable and len(train) == len(set(train))
    log = results[0].stderr
    assert "speaker mia has only 2 usable file(s)" in log
    assert "speaker folder empty has no usable wav" in log
    assert "zoe/tiny.wav: 0.20 s is shorter than 0.3 s" in log
    assert "adam/part 2/a3.wav" in log                  # a name 4.1 would warn about


def test_two_runs_give_identical_files(run):
    first, second, _ = run
    assert _outputs(first) == _outputs(second)


def test_seed_changes_only_the_split(run, tmp_path):
    root, *_ = run
    shutil.copytree(root / "dataset", tmp_path / "dataset")
    run_script("preprocess_flist_config.py", "--speech_encoder", "vec256l9", "--seed", "7",
               "--config_dir", "cfg", "--train_list", "t.txt", "--val_list", "v.txt", cwd=tmp_path)
    base = _outputs(root)
    assert (tmp_path / "t.txt").read_text().splitlines() != base["filelists/train.txt"].decode().splitlines()
    seeded = (tmp_path / "t.txt").read_text().splitlines() + (tmp_path / "v.txt").read_text().splitlines()
    listed = base["filelists/train.txt"].decode().splitlines() + base["filelists/val.txt"].decode().splitlines()
    assert set(seeded) == set(listed)
    config = json.loads((tmp_path / "cfg/config.json").read_text())
    assert config["data"]["training_files"] == "t.txt" and config["spk"] == {"adam": 0, "mia": 1, "zoe": 2}


def test_missing_or_empty_dataset_is_a_clear_error(tmp_path):
    missing = run_script("preprocess_flist_config.py", cwd=tmp_path, check=False)
    assert missing.returncode == 1 and "dataset/44k does not exist" in missing.stderr
    (tmp_path / "dataset/44k/spk").mkdir(parents=True)
    empty = run_script("preprocess_flist_config.py", cwd=tmp_path, check=False)
    assert empty.returncode == 1 and "no usable wav files" in empty.stderr
    assert "Traceback" not in missing.stderr + empty.stderr
    assert not (tmp_path / "configs").exists()




def test_bundled_samples_are_the_credited_files():
    """samples/CREDITS.md lists each bundled file with its sha256; the files must still match."""
    credits = (REPO / "samples/CREDITS.md").read_text(encoding="utf-8")
    files = sorted((REPO / "samples/dataset_raw").rglob("*.wav"))
    assert len(files) == 5 and sum(p.stat().st_size for p in files) < 3_000_000
    for path in files:
        row = next(line for line in credits.splitlines() if f"`{path.name}`" in line)
        assert hashlib.sha256(path.read_bytes()).hexdigest() in row
