"""k-means codebooks: training (sklearn and torch), 4.1's kmeans_10000.pt layout, safe loading, mixing, scripts."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from cluster import fit_codebook, kmeans_mix, kmeans_predict, load_kmeans, save_kmeans, train_cluster_model
from cluster.kmeans import TorchKMeansOptions, kmeans_plus_plus, torch_kmeans
from core.errors import SvcError, UnsafeFileError
from tests.conftest import run_script

DIM = 8
MEANS = np.array([[4.0 * (i == j) - 2.0 for j in range(DIM)] for i in range(4)], dtype=np.float32)  # 4 far-apart points


def blobs(n_per: int = 100, seed: int = 0, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Rows around MEANS (shuffled) and the blob each row came from."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(MEANS)), n_per)
    rows = MEANS[labels] + noise * rng.standard_normal((len(labels), DIM)).astype(np.float32)
    order = rng.permutation(len(labels))
    return rows[order].astype(np.float32), labels[order]


def write_units(path, rows: np.ndarray) -> None:
    """A `.wav.soft.pt` as preprocessing writes it: float32 [1, D, T]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torch.from_numpy(rows.T.copy())[None], path)


def matches_means(centres: np.ndarray, tol: float) -> bool:
    """Every true mean has a centre within tol, and every centre is within tol of a mean."""
    dist = np.linalg.norm(centres[:, None, :] - MEANS[None, :, :], axis=-1)  # [K, 4]
    return bool((dist.min(axis=0) < tol).all() and (dist.min(axis=1) < tol).all())


@pytest.mark.parametrize("options", [dict(), dict(minibatch=True), dict(use_gpu=True)],
                         ids=["sklearn", "sklearn-minibatch", "torch"])
def test_fit_codebook_finds_blob_means(options):
    rows, _ = blobs()
    centres, threads = fit_codebook(rows, 4, device="cpu", **options)
    assert centres.shape == (4, DIM) and centres.dtype == np.float32
    assert isinstance(threads, int) and threads >= 1
    assert matches_means(centres, tol=0.1)


def test_torch_kmeans_is_reproducible_and_clamps_nothing_itself():
    rows, _ = blobs(seed=3)
    options = TorchKMeansOptions(batch_size=64, seed=5)
    a = torch_kmeans(rows, 4, "cpu", options)
    b = torch_kmeans(rows, 4, "cpu", options)
    np.testing.assert_array_equal(a, b)
    assert matches_means(a, tol=0.1)


def test_kmeans_plus_plus_picks_distinct_rows():
    rows = torch.from_numpy(blobs(n_per=20)[0])
    seeds = kmeans_plus_plus(rows, 4, torch.Generator().manual_seed(0))
    # with blobs this far apart, d^2 sampling puts one seed in each blob
    assert matches_means(seeds.numpy(), tol=0.5)


def test_fit_codebook_clamps_to_frame_count():
    rows, _ = blobs(n_per=3)  # 12 frames
    centres, _ = fit_codebook(rows, 100)
    assert centres.shape == (12, DIM)


def test_file_layout_matches_4_1(tmp_path):
    centres = blobs()[0][:5]
    save_kmeans({"nyaru": centres}, tmp_path / "kmeans_10000.pt", threads=4)
    raw = torch.load(tmp_path / "kmeans_10000.pt", weights_only=False)  # our own file, inspected as 4.1 reads it
    assert list(raw) == ["nyaru"]
    entry = raw["nyaru"]
    assert set(entry) == {"n_features_in_", "_n_threads", "cluster_centers_"}
    assert entry["n_features_in_"] == DIM and type(entry["n_features_in_"]) is int
    assert entry["_n_threads"] == 4 and type(entry["_n_threads"]) is int
    assert isinstance(entry["cluster_centers_"], np.ndarray)
    assert entry["cluster_centers_"].dtype == np.float32 and entry["cluster_centers_"].shape == (5, DIM)
    np.testing.assert_array_equal(entry["cluster_centers_"], centres)


