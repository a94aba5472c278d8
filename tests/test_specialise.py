"""Specialisation (specialize.py): units come from the dataset's conversion by model B, everything else stays the
originals'; reruns skip finished files; refusals; So-VITS training reads the new units."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from core.audio import load_audio, resample
from core.config import load_template, save_config
from core.dsp import repeat_expand_2d
from core.errors import SvcError
from tests.conftest import run_script
from tests.tiny_model import SR, TINY_MODEL, add_content_encoder, save_model, tone

pytestmark = [pytest.mark.shared,  # the tiny ContentVec fixture
              pytest.mark.usefixtures("one_thread_module")]




FEATURE_FILES = (".wav.f0.npy", ".spec.pt", ".wav.vol.npy")


@pytest.fixture
def workdir(tmp_path) -> Path:
    """Model B (the tiny model: speakers alto, tenor), A's config and A's dataset with its original features."""
    from preprocess.features import FeatureExtractor, FeatureSettings, process_file

    save_model(tmp_path)  # model B: G_1.pth + config.json
    add_content_encoder(tmp_path)
    config = load_template("config_tiny_template.json")
    config.model.update({**TINY_MODEL, "n_speakers": 1, "discriminator_width_divisor": 16, "vol_embedding": True})
    config.spk = {"A": 0}
    save_config(config, tmp_path / "a_config.json")
    speaker = tmp_path / "dataset" / "44k" / "A"
    speaker.mkdir(parents=True)
    for i, f0 in enumerate((196.0, 262.0)):
        sf.write(speaker / f"{i}.wav", tone(1.0, f0=f0), SR, subtype="PCM_16")
    settings = FeatureSettings(speech_encoder=config.model.speech_encoder, f0_predictor="pm", write_volume=True,
                               pretrain_dir=str(tmp_path / "pretrain"))
    extractor = FeatureExtractor(settings)
    for wav in sorted(speaker.glob("*.wav")):
        process_file(extractor, wav, seed=0)
    return tmp_path


def settings_for(root: Path, **overrides):
    from workflows.specialise import SpecialiseSettings

    values = dict(model_path=root / "G_1.pth", config_path=root / "config.json", speaker="tenor",
                  dataset_config=root / "a_config.json", pretrain_dir=root / "pretrain", device="cpu")
    return SpecialiseSettings(**{**values, **overrides})


def feature_bytes(wav: Path) -> dict[str, bytes]:
    return {suffix: Path(str(wav.with_suffix("")) + suffix).read_bytes() for suffix in FEATURE_FILES}


def test_units_come_from_the_conversion_and_the_rest_from_the_originals(workdir):
    from inference.svc import ConversionOptions, Svc
    from preprocess.features import FeatureExtractor, FeatureSettings
    from workflows.specialise import specialise_dataset

    speaker = workdir / "dataset" / "44k" / "A"
    wavs = sorted(speaker.glob("*.wav"))
    originals = {w: feature_bytes(w) for w in wavs}
    original_units = {w: torch.load(f"{w}.soft.pt", weights_only=True) for w in wavs}
    result = specialise_dataset(speaker, settings_for(workdir, keep_converted=workdir / "converted"), progress=False)
    assert sorted(result.done) == [str(w) for w in wavs] and not result.failed

    svc = Svc(workdir / "G_1.pth", workdir / "config.json", device="cpu", pretrain_dir=workdir / "pretrain")
    encoder = FeatureExtractor(FeatureSettings(f0_predictor="pm", pretrain_dir=str(workdir / "pretrain")))
    for wav in wavs:
        audio, _ = load_audio(wav, sr=SR)
        converted = svc.convert(audio, SR, ConversionOptions(speaker="tenor"))
        expected = encoder.units(resample(converted, svc.target_sample, SR))
        units = torch.load(f"{wav}.soft.pt", weights_only=True)
        assert units.shape == original_units[wav].shape
        assert torch.allclose(units, expected, atol=1e-5)
        assert not torch.allclose(units, original_units[wav], atol=1e-2)  # not the original's units
        assert feature_bytes(wav) == originals[wav]                         # f0, spec, volume untouched
        kept, sr = sf.read(workdir / "converted" / wav.name, dtype="float32")
        assert sr == svc.target_sample and np.abs(kept - converted).max() < 1e-3
        record = json.loads(Path(f"{wav}.specialised.json").read_text())
        assert record["speaker"] == "tenor" and len(record["model_sha256"]) == 64

    before = {w: Path(f"{w}.soft.pt").stat().st_mtime_ns for w in wavs}
    again = specialise_dataset(speaker, settings_for(workdir), progress=False)
    assert not again.done and len(again.skipped) == 2
    assert before == {w: Path(f"{w}.soft.pt").stat().st_mtime_ns for w in wavs}
    other = specialise_dataset(speaker, settings_for(workdir, speaker="alto", pattern="1.wav"), progress=False)
    assert other.done == [str(speaker / "1.wav")] and not other.skipped


def test_refusals(workdir):
    from workflows.specialise import specialise_dataset

    speaker = workdir / "dataset" / "44k" / "A"
    with pytest.raises(SvcError, match="inside the dataset"):
        specialise_dataset(speaker, settings_for(workdir, keep_converted=speaker / "out"), progress=False)
    with pytest.raises(SvcError, match=r"G_9.pth \(-m\) not found"):
        specialise_dataset(speaker, settings_for(workdir, model_path=workdir / "G_9.pth"), progress=False)
    with pytest.raises(SvcError, match="unknown speaker 'B'"):
        specialise_dataset(speaker, settings_for(workdir, speaker="B"), progress=False)
    with pytest.raises(SvcError, match="no .wav files matching"):
        specialise_dataset(workdir / "pretrain", settings_for(workdir), progress=False)
    (speaker / "1.wav.f0.npy").unlink()
    with pytest.raises(SvcError, match="1 wav\\(s\\) lack their original features .* run preprocess_hubert_f0.py"):
        specialise_dataset(speaker, settings_for(workdir), progress=False)


def test_training_reads_the_specialised_units(workdir):
    from training.dataset import DataOptions, SpeakerDataset
    from training.loop import RunOptions, train
    from core.config import load_model_config
    from workflows.specialise import specialise_dataset

    speaker = workdir / "dataset" / "44k" / "A"
    specialise_dataset(speaker, settings_for(workdir), progress=False)
    wavs = [str(w) for w in sorted(speaker.glob("*.wav"))]
    (workdir / "train.txt").write_text("\n".join(wavs) + "\n")
    (workdir / "val.txt").write_text(wavs[0] + "\n")
    hps = load_model_config(workdir / "a_config.json")
    hps.data.update(training_files=str(workdir / "train.txt"), validation_files=str(workdir / "val.txt"))
    hps.train.update(batch_size=2, log_interval=1, eval_interval=1000, segment_size=2560, epochs=10)
    options = DataOptions.from_config(hps)
    item = SpeakerDataset(wavs, options).load(1)
    units = torch.load(f"{wavs[1]}.soft.pt", weights_only=True)[0]
    f0_frames = len(np.load(f"{wavs[1]}.f0.npy", allow_pickle=True)[0])
    expected = repeat_expand_2d(units.float(), f0_frames, options.unit_interpolate_mode)
    assert torch.equal(item.units, expected[:, :item.units.shape[1]])
    assert train(hps, RunOptions(model_dir=workdir / "logs" / "A", num_workers=0, max_steps=1)) == 0
    assert (workdir / "logs" / "A" / "G_1.pth").exists()


@pytest.mark.slow
def test_specialize_script(workdir):
    args = ("--in_dir", "dataset/44k/A", "-m", "G_1.pth", "-c", "config.json", "-s", "tenor",
            "--dataset_config", "a_config.json", "-d", "cpu")
    result = run_script("specialize.py", *args, "--pattern", "1.wav", cwd=workdir)
    assert "specialised 1, skipped 0, failed 0" in result.stderr
    assert Path(workdir / "dataset" / "44k" / "A" / "1.wav.specialised.json").is_file()
    assert not Path(workdir / "dataset" / "44k" / "A" / "0.wav.specialised.json").exists()
