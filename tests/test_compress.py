"""compress_model.py: 4.1's release layout (no enc_q, iteration 0, fresh optimizer, lr 1e-4), fp16, name."""
from __future__ import annotations

import torch

from core.checkpoint import read_checkpoint
from core.config import save_config
from training.loop import build_state, build_generator, save
from tests.conftest import run_script
from tests.test_train import tiny_config


def test_compress_drops_enc_q_and_optimizer(tmp_path):
    hps = tiny_config(tmp_path / "data")
    save_config(hps, tmp_path / "config.json")
    torch.manual_seed(0)
    state = build_state(hps, torch.device("cpu"), build_generator)
    state.optim_g.step()  # give the optimizer some state to drop
    save(state, hps, tmp_path, 5)
    original = read_checkpoint(tmp_path / "G_5.pth")

    run_script("compress_model.py", "-c", tmp_path / "config.json", "-i", tmp_path / "G_5.pth")
    release = read_checkpoint(tmp_path / "G_5_release.pth")
    assert set(release) == {"model", "iteration", "optimizer", "learning_rate"}
    assert release["iteration"] == 0 and release["learning_rate"] == 0.0001
    assert release["optimizer"]["state"] == {}
    assert len(release["optimizer"]["param_groups"][0]["params"]) == len(list(state.net_g.parameters()))
    expected = {k for k in original["model"] if "enc_q" not in k}
    assert set(release["model"]) == expected and len(expected) < len(original["model"])
    for key in expected:
        assert torch.equal(release["model"][key], original["model"][key])
    assert (tmp_path / "G_5_release.pth").stat().st_size < (tmp_path / "G_5.pth").stat().st_size

    run_script("compress_model.py", "-c", tmp_path / "config.json", "-i", tmp_path / "G_5.pth", "-hf",
               "-o", tmp_path / "out" / "small.pth")
    half = read_checkpoint(tmp_path / "out" / "small.pth")
    assert all(v.dtype == torch.float16 for v in half["model"].values() if v.is_floating_point())
    assert set(half["model"]) == expected
    for key in expected:
        assert torch.equal(half["model"][key], release["model"][key].half())


def test_half_keeps_shared_weights_shared(tmp_path):
    """With flow_share_parameter the flows share one WN: -hf stores it once, so the file shrinks by about
    half of the float32 release's weight bytes, and the shared keys load as one tensor again."""
    hps = tiny_config(tmp_path / "data")
    hps.model.flow_share_parameter = True
    save_config(hps, tmp_path / "config.json")
    torch.manual_seed(0)
    save(build_state(hps, torch.device("cpu"), build_generator), hps, tmp_path, 5)
    run_script("compress_model.py", "-c", tmp_path / "config.json", "-i", tmp_path / "G_5.pth")
    run_script("compress_model.py", "-c", tmp_path / "config.json", "-i", tmp_path / "G_5.pth", "-hf")
    full, half = (tmp_path / "G_5_release.pth").stat().st_size, (tmp_path / "G_5_release_half.pth").stat().st_size
    release = read_checkpoint(tmp_path / "G_5_release.pth")["model"]
    weight_bytes = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in release.values()}.values())
    assert full - half > 0.45 * weight_bytes
    assert sharing_groups(read_checkpoint(tmp_path / "G_5_release_half.pth")["model"]) == sharing_groups(release)


def sharing_groups(weights: dict) -> list[list[str]]:
    """The sets of keys (more than one) that hold the same tensor data."""
    groups: dict[int, list[str]] = {}
    for key, tensor in weights.items():
        groups.setdefault(tensor.untyped_storage().data_ptr(), []).append(key)
    shared = sorted(keys for keys in groups.values() if len(keys) > 1)
    assert shared, "the model should share the flows' WN weights"
    return shared


def test_compress_missing_input_is_a_clear_error(tmp_path):
    hps = tiny_config(tmp_path / "data")
    save_config(hps, tmp_path / "config.json")
    result = run_script("compress_model.py", "-c", tmp_path / "config.json", "-i", tmp_path / "G_1.pth", check=False)
    assert result.returncode == 1
    assert "file not found" in result.stderr and "Traceback" not in result.stderr


def test_scripts_help_in_an_empty_folder(tmp_path):
    for script, flags in (("train.py", ["--logs_dir", "--cpu_processes", "--max_steps"]),
                          ("compress_model.py", ["-hf", "--half", "-o"])):
        result = run_script(script, "--help", cwd=tmp_path)
        assert all(flag in result.stdout for flag in flags)
    assert list(tmp_path.iterdir()) == []
