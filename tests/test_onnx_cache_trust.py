"""The ONNX graph cache trusts no file by its name, and the weight-file digest memo notices rewritten files."""
from __future__ import annotations

import hashlib
import os
import shutil
import time

import numpy as np
import onnx
import torch

from tests.conftest import captured_logs
from tests.tiny_model import TINY_MODEL


def tiny_decoder(seed: int) -> torch.nn.Module:
    """The tiny model's NSF-HiFiGAN decoder with seeded random weights, weight norm removed (as Svc runs it)."""
    from core.config import load_template
    from models import SynthesizerTrn

    config = load_template("config_template.json")
    config.model.update(TINY_MODEL)
    torch.manual_seed(seed)
    net = SynthesizerTrn.from_config(config).eval()
    net.remove_weight_norm()
    return net.dec


def body_inputs(decoder: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    frames = 12
    return (torch.randn(1, decoder.conv_pre.in_channels, frames, generator=generator),
            torch.randn(1, 1, frames * decoder.upp, generator=generator) * 0.1,
            torch.randn(1, decoder.cond.in_channels, 1, generator=generator))


def test_a_graph_planted_under_other_weights_is_rebuilt_not_used(tmp_path, one_thread):
    from core.onnx_cache import SOURCE_KEY, weights_digest
    from vdecoder.ort_body import FORMAT_VERSION, build_ort_body

    weights_a, weights_b = tiny_decoder(0), tiny_decoder(1)
    graph_a = build_ort_body(weights_a, "onnx", folder=tmp_path / "a").path
    digest_b = weights_digest(weights_b, FORMAT_VERSION)
    planted = tmp_path / "b" / f"decoder-{digest_b[:32]}-onnx.onnx"
    planted.parent.mkdir()
    shutil.copy(graph_a, planted)
    with captured_logs("WARNING") as warnings:
        body = build_ort_body(weights_b, "onnx", folder=tmp_path / "b")
    assert body.path == planted
    assert len(warnings) == 1 and str(planted) in warnings[0] and "not used" in warnings[0], warnings
    recorded = {entry.key: entry.value for entry in onnx.load(str(planted)).metadata_props}
    assert recorded[SOURCE_KEY] == digest_b
    inputs = body_inputs(weights_b)
    with torch.no_grad():
        expected_b, expected_a = weights_b.body(*inputs), weights_a.body(*inputs)
    assert not torch.allclose(expected_a, expected_b, atol=1e-3)  # the two graphs really differ
    np.testing.assert_allclose(body(*inputs).numpy(), expected_b.numpy(), atol=1e-4)


def test_a_cached_graph_recording_no_weights_is_rebuilt(tmp_path, one_thread):
    """A graph from before the digest was recorded (or stripped of it) is not trusted either."""
    from core.onnx_cache import SOURCE_KEY
    from vdecoder.ort_body import build_ort_body

    weights = tiny_decoder(0)
    path = build_ort_body(weights, "onnx", folder=tmp_path).path
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save_model(model, str(path))
    with captured_logs("WARNING") as warnings:
        build_ort_body(weights, "onnx", folder=tmp_path)
    assert len(warnings) == 1 and "records no weights" in warnings[0], warnings
    assert SOURCE_KEY in {entry.key for entry in onnx.load(str(path)).metadata_props}
    with captured_logs("WARNING") as warnings:
        build_ort_body(weights, "onnx", folder=tmp_path)  # stamped now: used as it is
    assert warnings == []


def test_a_file_rewritten_with_its_mtime_restored_is_hashed_again(tmp_path):
    from core.onnx_cache import file_digest

    weights = tmp_path / "encoder.pt"
    weights.write_bytes(b"weights" * 1000)
    assert file_digest(weights, 2, tmp_path / "cache") == hashlib.sha256(b"v2" + b"weights" * 1000).hexdigest()
    before = weights.stat()
    time.sleep(0.05)  # past the file system's timestamp granularity
    with open(weights, "r+b") as file:  # in place: same inode, same size
        file.write(b"WEIGHTS")
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = weights.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    expected = hashlib.sha256(b"v2" + b"WEIGHTS" + b"weights" * 999).hexdigest()
    assert file_digest(weights, 2, tmp_path / "cache") == expected
