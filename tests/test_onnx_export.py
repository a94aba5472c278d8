"""ONNX export for MoeVoiceStudio: graph contract, parity with the torch model, descriptor, cluster files.

Tiny models (configs from configs_template with reduced sizes, random weights saved as 4.1 G checkpoints)
of each variant are exported once per module; parity runs at two short lengths.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from models import SynthesizerTrn
from core.checkpoint import save_checkpoint
from core.config import load_template, save_config
from core.errors import SvcError
from onnxexport.descriptor import HUBERT_NAMES, Speakers, hubert_name, model_speakers
from onnxexport.export import ExportOptions, export_for_moevs, load_model
from onnxexport.parity import GraphShape, OnnxRunner, check_parity, moevs_inputs, reference_audio
from tests.conftest import run_script

PARITY_FRAMES = (3, 20)
REDUCED = dict(inter_channels=8, hidden_channels=16, filter_channels=32, n_heads=2, n_layers=2,
               resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]], upsample_initial_channel=32,
               gin_channels=16, ssl_dim=256, speech_encoder="vec256l9", n_speakers=4, n_flow_layer=2,
               n_layers_trans_flow=2)
THREE = {"alice": 3, "bob": 0, "carol": 1}  # not in id order, and ids with a gap, on purpose


@dataclass(frozen=True)
class Variant:
    template: str = "config_template.json"
    model: tuple = ()
    spk: tuple = (("solo", 0),)
    plain_sid: bool = False
    source_noise: bool = False


VARIANTS = {
    "single": Variant(),
    "multi_mix": Variant(spk=tuple(THREE.items())),
    "vol_plain_sid": Variant(model=(("vol_embedding", True),), spk=tuple(THREE.items()), plain_sid=True),
    "tiny": Variant(template="config_tiny_template.json",
                    model=(("ssl_dim", 768), ("speech_encoder", "vec768l12")), spk=tuple(THREE.items())),
    "transformer_flow": Variant(model=(("use_transformer_flow", True), ("flow_share_parameter", True)),
                                spk=(("a", 0), ("b", 1))),
    "snake": Variant(model=(("vocoder_name", "nsf-snake-hifigan"),)),
    "source_noise": Variant(spk=(("a", 0), ("b", 1)), source_noise=True),
}


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny models: one torch thread


def tiny_config(variant: Variant) -> dict:
    config = load_template(variant.template).to_dict()
    config["model"].update(REDUCED)
    config["model"].update(dict(variant.model))
    config["spk"] = dict(variant.spk)
    return config


def write_project(root: Path, name: str, config: dict, seed: int = 0) -> SynthesizerTrn:
    """checkpoints/<name>/config.json + model.pth (4.1's G layout) with random weights under `root`."""
    torch.manual_seed(seed)
    model = SynthesizerTrn.from_config(config).eval()
    with torch.no_grad():
        for key, param in model.named_parameters():
            if ".post." in key:  # flows start as the identity (zero `post`); make them matter
                param.normal_(0, 0.1)
            if key.startswith("dec.") and key.endswith("weight_g"):  # a fresh decoder barely hears its input
                param.mul_(1.5)
    calibrate_output(model)
    folder = root / "checkpoints" / name
    save_config(config, folder / "config.json")
    save_checkpoint(folder / "model.pth", model, None, epoch=1, learning_rate=1e-4)
    return model


@torch.no_grad()
def calibrate_output(model: SynthesizerTrn, spread: float = 0.3) -> None:
    """Rescale `dec.conv_post` so its output (before tanh) has mean 0 and std `spread` on a probe input:
    random weights otherwise give near-constant or saturated audio, against which parity means little."""
    captured = []
    handle = model.dec.conv_post.register_forward_hook(lambda module, args, out: captured.append(out))
    frames = 24
    f0 = 220.0 * torch.ones(1, frames)
    vol = torch.full((1, frames), 0.1) if model.config.vol_embedding else None
    model.infer(torch.randn(1, model.config.ssl_dim, frames), f0, torch.ones(1, frames), vol=vol)
    handle.remove()
    scale = spread / captured[0].std()
    conv = model.dec.conv_post
    conv.weight_g.mul_(scale)
    conv.bias.copy_(-(captured[0].mean() - conv.bias) * scale)


def options_for(root: Path, name: str, variant: Variant, **extra) -> ExportOptions:
    folder = root / "checkpoints" / name
    return ExportOptions(name=name, model_path=folder / "model.pth", config_path=folder / "config.json",
                         output_dir=root / "checkpoints", plain_sid=variant.plain_sid,
                         source_noise=variant.source_noise, **{"parity_frames": PARITY_FRAMES, **extra})


@pytest.fixture(scope="module", params=list(VARIANTS))
def exported(request, tmp_path_factory):
    variant = VARIANTS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    config = tiny_config(variant)
    write_project(root, request.param, config)
    result = export_for_moevs(options_for(root, request.param, variant))
    return request.param, variant, config, result


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_graph_contract(exported):
    name, variant, config, result = exported
    graph_model = onnx.load(str(result.onnx))
    onnx.checker.check_model(graph_model)
    assert result.onnx.name == f"{name}_SoVits.onnx" and result.onnx.parent.name == name
    assert [op.version for op in graph_model.opset_import if op.domain in ("", "ai.onnx")] == [16]
    graph = graph_model.graph
    inputs = {i.name: i for i in graph.input}
    vol = dict(variant.model).get("vol_embedding", False)
    assert list(inputs) == ["c", "f0", "mel2ph", "uv", "noise", "sid"] + (["vol"] if vol else [])
    types = {name: i.type.tensor_type.elem_type for name, i in inputs.items()}
    chara_mix = len(variant.spk) >= 2 and not variant.plain_sid
    assert types["mel2ph"] == onnx.TensorProto.INT64
    assert types["sid"] == (onnx.TensorProto.FLOAT if chara_mix else onnx.TensorProto.INT64)
    assert all(types[n] == onnx.TensorProto.FLOAT for n in inputs if n not in ("mel2ph", "sid"))
    ssl_dim = config["model"]["ssl_dim"]
    assert ssl_dim != config["model"]["gin_channels"]  # c must follow ssl_dim (4.1 used gin_channels)
    assert dims(inputs["c"]) == ["batch", "units", ssl_dim]
    for key in ("f0", "mel2ph", "uv") + (("vol",) if vol else ()):
        assert dims(inputs[key]) == [1, "frames"]
    assert dims(inputs["noise"]) == [1, config["model"]["inter_channels"], "frames"]
    assert dims(inputs["sid"]) == (["frames", len(variant.spk)] if chara_mix else [1])
    assert [o.name for o in graph.output] == ["audio"]
    assert dims(graph.output[0])[1:] == [1, "samples"]
    ops = {node.op_type for node in graph.node}
    assert not ops & {"Resize", "Upsample"}  # no sample-rate upsampling of f0 (DirectML gotcha §C7.1)
    randoms = {op for op in ops if op.startswith("Random")}
    assert randoms == ({"RandomUniformLike", "RandomNormalLike"} if variant.source_noise else set())
    casts = [a.i for node in graph.node if node.op_type == "Cast" for a in node.attribute if a.name == "to"]
    assert onnx.TensorProto.DOUBLE not in casts


def test_runs_at_two_lengths_with_parity(exported):
    name, variant, config, result = exported
    assert len(result.parity) == 2 and max(result.parity) < 1e-3
    chara_mix = len(variant.spk) >= 2 and not variant.plain_sid
    shape = GraphShape(config["model"]["ssl_dim"], config["model"]["inter_channels"], len(variant.spk),
                       chara_mix, dict(variant.model).get("vol_embedding", False), 44100, 512)
    runner = OnnxRunner.open(result.onnx)
    for frames in (1, 33):
        audio, draws = runner.run(moevs_inputs(shape, frames, seed=frames))
        assert audio.shape == (1, 1, frames * 512) and audio.dtype == np.float32
        assert np.all(np.isfinite(audio)) and np.abs(audio).max() <= 1.0 + 1e-6  # tanh output
        assert audio.std() > 1e-2  # the model is lively enough for a 1e-3 parity bound to mean something
        assert (draws is not None) == variant.source_noise


def test_descriptor_fields(exported):
    name, variant, config, result = exported
    descriptor = json.loads(result.descriptor.read_text(encoding="utf-8"))
    assert result.descriptor == result.onnx.parent.parent / f"{name}.json"
    ids = sorted(dict(variant.spk).items(), key=lambda item: item[1])
    assert descriptor == {
        "Folder": name, "Name": name, "Type": "SoVits", "Rate": 44100, "Hop": 512,
        "Hubert": HUBERT_NAMES[config["model"]["speech_encoder"]], "SoVits4": True, "SoVits3": False,
        "CharaMix": len(variant.spk) >= 2 and not variant.plain_sid,
        "Volume": dict(variant.model).get("vol_embedding", False),
        "HiddenSize": config["model"]["ssl_dim"], "Characters": [speaker for speaker, _ in ids]}
    assert result.descriptor.read_text().startswith('{\n    "Folder"')  # indent 4, as 4.1 writes


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """A 3-speaker model exported in mix mode, plus its loaded torch model and graph shape."""
    root = tmp_path_factory.mktemp("multi")
    variant = VARIANTS["multi_mix"]
    config = tiny_config(variant)
    write_project(root, "m", config)
    result = export_for_moevs(options_for(root, "m", variant))
    model = load_model(root / "checkpoints" / "m" / "model.pth", config)
    shape = GraphShape(256, 8, 3, True, False, 44100, 512)
    return root, config, model, result, shape


def test_zero_mel2ph_reads_a_zero_frame(multi):
    _, _, _, result, shape = multi
    runner = OnnxRunner.open(result.onnx)
    inputs = moevs_inputs(shape, 16, seed=3)
    inputs["mel2ph"][0, 4:9] = 0
    units = inputs["c"].shape[1]
    explicit = dict(inputs)  # the same, with the zero frame written out as an extra unit
    explicit["c"] = np.concatenate([inputs["c"], np.zeros_like(inputs["c"][:, :1])], axis=1)
    explicit["mel2ph"] = np.where(inputs["mel2ph"] == 0, units + 1, inputs["mel2ph"])
    np.testing.assert_allclose(runner.run(inputs)[0], runner.run(explicit)[0], atol=1e-6)
    inputs["mel2ph"][0, 4:9] = 1  # and it is not the same as the first unit
    assert np.abs(runner.run(inputs)[0] - runner.run(explicit)[0]).max() > 1e-2


def test_mix_columns_follow_characters(multi):
    """Column i of the mix matrix is character i (speakers ordered by id), one-hot = that speaker's id."""
    _, config, model, result, shape = multi
    speakers = model_speakers(config)
    assert speakers == Speakers(names=("bob", "carol", "alice"), ids=(0, 1, 3))
    runner = OnnxRunner.open(result.onnx)
    inputs = moevs_inputs(shape, 12, seed=4)
    inputs["sid"] = np.zeros((12, 3), np.float32)
    inputs["sid"][:, 2] = 1.0  # alice
    as_id = {**inputs, "sid": np.array([2], np.int64)}
    expected = reference_audio(model, as_id, speakers.ids, chara_mix=False)
    np.testing.assert_allclose(runner.run(inputs)[0], expected, atol=1e-4)


def test_parity_failure_is_reported(multi):
    root, config, model, result, shape = multi
    other = SynthesizerTrn.from_config(config).eval()  # other random weights
    with pytest.raises(SvcError, match="parity check failed"):
        check_parity(other, result.onnx, shape, (0, 1, 3), frames=(9,))


def test_unsupported_encoders_fail_early(tmp_path):
    config = tiny_config(Variant())
    for encoder, dim in (("hubertsoft", 256), ("whisper-ppg", 1024), ("wavlmbase+", 768)):
        config["model"].update(speech_encoder=encoder, ssl_dim=dim)
        save_config(config, tmp_path / "config.json")
        options = ExportOptions(name="x", model_path=tmp_path / "absent.pth", config_path=tmp_path / "config.json",
                                output_dir=tmp_path)
        with pytest.raises(SvcError, match=re.escape(f"no ONNX content encoder for speech_encoder '{encoder}'")):
            export_for_moevs(options)  # refused before the (missing) model file is even looked at
    assert hubert_name({"speech_encoder": "hubertsoft", "ssl_dim": 256}, override="hubert-soft") == "hubert-soft"
    with pytest.raises(SvcError, match="ssl_dim"):
        hubert_name({"speech_encoder": "vec768l12", "ssl_dim": 256})
    with pytest.raises(SvcError, match="bare name"):
        hubert_name({"speech_encoder": "vec768l12", "ssl_dim": 768}, override="hubert/x.onnx")


def test_bad_names_and_files_are_clear_errors(tmp_path):
    config = tiny_config(Variant())
    save_config(config, tmp_path / "config.json")
    base = dict(config_path=tmp_path / "config.json", output_dir=tmp_path)
    with pytest.raises(SvcError, match="plain folder name"):
        export_for_moevs(ExportOptions(name="a/b", model_path=tmp_path / "m.pth", **base))
    with pytest.raises(SvcError, match="model file not found"):
        export_for_moevs(ExportOptions(name="a", model_path=tmp_path / "m.pth", **base))
    with pytest.raises(SvcError, match="not both"):
        export_for_moevs(ExportOptions(name="a", model_path=tmp_path / "m.pth", kmeans=tmp_path / "k.pt",
                                       index=tmp_path / "i.pkl", **base))


@pytest.mark.slow
def test_cli_writes_files_and_fails_on_parity(tmp_path):
    config = tiny_config(VARIANTS["single"])
    write_project(tmp_path, "cli", config)
    ok = run_script("onnx_export.py", "-n", "cli", "--parity_frames", "9", "12", cwd=tmp_path)
    assert "parity (9 frames): max abs difference" in ok.stdout
    assert (tmp_path / "checkpoints" / "cli" / "cli_SoVits.onnx").is_file()
    descriptor = json.loads((tmp_path / "checkpoints" / "cli.json").read_text())
    assert descriptor["Hubert"] == "vec-256-layer-9" and descriptor["HiddenSize"] == 256
    folder = tmp_path / "checkpoints" / "bad"
    folder.mkdir()
    for file_name in ("config.json", "model.pth"):
        (folder / file_name).write_bytes((tmp_path / "checkpoints" / "cli" / file_name).read_bytes())
    failed = run_script("onnx_export.py", "-n", "bad", "--parity_frames", "9", "--tolerance", "0",
                        cwd=tmp_path, check=False)
    assert failed.returncode == 1
    assert "parity check failed" in failed.stderr and "Traceback" not in failed.stderr
    assert not (folder / "bad_SoVits.onnx").exists() and not (tmp_path / "checkpoints" / "bad.json").exists()
    assert not list(folder.glob("*.onnx*"))  # no temporary leftovers either


def test_cluster_files_and_descriptor(multi):
    """A kmeans_10000.pt beside the model is picked up by default; --index gives Index files instead."""
    from cluster import save_feature_index, save_kmeans, train_feature_index

    root, config, _, _, _ = multi
    folder = root / "checkpoints" / "m"
    rng = np.random.default_rng(5)
    save_kmeans({name: rng.normal(size=(5, 256)).astype(np.float32) for name in THREE}, folder / "kmeans_10000.pt")
    options = options_for(root, "m", VARIANTS["multi_mix"], parity_frames=(9,))
    out = root / "moevs"
    result = export_for_moevs(dataclasses.replace(options, output_dir=out))
    descriptor = json.loads((out / "m.json").read_text())
    assert descriptor["Cluster"] == "KMeans" and descriptor["KMeansLength"] == 5
    assert result.cluster_files == [out / "m" / "KMeans.npy"]
    assert (out / "m" / "KMeans.npy").stat().st_size == 128 + 3 * 5 * 256 * 4
    indexes = {sid: train_feature_index(rng.normal(size=(60, 256)).astype(np.float32)) for sid in THREE.values()}
    save_feature_index(indexes, root / "feature_and_index.pkl")
    result = export_for_moevs(dataclasses.replace(options, output_dir=out, index=root / "feature_and_index.pkl"))
    descriptor = json.loads((out / "m.json").read_text())
    assert descriptor["Cluster"] == "Index" and "KMeansLength" not in descriptor
    assert [p.name for p in result.cluster_files] == ["Index-0.index", "Index-1.index", "Index-2.index"]
    result = export_for_moevs(dataclasses.replace(options, output_dir=out, no_cluster=True))
    assert "Cluster" not in json.loads((out / "m.json").read_text()) and result.cluster_files == []


@pytest.mark.parametrize("kind", ["kmeans_wrong_dim", "kmeans_unsafe", "index_missing_speaker"])
def test_refused_cluster_file_leaves_no_output(tmp_path, kind):
    """A cluster input refused late (wrong size, unsafe file, missing speaker) is refused before any file is
    written: no NAME_SoVits.onnx, no cluster files, no descriptor, no temporary leftovers."""
    from cluster import save_feature_index, save_kmeans, train_feature_index

    variant = VARIANTS["multi_mix"]
    write_project(tmp_path, "m", tiny_config(variant))
    rng = np.random.default_rng(2)
    extra = {}
    if kind == "kmeans_wrong_dim":
        extra["kmeans"] = tmp_path / "kmeans_10000.pt"
        save_kmeans({name: rng.normal(size=(5, 768)).astype(np.float32) for name in THREE}, extra["kmeans"])
        expected = "768"
    elif kind == "kmeans_unsafe":
        extra["kmeans"] = tmp_path / "kmeans_10000.pt"
        torch.save({"alice": {"cluster_centers_": argparse.Namespace()}}, extra["kmeans"])
        expected = "could run code"
    else:
        extra["index"] = tmp_path / "feature_and_index.pkl"
        index = train_feature_index(rng.normal(size=(60, 256)).astype(np.float32))
        save_feature_index({THREE["bob"]: index}, extra["index"])
        expected = "no entry for speaker"
    out = tmp_path / "out"
    with pytest.raises(SvcError, match=expected):
        export_for_moevs(dataclasses.replace(options_for(tmp_path, "m", variant, parity_frames=(9,), **extra),
                                             output_dir=out))
    assert not out.exists() or not any(out.rglob("*"))
