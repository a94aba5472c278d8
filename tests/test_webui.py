"""webUI.py's handlers called directly: conversion, errors as messages, catalog, tools, training status and jobs."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import ASSETS, SPEC
from tests.tiny_model import SPEAKERS, add_content_encoder, save_model, tone

RECORDING = ASSETS / "audio" / "speech" / "LJ001-0001.wav"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """logs/tiny/{G_1.pth, config.json} and pretrain/ with the tiny ContentVec."""
    root = tmp_path_factory.mktemp("webui")
    (root / "logs" / "tiny").mkdir(parents=True)
    save_model(root / "logs" / "tiny")
    if SPEC.is_dir():
        add_content_encoder(root)
    return root


@pytest.fixture(scope="module")
def converter(root):
    from webui.convert import Converter

    return Converter(root / "pretrain", root / "results", device="cpu")


def tiny_choice(root: Path):
    from webui.convert import ModelChoice

    return ModelChoice(root / "logs" / "tiny" / "G_1.pth", root / "logs" / "tiny" / "config.json")


@pytest.mark.shared
def test_convert_a_real_recording(root, converter, one_thread):
    from webui.convert import ConvertSettings

    stages = []
    result = converter.convert(tiny_choice(root), ConvertSettings(speaker="tenor", trans=3), str(RECORDING),
                               lambda share, what: stages.append((share, what)))
    info = sf.info(str(RECORDING))
    written, sr = sf.read(str(result.path))
    assert sr == 44100 and result.sample_rate == 44100
    assert abs(len(written) / sr - info.frames / info.samplerate) < 512 / sr
    assert result.path.parent == root / "results" and result.path.name == "LJ001-0001_3key_tenor.wav"
    assert np.abs(written).max() > 0.01
    assert result.plot.shape == (300, 900, 3) and result.plot.dtype == np.uint8
    shares = [share for share, _ in stages]
    assert shares == sorted(shares) and shares[0] == 0.0 and shares[-1] > 0.9


@pytest.mark.shared
def test_a_static_speaker_mix_weighs_the_speakers(root, converter, tmp_path, one_thread):
    """With speakers far apart (tenor's embedding scaled up), a mix of weight 1 is that speaker's voice."""
    import torch

    from webui.convert import ConvertSettings, ModelChoice

    checkpoint = torch.load(root / "logs" / "tiny" / "G_1.pth", weights_only=True)
    checkpoint["model"]["emb_g.weight"][1] *= 30
    torch.save(checkpoint, tmp_path / "G_1.pth")
    choice = ModelChoice(tmp_path / "G_1.pth", root / "logs" / "tiny" / "config.json")
    path = tmp_path / "tone.wav"
    sf.write(path, tone(1.5), 44100)
    forms = {"alto": ConvertSettings(speaker="alto", noice_scale=0), "tenor": ConvertSettings(speaker="tenor", noice_scale=0),
             "mix_alto": ConvertSettings(speaker_mix="alto=1, tenor=0", noice_scale=0),
             "mix_tenor": ConvertSettings(speaker_mix="tenor=2", noice_scale=0),
             "half": ConvertSettings(speaker_mix="alto=1, tenor=1", noice_scale=0)}
    out = {name: sf.read(str(converter.convert(choice, form, str(path)).path))[0] for name, form in forms.items()}
    assert np.abs(out["alto"] - out["tenor"]).max() > 0.02
    assert np.abs(out["mix_alto"] - out["alto"]).max() < 1e-3
    assert np.abs(out["mix_tenor"] - out["tenor"]).max() < 1e-3
    assert min(np.abs(out["half"] - out[name]).max() for name in ("alto", "tenor")) > 0.005


def test_speaker_mix_text():
    from core.errors import SvcError
    from webui.convert import parse_speaker_mix

    assert parse_speaker_mix("", SPEAKERS) is None
    assert parse_speaker_mix("tenor=0.3", SPEAKERS) == {0: [[0.0, 1.0, 0.0, 0.0]], 1: [[0.0, 1.0, 0.3, 0.3]]}
    with pytest.raises(SvcError, match="unknown speaker 'bass'.*alto, tenor"):
        parse_speaker_mix("bass=1", SPEAKERS)
    with pytest.raises(SvcError, match="name=weight"):
        parse_speaker_mix("alto", SPEAKERS)
    with pytest.raises(SvcError, match="at least one speaker"):
        parse_speaker_mix("alto=0", SPEAKERS)


def test_a_bad_upload_is_a_message_naming_the_upload(tmp_path):
    from core.errors import AudioError
    from webui.convert import read_upload

    fake = tmp_path / "notes.wav"
    fake.write_text("these are not samples")
    with pytest.raises(AudioError) as caught:
        read_upload(str(fake), 600)
    assert str(caught.value) == "the uploaded file 'notes.wav' is not audio that can be read (use wav, flac, ogg or mp3)"
    with pytest.raises(AudioError, match="upload a recording"):
        read_upload(None, 600)
    long = tmp_path / "long.wav"
    sf.write(long, np.zeros(16000 * 3, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="'long.wav' is 3 s long; this page converts at most 2 s"):
        read_upload(str(long), 2)


def test_missing_encoder_weight_says_where_to_get_it(root, tmp_path):
    from core.errors import MissingPretrainedError
    from webui.convert import Converter, ConvertSettings

    converter = Converter(tmp_path / "pretrain", tmp_path / "results", device="cpu")
    with pytest.raises(MissingPretrainedError, match="checkpoint_best_legacy_500.pt.*Get it from"):
        converter.convert(tiny_choice(root), ConvertSettings(), str(RECORDING))
    assert not (tmp_path / "results").exists()


def test_wrong_config_and_unknown_speaker_are_refused_before_loading(root, converter, tmp_path):
    from core.errors import SvcError
    from webui.convert import ConvertSettings, ModelChoice

    bad_config = tmp_path / "config.json"
    bad_config.write_text("{not json")
    with pytest.raises(SvcError, match="config"):
        converter.check(ModelChoice(root / "logs/tiny/G_1.pth", bad_config), ConvertSettings())
    with pytest.raises(SvcError, match="unknown speaker 'bass'; this model has: alto, tenor"):
        converter.check(tiny_choice(root), ConvertSettings(speaker="bass"))
    with pytest.raises(SvcError, match="shallow diffusion needs a diffusion model"):
        converter.check(tiny_choice(root), ConvertSettings(shallow_diffusion=True))


def test_page_errors_are_one_line_without_traceback():
    import gradio as gr

    from core.errors import ConfigError
    from webui.app import shown_errors

    def refuses():
        raise ConfigError("config x.json lists no speakers (spk)")

    def breaks():
        raise ZeroDivisionError("division by zero")

    with pytest.raises(gr.Error) as caught:
        shown_errors(refuses)()
    assert caught.value.message == "config x.json lists no speakers (spk)"
    with pytest.raises(gr.Error) as caught:
        shown_errors(breaks)()
    assert caught.value.message.startswith("unexpected error (ZeroDivisionError: division by zero)")
    assert "Traceback" not in caught.value.message and "File \"" not in caught.value.message


def test_catalog_lists_folders_and_refuses_anything_else(root, tmp_path):
    from core.errors import SvcError
    from webui import catalog

    logs = root / "logs"
    (logs / "empty").mkdir(exist_ok=True)
    assert catalog.model_folders(logs) == ["tiny"]
    assert catalog.model_folder(logs, "tiny") == logs / "tiny"
    for name in ("../tiny", "/etc", "empty", ""):
        with pytest.raises(SvcError):
            catalog.model_folder(logs, name)
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("G_100.pth", "G_2000.pth", "D_2000.pth", "mixed.pth", "kmeans_10000.pt", "feature_and_index.pkl"):
        (folder / name).write_bytes(b"x")
    assert catalog.generator_checkpoints(folder) == ["G_2000.pth", "G_100.pth", "mixed.pth"]
    assert catalog.checkpoint_in(folder, None) == folder / "G_2000.pth"
    with pytest.raises(SvcError):
        catalog.checkpoint_in(folder, "D_2000.pth")
    assert catalog.cluster_files(folder) == ["feature_and_index.pkl", "kmeans_10000.pt"]
    assert catalog.is_feature_index(folder / "feature_and_index.pkl")
    assert catalog.diffusion_files(folder) is None
    (folder / "diffusion").mkdir()
    (folder / "diffusion" / "model_400.pt").write_bytes(b"x")
    (folder / "diffusion" / "config.yaml").write_text("x: 1")
    assert catalog.diffusion_files(folder).model.name == "model_400.pt"


def test_the_form_names_only_listed_or_uploaded_files(root, tmp_path):
    from core.errors import SvcError
    from webui.app import WebSettings, model_choice

    settings = WebSettings(logs_dir=root / "logs")
    choice = model_choice(settings, "tiny", None, "")
    assert choice.model_path == root / "logs" / "tiny" / "G_1.pth" and choice.cluster_path is None
    with pytest.raises(SvcError, match="is not a model folder"):
        model_choice(settings, "../logs/tiny", None, "")
    with pytest.raises(SvcError, match="is not a checkpoint"):
        model_choice(settings, "tiny", "../../x.pth", "")
    upload = tmp_path / "G_5.pth"
    upload.write_bytes(b"x")
    with pytest.raises(SvcError, match="an uploaded model needs its config.json"):
        model_choice(settings, None, None, None, model_file=str(upload))
    assert model_choice(settings, "tiny", None, None, model_file=str(upload)).config_path == \
        root / "logs" / "tiny" / "config.json"


def test_training_status_reads_checkpoints_and_tensorboard_curves(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from webui.training import curve_rows, training_status

    for step in (100, 200):
        (tmp_path / f"G_{step}.pth").write_bytes(b"x")
        (tmp_path / f"D_{step}.pth").write_bytes(b"x")
    writer = SummaryWriter(log_dir=str(tmp_path))
    for step in (10, 20, 30):
        writer.add_scalar("loss/g/total", 50.0 - step, step)
        writer.add_scalar("loss/d/total", 3.0 + step / 10, step)
        writer.add_scalar("learning_rate", 1e-4, step)
    writer.close()
    status = training_status(tmp_path)
    assert status.step == 200 and status.checkpoint.name == "G_200.pth"
    assert status.curves == {"loss/g/total": [(10, 40.0), (20, 30.0), (30, 20.0)],
                             "loss/d/total": [(10, 4.0), (20, 5.0), (30, 6.0)]}
    assert {"step": 30, "value": 20.0, "curve": "g/total"} in curve_rows(status)
    assert "G_200.pth (step 200)" in status.summary() and "loss/g/total: 20 at step 30" in status.summary()
    assert training_status(tmp_path / "nothing").curves == {}


def test_jobs_run_one_per_kind_show_their_tail_and_stop(tmp_path):
    from core.errors import SvcError
    from webui.training import Jobs

    jobs = Jobs(tmp_path)
    quick = [[sys.executable, "-c", "print('first')"], [sys.executable, "-c", "print('second')"]]
    job = jobs.start("preprocess", quick, tmp_path / "pre.log")
    job.wait(60)
    assert job.returncode == 0
    assert job.tail().splitlines()[1] == "first"
    assert job.tail().splitlines()[-3:] == ["$ python -c print('second')", "second", "finished (exit code 0)"]
    assert jobs.tail("preprocess").startswith("[preprocess: not running; log ")
    slow = [[sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]]
    running = jobs.start("train", slow, tmp_path / "train.log")
    with pytest.raises(SvcError, match="a train job is running already"):
        jobs.start("train", slow, tmp_path / "train.log")
    assert jobs.stop("train") == "train job stopped"
    assert not running.running and running.tail().endswith("stopped")


def test_train_command_resumes_with_the_folder_config(tmp_path):
    from core.errors import SvcError
    from webui.training import train_command

    with pytest.raises(SvcError, match="run the preprocessing first"):
        train_command(tmp_path, "run", tmp_path / "configs" / "config.json")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    command = train_command(tmp_path, "run", tmp_path / "configs" / "config.json")
    assert command[0] == sys.executable and command[1].endswith("train.py")
    assert command[2:] == ["-c", str(tmp_path / "run" / "config.json"), "-m", "run", "--logs_dir", str(tmp_path)]


def test_mix_and_compress_tools(root, tmp_path):
    import torch

    from core.errors import SvcError
    from webui.tools import compress_model, mix_models, output_name

    first = root / "logs" / "tiny" / "G_1.pth"
    checkpoint = torch.load(first, weights_only=True)
    checkpoint["model"] = {key: value * 3 for key, value in checkpoint["model"].items()}
    second = tmp_path / "G_2.pth"
    torch.save(checkpoint, second)
    mixed = mix_models([first, second], [50, 50], "linear", tmp_path / output_name("half", ".pth"))
    weights = torch.load(mixed, weights_only=True)["model"]
    key = "emb_g.weight"
    assert torch.allclose(weights[key], torch.load(first, weights_only=True)["model"][key] * 2, atol=1e-6)
    with pytest.raises(SvcError, match="exists already"):
        mix_models([first, second], [50, 50], "linear", mixed)
    for bad in ("../x", "G_100", ".hidden"):
        with pytest.raises(SvcError, match="plain file name"):
            output_name(bad, ".pth")
    release, before, after = compress_model(second, root / "logs" / "tiny" / "config.json", half=True)
    assert release.name == "G_2_release_half.pth" and after < before
    compressed = torch.load(release, weights_only=True)["model"]
    assert not any("enc_q" in name for name in compressed) and compressed[key].dtype == torch.float16
