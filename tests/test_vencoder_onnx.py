"""ONNX content encoders: a tiny ONNX model built here stands in for MoeVoiceStudio's files."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from core.errors import MissingPretrainedError, SvcError
from vencoder import get_speech_encoder
from vencoder.onnx_encoder import OnnxEncoder, execution_providers

DIM = 8


def write_conv_encoder(path, weight: np.ndarray, bias: np.ndarray, input_name: str = "source") -> None:
    """[1, 1, N] -> Conv1d(1 -> D, kernel 320, stride 320) -> transpose -> [1, N // 320, D]."""
    graph = helper.make_graph(
        [helper.make_node("Conv", [input_name, "w", "b"], ["conv"], kernel_shape=[320], strides=[320]),
         helper.make_node("Transpose", ["conv"], ["units"], perm=[0, 2, 1])],
        "tiny_encoder",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 1, "n"])],
        [helper.make_tensor_value_info("units", TensorProto.FLOAT, [1, "t", DIM])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture
def tiny_onnx(tmp_path):
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.1, (DIM, 1, 320)).astype(np.float32)
    bias = rng.normal(0, 0.1, DIM).astype(np.float32)
    path = tmp_path / "vec-256-layer-9.onnx"
    write_conv_encoder(path, weight, bias, input_name="audio_in")
    return path, torch.from_numpy(weight), torch.from_numpy(bias)


def test_onnx_encoder_shape_and_values(tiny_onnx):
    path, weight, bias = tiny_onnx
    encoder = get_speech_encoder("vec256l9-onnx", "cpu", pretrain_dir=path.parent)
    assert isinstance(encoder, OnnxEncoder) and encoder.input_name == "audio_in"
    wav = torch.randn(16000 + 123, generator=torch.Generator().manual_seed(1)) * 0.3
    features = encoder(wav)
    expected = F.conv1d(wav.view(1, 1, -1), weight, bias, stride=320)  # [1, D, N // 320]
    assert features.shape == (1, DIM, 50)
    assert torch.allclose(features, expected, atol=1e-5)


def test_onnx_encoder_averages_channels(tiny_onnx):
    path, weight, bias = tiny_onnx
    encoder = OnnxEncoder("hubertsoft-onnx", path, torch.device("cpu"))
    stereo = torch.randn(3200, 2, generator=torch.Generator().manual_seed(2))
    expected = F.conv1d(stereo.mean(dim=1).view(1, 1, -1), weight, bias, stride=320)
    assert torch.allclose(encoder(stereo), expected, atol=1e-5)


def test_missing_onnx_file_names_it(tmp_path):
    with pytest.raises(MissingPretrainedError, match="vec-768-layer-12.onnx") as info:
        get_speech_encoder("vec768l12-onnx", "cpu", pretrain_dir=tmp_path)
    assert "speech encoder vec768l12-onnx" in str(info.value)
    assert "MoeSS-SUBModel" in str(info.value)


def test_corrupt_onnx_file_is_a_clear_error(tmp_path):
    path = tmp_path / "hubert-soft.onnx"
    path.write_bytes(b"not an onnx model")
    with pytest.raises(SvcError, match="cannot load the ONNX model"):
        OnnxEncoder("hubertsoft-onnx", path, torch.device("cpu"))


def test_providers_cpu_and_cuda_index(monkeypatch):
    assert execution_providers(torch.device("cpu")) == ["CPUExecutionProvider"]
    monkeypatch.setattr("onnxruntime.get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert execution_providers(torch.device("cuda:1")) == [("CUDAExecutionProvider", {"device_id": 1}),
                                                           "CPUExecutionProvider"]
    assert execution_providers(torch.device("cuda"))[0] == ("CUDAExecutionProvider", {"device_id": 0})
    monkeypatch.setattr("onnxruntime.get_available_providers", lambda: ["CPUExecutionProvider"])
    assert execution_providers(torch.device("cuda:0")) == ["CPUExecutionProvider"]
