"""Restricted loading of checkpoints: malicious pickles are refused before they run, foreign classes stay inert."""
from __future__ import annotations

import os
import sys
import types

import pytest
import torch

from core.errors import SvcError, UnsafeFileError
from vencoder.hubert import ContentVec768L12
from vencoder.safe_pickle import FAIRSEQ_STAND_INS, Namespace, OmegaConfDict, load_checkpoint, to_plain


class RunsShellCommand:
    """Pickles as a call to os.system, as a booby-trapped checkpoint would."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class RunsExec:
    def __reduce__(self):
        return exec, ("open('marker', 'w')",)


@pytest.mark.parametrize("payload", ["system", "exec"])
def test_malicious_checkpoint_is_refused_without_running(tmp_path, payload, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    trap = RunsShellCommand(f"touch {marker}") if payload == "system" else RunsExec()
    path = tmp_path / "checkpoint_best_legacy_500.pt"
    torch.save({"cfg": {"model": {}}, "model": {"w": torch.zeros(2)}, "extra_state": trap}, path)

    with pytest.raises(UnsafeFileError) as error:
        ContentVec768L12("vec768l12", path, torch.device("cpu"))
    message = str(error.value)
    assert str(path) in message and "not allowed" in message
    expected = "<posix.system>" if payload == "system" else "<builtins.exec>"
    assert expected in message
    assert not marker.exists()


def test_unknown_foreign_class_is_refused_even_if_harmless(tmp_path, monkeypatch):
    module = types.ModuleType("somepackage")
    monkeypatch.setitem(sys.modules, "somepackage", module)
    module.Thing = type("Thing", (), {"__module__": "somepackage"})
    path = tmp_path / "file.pt"
    torch.save({"model": {}, "thing": module.Thing()}, path)
    with pytest.raises(UnsafeFileError, match=r"<somepackage\.Thing>"):
        load_checkpoint(path, FAIRSEQ_STAND_INS)


def test_plain_state_dict_loads_with_weights_only(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"a": torch.arange(3.0)}, path)
    assert torch.equal(load_checkpoint(path)["a"], torch.arange(3.0))


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(SvcError, match="cannot read"):
        load_checkpoint(path, FAIRSEQ_STAND_INS)


def test_namespace_args_become_inert_attributes(tmp_path):
    import argparse
    path = tmp_path / "args.pt"
    torch.save({"args": argparse.Namespace(encoder_layers=3, conv_feature_layers="[(8,10,5)]")}, path)
    args = load_checkpoint(path, FAIRSEQ_STAND_INS)["args"]
    assert type(args) is Namespace
    assert to_plain(args) == {"encoder_layers": 3, "conv_feature_layers": "[(8,10,5)]"}


@pytest.fixture
def fake_omegaconf(monkeypatch):
    """Classes pickled under omegaconf's names with the instance layout omegaconf 2.3 pickles
    (`_metadata`, `_parent`, `_content` / `_val`), so no omegaconf install is needed."""
    classes = {}
    for module, name in (("omegaconf.dictconfig", "DictConfig"), ("omegaconf.nodes", "AnyNode"),
                         ("omegaconf.base", "ContainerMetadata")):
        monkeypatch.setitem(sys.modules, module, types.ModuleType(module))
        classes[name] = type(name, (), {"__module__": module})
        setattr(sys.modules[module], name, classes[name])
    monkeypatch.setitem(sys.modules, "omegaconf", types.ModuleType("omegaconf"))

    def make(cls, **attributes):
        instance = classes[cls]()
        instance.__dict__.update(attributes)
        return instance

    return make


def test_omegaconf_config_becomes_plain_dict(tmp_path, fake_omegaconf):
    make = fake_omegaconf
    meta = make("ContainerMetadata", ref_type=object, key_type=str, element_type=object, flags={})
    model = make("DictConfig", _metadata=meta, _parent=None,
                 _content={"encoder_layers": make("AnyNode", _metadata=meta, _parent=None, _val=2)})
    cfg = make("DictConfig", _metadata=meta, _parent=None, _content={"model": model})
    path = tmp_path / "omegaconf.pt"
    torch.save({"cfg": cfg}, path)
    loaded = load_checkpoint(path, FAIRSEQ_STAND_INS)["cfg"]
    assert type(loaded) is OmegaConfDict
    assert to_plain(loaded) == {"model": {"encoder_layers": 2}}
