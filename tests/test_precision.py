"""--precision: fp32 is the exact path, the fast paths stay within the model's own randomness, bad values are
refused in one line, and the decoder graphs are cached by the weights' hash."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import SHARED
from core.errors import SvcError
from inference.precision import f0_difference_cents, log_mel_distance, resolve_precision
from inference.svc import ConversionOptions, Svc
from vencoder.ort_encoder import OrtEncoder
from tests.tiny_model import add_content_encoder, save_model, tone

RECORDINGS = ("singing/sms_vignesh.wav", "speech/cmu_us_awb_arctic_a0007.wav")  # mono, 44.1 kHz


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("precision")
    save_model(root)
    add_content_encoder(root)
    return root


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory) -> Path:
    """One graph cache for the module, so each decoder is exported once."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SVC_CACHE_DIR", str(folder))
        yield folder


def load(root: Path, precision: str) -> Svc:
    return Svc(root / "G_1.pth", root / "config.json", device="cpu", pretrain_dir=root / "pretrain",
               precision=precision)


@pytest.mark.shared
def test_fp32_is_the_plain_torch_path_and_onnx_matches_it(model_dir, one_thread):
    wav = tone(2.0, start=0.3)
    opts = ConversionOptions(speaker="alto")
    default = Svc(model_dir / "G_1.pth", model_dir / "config.json", device="cpu", pretrain_dir=model_dir / "pretrain")
    exact = load(model_dir, "fp32")
    assert default.precision == exact.precision == "fp32" and exact.net_g.dec.fast_body is None
    reference = default.convert(wav, 44100, opts)
    np.testing.assert_array_equal(exact.convert(wav, 44100, opts), reference)
    onnx = load(model_dir, "onnx")
    assert onnx.net_g.dec.fast_body is not None and isinstance(onnx.encoder, OrtEncoder)
    assert not isinstance(exact.encoder, OrtEncoder)
    np.testing.assert_allclose(onnx.convert(wav, 44100, opts), reference, atol=1e-4)


@pytest.mark.shared
def test_int8_stays_below_the_seed_to_seed_distance_on_real_recordings(model_dir, cache, tmp_path, monkeypatch,
                                                                       one_thread):
    import vdecoder.ort_body as ort_body
    monkeypatch.setattr(ort_body, "MIN_INT8_CHANNELS", 16)  # the tiny decoder's widest stage has 16 channels
    monkeypatch.setenv("SVC_CACHE_DIR", str(tmp_path))
    exact = load(model_dir, "fp32")
    for graph in cache.glob("*-onnx.onnx"):  # the float32 export of the other tests, not its int8 graph
        shutil.copy(graph, tmp_path)
    fast = load(model_dir, "int8")
    for recording in RECORDINGS:
        audio, sr = sf.read(SHARED / "assets" / "audio" / recording, dtype="float32", frames=2 * 44100)
        opts = ConversionOptions(speaker="tenor", noice_scale=0.4)
        reference = exact.convert(audio, sr, opts)
        other_seed = exact.convert(audio, sr, ConversionOptions(speaker="tenor", noice_scale=0.4, seed=1))
        converted = fast.convert(audio, sr, opts)
        bound = log_mel_distance(reference, other_seed)
        assert bound > 0.01  # the seeds really differ
        assert 0 < log_mel_distance(reference, converted) < bound, recording  # quantised, within the bound
        assert f0_difference_cents(reference, converted) < 5


@pytest.mark.shared
def test_graphs_are_cached_by_the_weights_and_rebuilt_when_damaged(model_dir, cache, one_thread):
    first = load(model_dir, "int8")
    files = sorted(p.name for p in cache.glob("*.onnx*"))
    assert [name.split("-")[0] + "-" + name.split("-", 3)[-1] for name in files] == [
        "decoder-int8.onnx", "decoder-onnx.onnx", "encoder-onnx.onnx", "encoder-onnx.onnx.data"]
    assert (cache / files[2]).stat().st_size < (cache / files[3]).stat().st_size  # the weights beside the graph
    assert len(list((cache / "digests").iterdir())) == 1  # the encoder file's digest, remembered
    stamps = {name: (cache / name).stat().st_mtime_ns for name in files}
    load(model_dir, "int8")
    assert {name: (cache / name).stat().st_mtime_ns for name in files} == stamps  # reused, not rebuilt
    for name in (files[0], files[3]):
        (cache / name).write_bytes(b"not a graph")
    out = load(model_dir, "int8").convert(tone(1.0), 44100, ConversionOptions(speaker="alto"))
    assert all((cache / name).stat().st_size > 1000 for name in files)
    assert np.isfinite(out).all() and np.abs(out).max() > 0
    assert first.precision == "int8" and isinstance(first.encoder, OrtEncoder)


