import numpy as np
import pytest
import torch

from conftest import run_script
from inference.loudness import mix_loudness
from core.checkpoint import mix_checkpoints


def _checkpoint(path, value):
    torch.save({"model": {"w": torch.full((2, 3), value), "b": torch.full((3,), value)}, "iteration": 5,
                "optimizer": None, "learning_rate": 1e-4}, path)


def test_linear_and_convex_model_mix(tmp_path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    _checkpoint(a, 1.0)
    _checkpoint(b, 3.0)
    linear = mix_checkpoints([str(a), str(b)], [50, 50], "linear")
    assert torch.allclose(linear["model"]["w"], torch.full((2, 3), 2.0))
    convex = mix_checkpoints([str(a), str(b)], [80, 20], "convex")
    w = torch.softmax(torch.tensor([0.8, 0.2], dtype=torch.float64), 0)
    assert torch.allclose(convex["model"]["b"], torch.full((3,), float(w[0] * 1 + w[1] * 3)))
    assert convex["iteration"] == 5


def test_model_mix_script_refuses_different_architectures(tmp_path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    _checkpoint(a, 1.0)
    torch.save({"model": {"w": torch.zeros(4, 4), "b": torch.zeros(3)}}, b)
    result = run_script("mix_model.py", "-i", a, b, "-p", "50", "50", "-o", tmp_path / "out.pth", check=False)
    assert result.returncode == 1
    assert "must share one config" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.pth").exists()


def test_loudness_mix_rate_one_is_identity_and_zero_imposes_source_envelope():
    sr = 8000
    t = np.arange(sr * 4) / sr
    source = (np.sin(2 * np.pi * 220 * t) * np.linspace(0.05, 0.8, len(t))).astype(np.float32)
    output = (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    assert mix_loudness(source, sr, output, sr, 1.0) is output
    imposed = mix_loudness(source, sr, output, sr, 0.0)
    first, last = np.abs(imposed[: sr // 2]).max(), np.abs(imposed[-sr // 2:]).max()
    assert last > 4 * first
    assert np.isfinite(imposed).all()
    half = mix_loudness(source, sr, output, sr, 0.5)
    assert np.abs(half[-sr // 2:]).max() == pytest.approx(np.sqrt(0.3 * np.abs(imposed[-sr // 2:]).max()), rel=0.2)
