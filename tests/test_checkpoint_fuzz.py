"""Every checkpoint and model-file reader answers a damaged file with one line: fuzzed, and the classes of damage
the fuzzer found (bad member names, missing storages, truncated structs, unsupported zip versions, storages
larger than the file, wrong top-level types) each checked on a file built here."""
from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import SvcError
from tests.fuzz import fuzz_reader

pytestmark = pytest.mark.usefixtures("one_thread_module")

TINY_UNIT2MEL = dict(input_channel=8, n_layers=1, n_chans=8, n_hidden=8, timesteps=10)


# ---------------------------------------------------------------- seed files


def write_generator(path: Path) -> Path:
    """A tiny So-VITS `G_*.pth` as train.py writes it (the small test config's generator)."""
    from core.checkpoint import save_checkpoint
    from core.config import load_template
    from models import SynthesizerTrn
    from tests.tiny_model import TINY_MODEL

    config = load_template("config_template.json")
    config.model.update(TINY_MODEL)
    torch.manual_seed(0)
    model = SynthesizerTrn.from_config(config)
    save_checkpoint(path, model, None, epoch=1, learning_rate=1e-4)
    return path


def tiny_unit2mel() -> torch.nn.Module:
    from diffusion.unit2mel import Unit2Mel, Unit2MelDims

    torch.manual_seed(0)
    return Unit2Mel(Unit2MelDims(**TINY_UNIT2MEL))


def write_diffusion(path: Path) -> Path:
    from core.checkpoint import save_diffusion_checkpoint

    save_diffusion_checkpoint(path, tiny_unit2mel(), 7)
    return path


def write_small_state(path: Path, legacy: bool = False) -> Path:
    """A few tensors (two sharing one storage) in a 4.1 checkpoint dict; `legacy`: torch's pre-1.6 format."""
    base = torch.arange(12, dtype=torch.float32)
    state = {"model": {"a.weight": base[:6].view(2, 3), "a.bias": base[6:], "b": torch.ones(2, dtype=torch.int64)},
             "iteration": 3, "optimizer": None, "learning_rate": 1e-4}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path


def write_kmeans(path: Path) -> Path:
    from cluster.codebook import save_kmeans

    rng = np.random.default_rng(0)
    save_kmeans({"alto": rng.standard_normal((4, 3)).astype(np.float32),
                 "tenor": rng.standard_normal((5, 3)).astype(np.float32)}, path)
    return path


def write_feature_index(path: Path) -> Path:
    from cluster.feature_index import save_feature_index, train_feature_index

    rng = np.random.default_rng(0)
    save_feature_index({0: train_feature_index(rng.standard_normal((80, 4)).astype(np.float32))}, path)
    return path


def write_fairseq_style(path: Path) -> Path:
    """A fairseq-style checkpoint: an argparse Namespace of args beside the weights."""
    import argparse

    torch.save({"args": argparse.Namespace(label_rate=50, encoder_layers=1), "cfg": None,
                "model": {"w": torch.zeros(2, 2)}}, path)
    return path


# ---------------------------------------------------------------- readers called by the fuzzer with one path


def load_diffusion_into_tiny(path: str) -> None:
    from core.checkpoint import load_diffusion_checkpoint

    load_diffusion_checkpoint(path, tiny_unit2mel())


def load_fairseq(path: str) -> None:
    from vencoder.safe_pickle import FAIRSEQ_STAND_INS, load_checkpoint

    load_checkpoint(path, FAIRSEQ_STAND_INS)