def test_an_encoder_weight_file_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    import hashlib

    from core.onnx_cache import file_digest
    weights = tmp_path / "encoder.pt"
    weights.write_bytes(b"weights" * 1000)
    hashed = []
    real = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda data=b"": hashed.append(data) or real(data))
    first = file_digest(weights, 2, tmp_path / "cache")
    assert first == real(b"v2" + b"weights" * 1000).hexdigest()
    reads = len(hashed)
    assert file_digest(weights, 2, tmp_path / "cache") == first and len(hashed) == reads + 1  # the key only
    for memo in (tmp_path / "cache" / "digests").iterdir():
        memo.write_bytes(b"\xff\xfe damaged")
    assert file_digest(weights, 2, tmp_path / "cache") == first and len(hashed) > reads + 1  # hashed again
    assert file_digest(weights, 2, tmp_path / "cache") == first  # and remembered again
    weights.write_bytes(b"other!!" * 1000)
    assert file_digest(weights, 2, tmp_path / "cache") == real(b"v2" + b"other!!" * 1000).hexdigest()
    assert file_digest(weights, 3, tmp_path / "cache") != file_digest(weights, 2, tmp_path / "cache")


def test_unknown_precision_is_refused_in_one_line(model_dir):
    with pytest.raises(SvcError, match="unknown precision 'fp16' \\(choose one of: auto, fp32, onnx, int8, bf16\\)"):
        load(model_dir, "fp16")


@pytest.mark.parametrize("script", ["inference_main", "realtime", "flask_api", "webUI"])
def test_every_converting_script_defaults_to_auto_and_lists_the_choices(script, capsys):
    import importlib
    build_parser = importlib.import_module(script).build_parser
    required = ["-m", "G.pth", "-c", "config.json"] if script == "flask_api" else []
    assert build_parser().parse_args(required).precision == "auto"
    assert build_parser().parse_args([*required, "--precision", "fp32"]).precision == "fp32"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*required, "--precision", "half"])
    assert "invalid choice: 'half'" in capsys.readouterr().err


def test_web_ui_refuses_a_cpu_only_precision_on_cuda_before_starting():
    import subprocess
    import sys

    from conftest import REPO
    result = subprocess.run([sys.executable, str(REPO / "webUI.py"), "--precision", "int8", "-d", "cuda:1"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--precision int8 runs on the CPU only; use fp32 or bf16 on cuda" in result.stderr


def test_auto_picks_int8_on_a_cpu_and_bf16_warns_without_native_support(monkeypatch):
    import inference.precision as precision
    assert resolve_precision("auto", torch.device("cpu")) == "int8"
    assert resolve_precision("auto", torch.device("cuda")) == "fp32"
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    warnings = []
    monkeypatch.setattr(precision.logger, "warning", warnings.append)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16" and "emulated" in warnings[0]
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16" and len(warnings) == 1
    with pytest.raises(SvcError, match="CPU only"):
        resolve_precision("int8", torch.device("cuda"))


@pytest.mark.shared
@pytest.mark.parametrize("name", ["vec768l12", "vec256l9"])
def test_the_onnx_encoder_gives_torch_features_at_any_length(model_dir, tmp_path, name, one_thread):
    from vencoder import get_speech_encoder
    from vencoder.ort_encoder import load_ort_encoder
    encoder = get_speech_encoder(name, "cpu", model_dir / "pretrain")
    fast = load_ort_encoder(name, model_dir / "pretrain", folder=tmp_path)
    assert fast.graph.name.startswith(f"encoder-{name}-") and fast.graph.parent == tmp_path
    for samples in (16000, 23457, 80000):  # the graph was traced on 16000
        wav = torch.from_numpy(tone(samples / 16000, sr=16000, start=0.1))
        expected = encoder(wav)
        assert fast(wav).shape == expected.shape
        np.testing.assert_allclose(fast(wav), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.shared
def test_an_encoder_that_fails_to_export_runs_in_torch_with_a_warning(model_dir, tmp_path, monkeypatch):
    import vencoder.ort_encoder as ort_encoder
    from vencoder.hubert import ContentVec768L12

    def fail(module, path):
        raise RuntimeError("unsupported operator")

    warnings = []
    monkeypatch.setattr(ort_encoder, "export_encoder", fail)
    monkeypatch.setattr(ort_encoder.logger, "warning", warnings.append)
    monkeypatch.setenv("SVC_CACHE_DIR", str(tmp_path))
    encoder = ort_encoder.speech_encoder("vec768l12", "cpu", model_dir / "pretrain", onnx=True)
    assert type(encoder) is ContentVec768L12 and list(tmp_path.glob("*.onnx*")) == []  # no graph left behind
    assert warnings == ["the speech encoder vec768l12 could not be prepared for ONNX Runtime "
                        "(RuntimeError: unsupported operator); it runs in torch"]
    assert type(ort_encoder.speech_encoder("vec768l12", "cpu", model_dir / "pretrain", onnx=False)) is ContentVec768L12


def test_a_damaged_encoder_file_is_refused_not_worked_around(tmp_path, monkeypatch):
    import vencoder.ort_encoder as ort_encoder
    warnings = []
    monkeypatch.setattr(ort_encoder.logger, "warning", warnings.append)
    monkeypatch.setenv("SVC_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "checkpoint_best_legacy_500.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SvcError, match="checkpoint_best_legacy_500.pt"):
        ort_encoder.speech_encoder("vec768l12", "cpu", tmp_path, onnx=True)
    assert warnings == [] and not any((tmp_path / "cache").glob("*.onnx"))
