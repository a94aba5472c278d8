"""Content-encoder ONNX export (hubert/<name>.onnx, MoeVS §C4) from the tiny ContentVec fixture."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from core.errors import MissingPretrainedError, SvcError
from onnxexport.encoder import parse_encoder_name
from onnxexport.export import export_encoder_file
from tests.conftest import FIXTURES, run_script
from vencoder import get_speech_encoder

CONTENTVEC = FIXTURES / "contentvec"
CHECKPOINT = CONTENTVEC / "checkpoint_best_legacy_500.pt"
CASES = {"vec-768-layer-12": "vec768l12", "vec-256-layer-9": "vec256l9"}


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny models: one torch thread


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("encoders")
    return out, {name: export_encoder_file(CHECKPOINT, name, out) for name in CASES}


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.shared
@pytest.mark.parametrize("name", list(CASES))
def test_encoder_graph_and_outputs_match_4_1(exported, name):
    out, results = exported
    path, diffs = results[name]
    assert path == out / "hubert" / f"{name}.onnx"
    assert len(diffs) == 2 and max(diffs) < 1e-3  # parity with our torch encoder at two lengths
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["source"] and dims(graph.input[0]) == ["batch", 1, "samples"]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.name for o in graph.output] == ["embed"] and dims(graph.output[0])[1] == "frames"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for clip in ("1s", "odd"):
        wav = np.load(CONTENTVEC / f"in_16k_{clip}.npy")
        embed = session.run(["embed"], {"source": wav[None, None]})[0]  # [1, T, D]
        expected = np.load(CONTENTVEC / f"out_{CASES[name]}_{clip}.npy")  # 4.1's encoder, [1, D, T]
        assert embed.shape == expected.transpose(0, 2, 1).shape
        np.testing.assert_allclose(embed, expected.transpose(0, 2, 1), atol=1e-4)


@pytest.mark.shared
def test_our_onnx_encoder_reads_the_export(exported):
    """The exported file also works as pretrain/vec-768-layer-12.onnx for speech_encoder vec768l12-onnx."""
    out, _ = exported
    wav = torch.from_numpy(np.load(CONTENTVEC / "in_16k_odd.npy"))
    from_onnx = get_speech_encoder("vec768l12-onnx", "cpu", pretrain_dir=out / "hubert")(wav)
    from_torch = get_speech_encoder("vec768l12", "cpu", pretrain_dir=CONTENTVEC)(wav)
    assert from_onnx.shape == from_torch.shape == (1, 64, 38)
    torch.testing.assert_close(from_onnx, from_torch, atol=1e-4, rtol=0)


@pytest.mark.shared
def test_existing_encoder_file_is_kept(exported):
    out, results = exported
    path, _ = results["vec-256-layer-9"]
    before = path.stat().st_mtime_ns
    again, diffs = export_encoder_file(CHECKPOINT, "vec-256-layer-9", out)
    assert again == path and diffs == [] and path.stat().st_mtime_ns == before


def test_encoder_names_and_missing_checkpoint(tmp_path):
    assert parse_encoder_name("vec-768-layer-12") == (12, False)
    assert parse_encoder_name("vec-256-layer-9") == (9, True)
    with pytest.raises(SvcError, match="only ContentVec layer outputs"):
        parse_encoder_name("hubert-soft")
    with pytest.raises(MissingPretrainedError, match="checkpoint_best_legacy_500.pt"):
        export_encoder_file(tmp_path / "checkpoint_best_legacy_500.pt", "vec-768-layer-12", tmp_path)


@pytest.mark.shared
@pytest.mark.slow
def test_cli_encoder_only(tmp_path):
    result = run_script("onnx_export.py", "--encoder_only", "--hubert", "vec-256-layer-9",
                        "--encoder_checkpoint", CHECKPOINT, "-o", tmp_path / "moevs", cwd=tmp_path)
    assert "encoder parity (16000 samples): max abs difference" in result.stdout
    assert (tmp_path / "moevs" / "hubert" / "vec-256-layer-9.onnx").is_file()
