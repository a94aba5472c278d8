"""Diffusion training on tiny generated feature files: loss goes down, checkpoints, resume, data rules, CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion.dataset import MelDataset, load_clip
from core.checkpoint import latest_diffusion_checkpoint as latest_checkpoint
from core.checkpoint import load_diffusion_checkpoint as load_checkpoint
from core.checkpoint import save_diffusion_checkpoint as save_checkpoint
from diffusion.trainer import learning_rate, train, validation_loss
from diffusion.unit2mel import Unit2Mel, Unit2MelDims, build_model
from core.config import load_config, load_template, save_config
from core.errors import SvcError
from core.fileio import np_save, torch_save
from tests.conftest import FIXTURES, captured_logs, run_script

DIM = 8


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny models: one torch thread


def write_clip(wav: Path, frames: int, seed: int, keyshift: float = 2.0) -> None:
    """Feature files of one clip in preprocess_hubert_f0.py's formats; the mel follows f0 and the units."""
    rng = np.random.default_rng(seed)
    wav.parent.mkdir(parents=True, exist_ok=True)
    f0 = 220 * 2 ** (np.sin(np.arange(frames) / 7 + seed) / 3)
    uv = np.ones(frames)
    units = rng.standard_normal((1, DIM, frames * 50 // 86 + 1)).astype(np.float32)
    bins = np.arange(128)[None, :]
    mel = (-8 + 4 * np.exp(-((bins - f0[:, None] / 10) ** 2) / 50)).astype(np.float32)  # [T, 128]
    mel[:, 0] = -10 + np.arange(frames) / 10  # bin 0 tells which frame a crop starts at
    vol = (0.1 + 0.05 * np.sin(np.arange(frames) / 5)).astype(np.float32)
    torch_save(torch.from_numpy(units), f"{wav}.soft.pt")
    np_save(f"{wav}.f0.npy", np.array((f0, uv), dtype=object), allow_pickle=True)
    np_save(f"{wav}.vol.npy", vol)
    np_save(f"{wav}.mel.npy", mel)
    aug = np.empty(2, dtype=object)
    aug[0], aug[1] = mel + 0.5, keyshift
    np_save(f"{wav}.aug_mel.npy", aug, allow_pickle=True)
    np_save(f"{wav}.aug_vol.npy", vol * 0.8)


def make_dataset(root: Path, frames=(40, 48, 56, 64), speakers=("alice", "bob")) -> dict[str, Path]:
    train, val = [], []
    for s, spk in enumerate(speakers):
        for i, n in enumerate(frames):
            wav = root / "dataset" / "44k" / spk / f"{i}.wav"
            write_clip(wav, n, seed=10 * s + i)
            (val if i == 0 else train).append(str(wav))
    (root / "filelists").mkdir(exist_ok=True)
    (root / "filelists" / "train.txt").write_text("\n".join(train) + "\n")
    (root / "filelists" / "val.txt").write_text("\n".join(val) + "\n")
    return {"train": root / "filelists" / "train.txt", "val": root / "filelists" / "val.txt"}


def tiny_config(root: Path, lists: dict[str, Path], n_chans: int = 16, **train):
    config = load_template("diffusion_template.yaml")
    config.data.encoder_out_channels = DIM
    config.data.duration = 0.4  # 34-frame crops
    config.data.training_files, config.data.validation_files = str(lists["train"]), str(lists["val"])
    for key, value in dict(n_layers=2, n_chans=n_chans, n_hidden=16, timesteps=100, n_spk=2).items():
        config.model[key] = value
    config.device = "cpu"
    config.vocoder.ckpt = str(root / "no_vocoder" / "model")
    config.env.expdir = str(root / "exp")
    config.spk = {"alice": 0, "bob": 1}
    settings = dict(num_workers=0, batch_size=3, epochs=1000, interval_log=5, interval_val=30,
                    interval_force_save=60, lr=0.003, decay_step=1000, save_opt=True)
    for key, value in {**settings, **train}.items():
        config.train[key] = value
    return config


def test_training_lowers_loss_saves_and_resumes(tmp_path):
    # 128 channels: a WaveNet narrower than the 128 mel bins cannot even pass the noise through; 1000 steps:
    # the noisy end of the chain, where the noise is easy to predict, is what a short run learns first.
    config = tiny_config(tmp_path, make_dataset(tmp_path), n_chans=128)
    config.model.timesteps = 1000
    expdir = Path(config.env.expdir)
    torch.manual_seed(0)
    steps: list[int] = []
    assert train(config, max_steps=60, on_step=lambda step, loss: steps.append(step)) == 60
    assert steps == list(range(1, 61))
    assert not (expdir / "model_30.pt").exists()  # pruned: 30 is not a multiple of interval_force_save
    checkpoint = torch.load(expdir / "model_60.pt", weights_only=True)
    assert checkpoint["global_step"] == 60 and set(checkpoint) == {"global_step", "model", "optimizer"}
    assert load_config(expdir / "config.yaml").model.n_chans == 128
    assert list((expdir / "logs").glob("events.out.tfevents.*"))

    steps.clear()
    assert train(config, max_steps=120, on_step=lambda step, loss: steps.append(step)) == 120
    assert steps[0] == 61 and steps[-1] == 120
    assert (expdir / "model_60.pt").exists()  # kept: a multiple of interval_force_save
    assert not (expdir / "model_90.pt").exists()
    assert latest_checkpoint(expdir) == (expdir / "model_120.pt", 120)

    fresh, trained = build_model(config), build_model(config)
    trained.load_state_dict(torch.load(expdir / "model_120.pt", weights_only=True)["model"])
    val_set = MelDataset(Path(config.data.validation_files).read_text().split(), config.spk, 2, "nearest", cache=False)
    cpu = torch.device("cpu")
    before, after = validation_loss(fresh, val_set, cpu), validation_loss(trained, val_set, cpu)
    assert before == pytest.approx(1.0, abs=0.1)  # zero-initialised output layer predicts no noise
    assert after < 0.92 * before


def test_resume_without_optimizer_state_and_base_model(tmp_path):
    """A model_0.pt base with another speaker count loads non-strictly; its stored step is ignored."""
    config = tiny_config(tmp_path, make_dataset(tmp_path), save_opt=False, interval_val=10)
    base = Unit2Mel(Unit2MelDims(input_channel=DIM, n_spk=5, n_layers=2, n_chans=16, n_hidden=16, timesteps=100))
    save_checkpoint(Path(config.env.expdir) / "model_0.pt", base, 123456)
    with captured_logs("INFO") as messages:
        assert train(config, max_steps=10) == 10
    text = "".join(messages)
    assert "spk_embed.weight: checkpoint (5, 16) vs model (2, 16)" in text
    assert "optimizer starts fresh" in text
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters())
    load_checkpoint(Path(config.env.expdir) / "model_0.pt", model, optimizer)
    assert torch.equal(model.unit_embed.weight, base.unit_embed.weight)
    assert model.spk_embed.weight.shape == (2, 16) and not optimizer.state
    checkpoint = torch.load(Path(config.env.expdir) / "model_10.pt", weights_only=True)
    assert set(checkpoint) == {"global_step", "model"}
    assert (Path(config.env.expdir) / "model_0.pt").exists()


def test_dataset_items_crop_augment_and_speaker(tmp_path):
    make_dataset(tmp_path)
    wav = str(tmp_path / "dataset" / "44k" / "bob" / "1.wav")
    clip = load_clip(wav, "nearest")
    assert clip.units.shape == (48, DIM) and clip.mel.shape == (48, 128) and clip.keyshift == 2.0
    torch.manual_seed(0)
    data = MelDataset([wav], {"alice": 0, "bob": 1}, 2, "nearest", crop_frames=34, use_aug=True, cache_fp16=True)
    seen = set()
    for _ in range(20):
        item = data[0]
        assert item["units"].shape == (34, DIM) and item["f0"].shape == (34, 1) and item["mel"].shape == (34, 128)
        assert item["spk_id"].tolist() == [1]
        shift = item["aug_shift"].item()
        seen.add(shift)
        mel_source = clip.aug_mel if shift else clip.mel
        start = round((item["mel"][0, 0].item() - (0.5 if shift else 0) + 10) * 10)
        assert torch.allclose(item["mel"].float(), mel_source[start:start + 34], atol=1e-2)
        ratio = 2 ** (shift / 12)
        assert torch.allclose(item["f0"][:, 0], clip.f0[start:start + 34] * ratio)
    assert seen == {0.0, 2.0}


def test_short_clips_skipped_and_all_short_refused(tmp_path):
    lists = make_dataset(tmp_path, frames=(20, 30, 50))
    wavs = lists["train"].read_text().split()
    with captured_logs("WARNING") as messages:
        data = MelDataset(wavs, {"alice": 0, "bob": 1}, 2, "nearest", crop_frames=34)
    assert len(data) == 2 and all(" 50 frames" not in m for m in messages)
    assert sum("shorter than the 34-frame training crop" in m for m in messages) == 2
    with pytest.raises(SvcError, match="no training clip is at least 60 frames long; lower data.duration"):
        MelDataset(wavs, {"alice": 0, "bob": 1}, 2, "nearest", crop_frames=60)
    with pytest.raises(SvcError, match="has id 1 but model.n_spk is 1"):
        MelDataset(wavs, {"alice": 0, "bob": 1}, 1, "nearest")
    Path(wavs[0] + ".aug_mel.npy").unlink()
    with pytest.raises(SvcError, match=r"missing feature file .*aug_mel.npy; run preprocess_hubert_f0.py"):
        MelDataset(wavs, {"alice": 0, "bob": 1}, 2, "nearest")


def test_learning_rate_schedule():
    assert learning_rate(0, 1e-4, 100, 0.5) == 1e-4
    assert learning_rate(250, 1e-4, 100, 0.5) == pytest.approx(2.5e-5)


@pytest.mark.shared
def test_validation_audio_with_vocoder(tmp_path):
    """With the (tiny fixture) NSF-HiFiGAN vocoder, validation writes gt/pred audio to TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    config = tiny_config(tmp_path, make_dataset(tmp_path), interval_val=5)
    config.vocoder.ckpt = str(FIXTURES / "nsf_hifigan" / "model")
    config.infer.speedup = 20
    train(config, max_steps=5)
    events = EventAccumulator(str(Path(config.env.expdir) / "logs"), size_guidance={"audio": 0}).Reload()
    assert {"alice_0.wav_gt.wav", "alice_0.wav_pred.wav", "bob_0.wav_pred.wav"} <= set(events.Tags()["audio"])
    assert "alice_0.wav" in events.Tags()["images"]
    assert "validation/loss" in events.Tags()["scalars"]


@pytest.mark.parametrize("amp_dtype,cache", [("bf16", False), ("fp16", True)])
def test_mixed_precision_and_uncached_data(tmp_path, amp_dtype, cache):
    config = tiny_config(tmp_path, make_dataset(tmp_path), amp_dtype=amp_dtype, cache_all_data=cache, interval_val=4)
    losses: list[float] = []
    assert train(config, max_steps=4, on_step=lambda step, loss: losses.append(loss)) == 4
    assert len(losses) == 4 and all(np.isfinite(losses))
    state = torch.load(Path(config.env.expdir) / "model_4.pt", weights_only=True)["model"]
    assert state["unit_embed.weight"].dtype == torch.float32


def test_bad_amp_dtype_refused(tmp_path):
    config = tiny_config(tmp_path, make_dataset(tmp_path), amp_dtype="fp8")
    with pytest.raises(SvcError, match="train.amp_dtype must be one of fp32, fp16, bf16"):
        train(config, max_steps=1)


@pytest.mark.slow
def test_train_diff_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = tiny_config(tmp_path, make_dataset(tmp_path), epochs=2, interval_val=2)
    save_config(config, tmp_path / "diffusion.yaml")
    result = run_script("train_diff.py", "-c", tmp_path / "diffusion.yaml", cwd=tmp_path)
    assert "training finished at step 4" in result.stderr
    assert (tmp_path / "exp" / "model_4.pt").exists() and (tmp_path / "exp" / "log_info.txt").exists()
    config.data.duration = 5.0
    save_config(config, tmp_path / "bad.yaml")
    result = run_script("train_diff.py", "-c", tmp_path / "bad.yaml", cwd=tmp_path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no training clip is at least" in result.stderr
