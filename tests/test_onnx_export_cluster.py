"""Cluster files for MoeVoiceStudio: KMeans.npy (128-byte header, per-character blocks) and Index-<i>.index."""
from __future__ import annotations

import numpy as np
import pytest

from cluster import save_feature_index, save_kmeans, train_feature_index
from core.errors import SvcError
from onnxexport.cluster import export_index, export_kmeans, write_npy_fixed_header
from onnxexport.descriptor import Speakers

DIM = 16
SPEAKERS = Speakers(names=("bob", "carol", "alice"), ids=(0, 1, 3))  # MoeVS order = by id


@pytest.mark.parametrize("shape", [(30000, 768), (7, 3), (2_000_000, 1280)])
def test_npy_header_is_128_bytes_and_a_valid_npy(tmp_path, shape):
    rows = min(shape[0], 50)
    array = np.arange(rows * shape[1], dtype=np.float32).reshape(rows, shape[1])
    path = tmp_path / "a.npy"
    write_npy_fixed_header(path, array)
    raw = path.read_bytes()
    assert raw[:6] == b"\x93NUMPY" and len(raw) == 128 + array.nbytes
    np.testing.assert_array_equal(np.load(path), array)
    np.testing.assert_array_equal(np.frombuffer(raw[128:], dtype="<f4").reshape(array.shape), array)


def test_kmeans_blocks_in_character_order(tmp_path):
    rng = np.random.default_rng(0)
    codebooks = {"alice": rng.normal(size=(6, DIM)), "bob": rng.normal(size=(4, DIM)),
                 "carol": rng.normal(size=(6, DIM)), "not_in_config": rng.normal(size=(6, DIM))}
    save_kmeans({k: v.astype(np.float32) for k, v in codebooks.items()}, tmp_path / "kmeans_10000.pt")
    length = export_kmeans(tmp_path / "kmeans_10000.pt", SPEAKERS, DIM, tmp_path / "out")
    assert length == 6
    raw = (tmp_path / "out" / "KMeans.npy").read_bytes()
    table = np.frombuffer(raw[128:], dtype="<f4").reshape(-1, DIM)  # what MoeVS reads
    assert table.shape == (3 * 6, DIM)
    np.testing.assert_array_equal(table[0:4], codebooks["bob"].astype(np.float32))
    np.testing.assert_array_equal(table[4:6], codebooks["bob"][:2].astype(np.float32))  # repeated to fill
    np.testing.assert_array_equal(table[6:12], codebooks["carol"].astype(np.float32))
    np.testing.assert_array_equal(table[12:18], codebooks["alice"].astype(np.float32))


def test_kmeans_errors_name_the_problem(tmp_path):
    save_kmeans({"bob": np.zeros((3, DIM), np.float32)}, tmp_path / "k.pt")
    with pytest.raises(SvcError, match="no codebook for speaker.*carol, alice"):
        export_kmeans(tmp_path / "k.pt", SPEAKERS, DIM, tmp_path)
    with pytest.raises(SvcError, match="HiddenSize"):
        export_kmeans(tmp_path / "k.pt", Speakers(("bob",), (0,)), 2 * DIM, tmp_path)


def test_index_files_per_character(tmp_path):
    import faiss

    rng = np.random.default_rng(1)
    features = {sid: rng.normal(size=(80, DIM)).astype(np.float32) for sid in (0, 1, 3)}
    save_feature_index({sid: train_feature_index(rows) for sid, rows in features.items()}, tmp_path / "f.pkl")
    out = tmp_path / "out"
    out.mkdir()
    for stale in ("Index-3.index", "Index-7.index"):
        (out / stale).write_bytes(b"old")
    written = export_index(tmp_path / "f.pkl", SPEAKERS, DIM, out)
    assert [p.name for p in written] == ["Index-0.index", "Index-1.index", "Index-2.index"]
    assert sorted(p.name for p in out.iterdir()) == ["Index-0.index", "Index-1.index", "Index-2.index"]
    for position, sid in enumerate(SPEAKERS.ids):
        index = faiss.read_index(str(out / f"Index-{position}.index"))
        stored = index.reconstruct_n(0, index.ntotal)
        assert index.d == DIM and index.ntotal == 80
        # the same rows as that speaker's features (the index stores them shuffled)
        np.testing.assert_array_equal(np.sort(stored, axis=0), np.sort(features[sid], axis=0))


def test_index_missing_speaker_is_an_error(tmp_path):
    rows = np.random.default_rng(2).normal(size=(60, DIM)).astype(np.float32)
    save_feature_index({0: train_feature_index(rows)}, tmp_path / "f.pkl")
    with pytest.raises(SvcError, match=r"no entry for speaker\(s\) carol \(id 1\), alice \(id 3\)"):
        export_index(tmp_path / "f.pkl", SPEAKERS, DIM, tmp_path)