def test_round_trip_predict_and_mix(tmp_path):
    rows, labels = blobs()
    centres, threads = fit_codebook(rows, 4)
    save_kmeans({"a": centres, "b": centres[::-1].copy()}, tmp_path / "k.pt", threads)
    codebooks = load_kmeans(tmp_path / "k.pt")
    assert set(codebooks) == {"a", "b"}
    book = codebooks["a"]
    assert book.dtype == torch.float32 and tuple(book.shape) == (4, DIM)
    features = torch.from_numpy(rows)
    predicted = kmeans_predict(features, book)
    # every blob maps to one centre, and different blobs to different centres
    mapping = {int(b): set(predicted[torch.from_numpy(labels == b)].tolist()) for b in range(4)}
    assert all(len(v) == 1 for v in mapping.values()) and len(set.union(*mapping.values())) == 4
    assert torch.equal(kmeans_mix(features, book, 0.0), features)
    torch.testing.assert_close(kmeans_mix(features, book, 1.0), book[predicted])
    torch.testing.assert_close(kmeans_mix(features, book, 0.25), 0.25 * book[predicted] + 0.75 * features)


def test_mix_rejects_wrong_feature_size(tmp_path):
    book = torch.zeros(3, DIM)
    with pytest.raises(SvcError, match="same speech encoder"):
        kmeans_mix(torch.zeros(5, DIM + 1), book, 0.5)


def test_loads_numpy1_module_paths(tmp_path, monkeypatch):
    """Files written under numpy 1.x name numpy.core.multiarray._reconstruct; they must still load."""
    from numpy._core import multiarray

    monkeypatch.setattr(multiarray._reconstruct, "__module__", "numpy.core.multiarray")
    save_kmeans({"old": np.ones((2, DIM), np.float32)}, tmp_path / "old.pt")
    monkeypatch.undo()
    assert b"numpy.core.multiarray" in _pickle_bytes(tmp_path / "old.pt")
    torch.testing.assert_close(load_kmeans(tmp_path / "old.pt")["old"], torch.ones(2, DIM))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_file_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"spk": {"cluster_centers_": _Payload(marker)}}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeFileError):
        load_kmeans(tmp_path / "evil.pt")
    assert not marker.exists()


def test_wrong_layout_is_a_clear_error(tmp_path):
    torch.save({"spk": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(SvcError, match="cluster_centers_"):
        load_kmeans(tmp_path / "bad.pt")


def test_train_cluster_model_per_speaker(tmp_path):
    rows, _ = blobs()
    write_units(tmp_path / "ds" / "alice" / "a.wav.soft.pt", rows[:200])
    write_units(tmp_path / "ds" / "alice" / "sub" / "b.wav.soft.pt", rows[200:])  # nested folders count too
    write_units(tmp_path / "ds" / "bob" / "c.wav.soft.pt", rows[:30])
    (tmp_path / "ds" / "empty").mkdir()
    path = train_cluster_model(tmp_path / "ds", tmp_path / "out", n_clusters=50)
    assert path == tmp_path / "out" / "kmeans_50.pt"
    books = load_kmeans(path)
    assert set(books) == {"alice", "bob"}
    assert tuple(books["alice"].shape) == (50, DIM)
    assert tuple(books["bob"].shape) == (30, DIM)  # clamped to bob's 30 frames


def test_train_cluster_model_without_features(tmp_path):
    (tmp_path / "ds" / "alice").mkdir(parents=True)
    with pytest.raises(SvcError, match="preprocess_hubert_f0"):
        train_cluster_model(tmp_path / "ds", tmp_path / "out")


@pytest.mark.parametrize("script", ["train_cluster.py", "cluster/train_cluster.py"])
def test_script(tmp_path, script):
    rows, _ = blobs(n_per=10)
    write_units(tmp_path / "ds" / "alice" / "a.wav.soft.pt", rows)
    result = run_script(script, "--dataset", tmp_path / "ds", "--output", tmp_path / "logs", "--gpu", cwd=tmp_path)
    assert "only 40 frames" in result.stderr  # default 10000 clusters clamped, with a warning
    books = load_kmeans(tmp_path / "logs" / "kmeans_40.pt")  # named for the centres it holds
    assert tuple(books["alice"].shape) == (40, DIM)
    assert not (tmp_path / "logs" / "kmeans_10000.pt").exists()


def test_script_missing_dataset_is_one_line_error(tmp_path):
    result = run_script("train_cluster.py", "--dataset", tmp_path / "nope", cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert "dataset folder not found" in result.stderr and "Traceback" not in result.stderr


def _pickle_bytes(path) -> bytes:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return b"".join(archive.read(n) for n in archive.namelist() if n.endswith("data.pkl"))


def test_numpy_allowlist_is_scoped_to_the_loader(tmp_path):
    """load_kmeans admits numpy arrays only while it loads: plain weights_only loading stays strict after."""
    save_kmeans({"a": np.zeros((2, DIM), np.float32)}, tmp_path / "k.pt")
    load_kmeans(tmp_path / "k.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "k.pt", weights_only=True)
