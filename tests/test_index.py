"""Feature indexes: 4.1's feature_and_index.pkl layout, safe loading, retrieval weights, train_index.py."""
from __future__ import annotations

import json
import os
import pickle

import faiss
import numpy as np
import pytest
import torch

import cluster.feature_index as feature_index
from cluster import (ivf_lists, load_feature_index, retrieval_mix, retrieve, save_feature_index,
                     train_feature_index)
from core.errors import SvcError, UnsafeFileError
from tests.conftest import run_script

DIM = 8


def random_rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


@pytest.mark.parametrize("n, expected", [(1, 1), (38, 1), (39, 1), (100, 2), (400, 10), (10_000, 256),
                                         (1_000_000, 16_000)])
def test_ivf_list_count(n, expected):
    assert ivf_lists(n) == expected  # min(int(16 sqrt N), N // 39), at least 1


def test_index_settings():
    index = train_feature_index(random_rows(400))
    ivf = faiss.extract_index_ivf(index)
    assert isinstance(index, faiss.IndexIVFFlat)
    assert ivf.nlist == 10 and ivf.nprobe == 1 and index.ntotal == 400 and index.d == DIM
    assert index.metric_type == faiss.METRIC_L2


def test_large_inputs_are_reduced(monkeypatch):
    monkeypatch.setattr(feature_index, "REDUCE_ABOVE", 100)
    monkeypatch.setattr(feature_index, "REDUCED_ROWS", 20)
    index = train_feature_index(random_rows(150))
    assert index.ntotal == 20


def test_file_layout_and_round_trip(tmp_path):
    rows = {0: random_rows(300, 1), 3: random_rows(80, 2)}
    save_feature_index({sid: train_feature_index(r) for sid, r in rows.items()}, tmp_path / "feature_and_index.pkl")
    with open(tmp_path / "feature_and_index.pkl", "rb") as f:
        raw = pickle.load(f)  # our own file, read the way 4.1 reads it
    assert set(raw) == {0, 3} and all(isinstance(v, faiss.Index) for v in raw.values())
    loaded = load_feature_index(tmp_path / "feature_and_index.pkl")
    assert set(loaded) == {0, 3}
    for sid, speaker in loaded.items():
        assert speaker.vectors.dtype == np.float32 and speaker.vectors.shape == rows[sid].shape
        # the index stores the shuffled rows: same set of vectors
        np.testing.assert_array_equal(np.sort(speaker.vectors, axis=0), np.sort(rows[sid], axis=0))
        assert faiss.extract_index_ivf(speaker.index).nprobe == 1


def test_exact_stored_vector_is_returned(tmp_path):
    rows = random_rows(300)
    save_feature_index({0: train_feature_index(rows)}, tmp_path / "f.pkl")
    speaker = load_feature_index(tmp_path / "f.pkl")[0]
    out = retrieve(rows[:20], speaker.index, speaker.vectors)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, rows[:20], atol=1e-6)


def test_inverse_square_distance_weights():
    stored = np.array([[0, 0, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0], [0, 2, 0, 0, 0, 0, 0, 0]], np.float32)
    index = faiss.IndexFlatL2(DIM)
    index.add(stored)
    query = np.array([[0.5, 0.5, 0, 0, 0, 0, 0, 0]], np.float32)
    squared = ((stored - query) ** 2).sum(axis=1)  # faiss reports squared L2 distances
    weights = (1.0 / squared) ** 2
    expected = (weights[:, None] * stored).sum(axis=0) / weights.sum()
    out = retrieve(query, index, stored, k=8)  # k above ntotal is clamped
    np.testing.assert_allclose(out[0], expected, rtol=1e-5)


def test_torch_input_and_mix():
    rows = random_rows(200)
    index = train_feature_index(rows)
    speaker = feature_index.SpeakerIndex(index, index.reconstruct_n(0, index.ntotal))
    query = torch.from_numpy(rows[:4] + 0.01)
    out = retrieve(query, speaker.index, speaker.vectors)
    assert isinstance(out, torch.Tensor) and out.shape == query.shape and out.dtype == torch.float32
    assert torch.equal(retrieval_mix(query, speaker, 0.0), query)
    torch.testing.assert_close(retrieval_mix(query, speaker, 0.5), 0.5 * out + 0.5 * query)


def test_frame_without_neighbours_keeps_its_features():
    """An IVF list can be empty; such frames must not index vectors[-1] as 4.1 does."""
    quantizer = faiss.IndexFlatL2(DIM)
    index = faiss.IndexIVFFlat(quantizer, DIM, 2)
    centroids = np.zeros((2, DIM), np.float32)
    centroids[1, 0] = 100.0
    index.train(np.concatenate([centroids] * 39))
    index.nprobe = 1
    index.add(random_rows(10) * 0.1)  # all rows go to the list around the origin
    query = np.zeros((1, DIM), np.float32)
    query[0, 0] = 99.0  # nearest list is the empty one
    out = retrieve(query, index, index.reconstruct_n(0, index.ntotal))
    np.testing.assert_array_equal(out, query)


def test_dimension_mismatch_is_a_clear_error():
    index = train_feature_index(random_rows(100))
    with pytest.raises(SvcError, match="same speech encoder"):
        retrieve(np.zeros((2, DIM + 1), np.float32), index, index.reconstruct_n(0, index.ntotal))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_refused(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({0: _Payload(marker)}))
    with pytest.raises(UnsafeFileError, match="could run code"):
        load_feature_index(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_faiss_functions_are_not_admitted(tmp_path):
    """Only Index* classes of faiss pass, not faiss functions or other faiss names."""
    data = pickle.dumps({0: faiss.serialize_index}, protocol=4)
    (tmp_path / "fn.pkl").write_bytes(data)
    with pytest.raises(UnsafeFileError):
        load_feature_index(tmp_path / "fn.pkl")


def test_not_an_index_is_a_clear_error(tmp_path):
    (tmp_path / "list.pkl").write_bytes(pickle.dumps({0: [1, 2, 3]}))
    with pytest.raises(SvcError, match="not a faiss index"):
        load_feature_index(tmp_path / "list.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(SvcError):
        load_feature_index(tmp_path / "junk.pkl")


def test_train_index_script(tmp_path):
    for name, seed in (("alice", 1), ("bob", 2)):
        for i in range(2):
            units = torch.from_numpy(random_rows(60, seed * 10 + i).T.copy())[None]  # [1, D, T]
            (tmp_path / "ds" / name).mkdir(parents=True, exist_ok=True)
            torch.save(units, tmp_path / "ds" / name / f"{i}.wav.soft.pt")
    config = {"data": {}, "model": {}, "spk": {"alice": 0, "bob": 5, "carol": 2}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = run_script("train_index.py", "--root_dir", tmp_path / "ds", "-c", tmp_path / "config.json",
                        "--output_dir", tmp_path / "logs", cwd=tmp_path)
    assert "carol" in result.stderr  # no features: skipped with a warning
    loaded = load_feature_index(tmp_path / "logs" / "feature_and_index.pkl")
    assert set(loaded) == {0, 5}
    assert loaded[5].vectors.shape == (120, DIM)
    assert faiss.extract_index_ivf(loaded[5].index).nlist == ivf_lists(120)
