"""Per-speaker faiss feature indexes: 4.1's `feature_and_index.pkl` (spec §3.7, §4.8), retrieval for inference.

File layout: `pickle.dump({speaker_id: faiss IVF<n>,Flat index (nprobe 1)})`. faiss pickles an index as
`faiss.swigfaiss.<IndexClass>` rebuilt from `{"this": <faiss serialized bytes>}`. The loader admits exactly
that shape through inert stand-ins and rebuilds each index with `faiss.deserialize_index`, so no code
from the file runs.
"""
from __future__ import annotations

import io
import math
import os
import pickle
import re
import struct
from pathlib import Path
from typing import Mapping, NamedTuple

import numpy as np
import torch
from loguru import logger

from cluster.dataset import load_speaker_features
from core.config import load_speaker_map
from core.errors import ConfigError, SvcError, UnsafeFileError
from core.fileio import DAMAGED_FILE_ERRORS, atomic_path, damaged

REDUCE_ABOVE = 200_000   # more rows than this are replaced by k-means centres before indexing
REDUCED_ROWS = 10_000
ADD_BATCH = 8192
EPS = 1e-10              # distances below this count as exact matches (4.1 divides by zero there)

_FAISS_MODULE = re.compile(r"faiss(\.swigfaiss(_[a-z0-9_]+)?)?")
_FAISS_INDEX_CLASS = re.compile(r"Index[A-Za-z0-9_]*")


class SpeakerIndex(NamedTuple):
    index: "faiss.Index"  # noqa: F821 - faiss is imported lazily
    vectors: np.ndarray   # float32 [ntotal, D], the stored rows (index.reconstruct_n)


def ivf_lists(n_rows: int) -> int:
    """4.1's IVF list count: min(int(16·sqrt(N)), N // 39), at least 1."""
    return max(1, min(int(16 * math.sqrt(n_rows)), n_rows // 39))


def reduce_rows(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """Rows above REDUCE_ABOVE are replaced by REDUCED_ROWS MiniBatchKMeans centres (as 4.1/RVC do)."""
    if features.shape[0] <= REDUCE_ABOVE:
        return features
    from sklearn.cluster import MiniBatchKMeans

    logger.info(f"reducing {features.shape[0]} rows to {REDUCED_ROWS} k-means centres")
    model = MiniBatchKMeans(n_clusters=REDUCED_ROWS, batch_size=256 * (os.cpu_count() or 1), init="random",
                            n_init=1, random_state=seed, compute_labels=False)
    return model.fit(features).cluster_centers_.astype(np.float32)


def train_feature_index(features: np.ndarray, seed: int = 0) -> "faiss.Index":  # noqa: F821
    """Shuffle, reduce if large, and index `[N, D]` rows in a faiss IVF<n>,Flat index with nprobe 1."""
    import faiss

    rows = np.ascontiguousarray(features[np.random.default_rng(seed).permutation(features.shape[0])],
                                dtype=np.float32)
    rows = np.ascontiguousarray(reduce_rows(rows, seed), dtype=np.float32)
    n_lists = ivf_lists(rows.shape[0])
    index = faiss.index_factory(rows.shape[1], f"IVF{n_lists},Flat")
    faiss.extract_index_ivf(index).nprobe = 1
    index.train(rows)
    for start in range(0, rows.shape[0], ADD_BATCH):
        index.add(rows[start:start + ADD_BATCH])
    return index


def save_feature_index(indexes: dict[int, "faiss.Index"], path: str | os.PathLike) -> None:  # noqa: F821
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            pickle.dump(indexes, f)


def build_index_file(root_dir: Path, config_path: Path, output_dir: Path) -> Path:
    """Index every speaker of the config's `spk` map from `<root_dir>/<name>/**/*.wav.soft.pt`."""
    root_dir, output_dir = Path(root_dir), Path(output_dir)
    speakers = load_speaker_map(config_path)
    if not isinstance(speakers, Mapping) or not speakers:
        raise ConfigError(f"config {config_path} has no 'spk' speaker map")
    indexes = {}
    for name, sid in speakers.items():
        speaker_dir = root_dir / name
        features = load_speaker_features(speaker_dir) if speaker_dir.is_dir() else np.zeros((0, 0), np.float32)
        if features.shape[0] == 0:
            logger.warning(f"{name}: no .soft.pt files under {speaker_dir}, speaker skipped")
            continue
        indexes[int(sid)] = train_feature_index(features)
        logger.info(f"{name} (id {sid}): indexed {indexes[int(sid)].ntotal} vectors")
    if not indexes:
        raise SvcError(f"no speaker folder under {root_dir} holds .soft.pt feature files; "
                       "run preprocess_hubert_f0.py first")
    path = output_dir / "feature_and_index.pkl"
    save_feature_index(indexes, path)
    logger.info(f"wrote {path} ({len(indexes)} speakers)")
    return path


class _PickledIndex:
    """Inert stand-in for a pickled faiss index: keeps the serialized bytes and nothing else."""

    class_name = ""
    data: bytes | None = None

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("this"), (bytes, bytearray)):
            raise UnsafeFileError(f"unexpected state for a pickled faiss {self.class_name}")
        self.data = bytes(state["this"])


class _IndexUnpickler(pickle._Unpickler):
    """Admits only `faiss.swigfaiss*.Index*` classes, each replaced by a stand-in; refuses every other global.

    pickle's Python unpickler: the C one sizes its memo by the largest index a PUT opcode names, so one
    damaged byte could ask for gigabytes."""

    def find_class(self, module: str, name: str) -> type:
        if _FAISS_MODULE.fullmatch(module) and _FAISS_INDEX_CLASS.fullmatch(name):
            return type(name, (_PickledIndex,), {"class_name": name})
        raise UnsafeFileError(f"the file references {module}.{name}, which a feature index never needs")

    def persistent_load(self, pid: object) -> object:
        raise UnsafeFileError("the file uses pickle persistent ids, which a feature index never needs")


def load_feature_index(path: str | os.PathLike) -> dict[int, SpeakerIndex]:
    """Read a `feature_and_index.pkl` without running code from it: -> {speaker id: SpeakerIndex}."""
    import faiss

    path = Path(path)
    if not path.is_file():
        raise SvcError(f"feature index not found: {path}")
    try:
        data = _IndexUnpickler(io.BytesIO(path.read_bytes())).load()
    except UnsafeFileError as error:
        raise UnsafeFileError(f"{path} was not loaded, because loading it could run code from the file: "
                              f"{error}") from None
    except DAMAGED_FILE_ERRORS as error:
        raise damaged(path, _first_line(error)) from None
    if not isinstance(data, dict) or not data:
        raise SvcError(f"{path} is not a feature index: expected {{speaker id: faiss index}}")
    result = {}
    for sid, stand_in in data.items():
        if not isinstance(stand_in, _PickledIndex) or stand_in.data is None:
            raise SvcError(f"{path}: the entry for speaker {sid!r} is not a faiss index")
        result[_speaker_key(sid)] = _rebuild_index(path, sid, stand_in.data)
    return result


def _rebuild_index(path: Path, sid: object, data: bytes) -> SpeakerIndex:
    """faiss.deserialize_index of one speaker's bytes, once `ivf_flat_problem` found them whole."""
    import faiss

    problem = ivf_flat_problem(data)
    if problem:
        raise damaged(path, f"the faiss index of speaker {sid!r}: {problem}")
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        vectors = index.reconstruct_n(0, index.ntotal).astype(np.float32, copy=False)
    except RuntimeError as error:
        raise damaged(path, f"the faiss index of speaker {sid!r}: {_first_line(error)}") from None
    return SpeakerIndex(index, vectors)


class _Cursor:
    """Reads faiss's little-endian serialization, refusing any read past the end."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, count: int) -> bytes:
        if count < 0 or self.at + count > len(self.data):
            raise ValueError("it ends before the data it declares")
        self.at += count
        return self.data[self.at - count:self.at]

    def number(self, code: str) -> int:
        return struct.unpack("<" + code, self.take(struct.calcsize(code)))[0]


def ivf_flat_problem(data: bytes) -> str | None:
    """What is wrong with faiss bytes that should hold 4.1's IVF<n>,Flat index; None when they hold together.

    faiss sizes each array it reads by the count the bytes declare before it reads the array, so a damaged
    count makes it allocate (and zero) up to terabytes; every count is checked here against what is left."""
    cursor = _Cursor(data)
    try:
        if cursor.take(4) != b"IwFl":
            return "not an IVF,Flat index (the kind train_index.py writes)"
        dim, total = _index_header(cursor)
        lists, _nprobe = cursor.number("Q"), cursor.number("Q")
        if cursor.take(4) not in (b"IxF2", b"IxFI") or _index_header(cursor) != (dim, lists):
            return "its coarse quantizer does not match the index"
        if cursor.number("Q") != lists * dim:  # float count
            return "its coarse quantizer's centroids do not match the index"
        cursor.take(lists * dim * 4)
        return _direct_map_problem(cursor) or _inverted_lists_problem(cursor, dim, total, lists)
    except (ValueError, struct.error) as error:
        return str(error)


def _index_header(cursor: _Cursor) -> tuple[int, int]:
    """faiss's index header -> (dimension, ntotal)."""
    dim, total = cursor.number("i"), cursor.number("q")
    cursor.take(8 + 8 + 1)  # two unused fields, is_trained
    if cursor.number("i") not in (0, 1):  # metric: inner product or L2, neither takes an argument
        raise ValueError("an unknown distance metric")
    if dim <= 0 or total < 0:
        raise ValueError(f"dimension {dim} and {total} vectors")
    return dim, total


def _direct_map_problem(cursor: _Cursor) -> str | None:
    cursor.take(1)
    ids = cursor.number("Q")
    cursor.take(8 * ids)
    return "it holds a direct map, which train_index.py never writes" if ids else None


def _inverted_lists_problem(cursor: _Cursor, dim: int, total: int, lists: int) -> str | None:
    if cursor.take(4) != b"ilar" or cursor.number("Q") != lists or cursor.number("Q") != dim * 4:
        return "its inverted lists do not match the index"
    if cursor.take(4) != b"full" or cursor.number("Q") != lists:
        return "its inverted lists are not stored whole"
    sizes = [cursor.number("Q") for _ in range(lists)]
    if sum(sizes) != total:
        return f"its lists hold {sum(sizes)} vectors, its header says {total}"
    cursor.take(sum(sizes) * (dim * 4 + 8))
    return None


def retrieve(features: torch.Tensor | np.ndarray, index: "faiss.Index", vectors: np.ndarray,  # noqa: F821
             k: int = 8) -> torch.Tensor | np.ndarray:
    """Weighted mean of each frame's k nearest stored vectors: `[T, D]` -> `[T, D]` (same type as the input).

    Weights ∝ 1/d² of faiss's (squared L2) distances d, normalised per frame, as in 4.1. An exact match
    (d < EPS) takes all the weight instead of dividing by zero; a frame with no neighbour (IVF list
    empty) keeps its own features.
    """
    is_torch = isinstance(features, torch.Tensor)
    query = features.detach().float().cpu().numpy() if is_torch else np.asarray(features, dtype=np.float32)
    if query.ndim != 2 or query.shape[1] != vectors.shape[1]:
        raise SvcError(f"features {query.shape} do not match the index's {vectors.shape[1]}-dim vectors; "
                       "was it built with the same speech encoder?")
    k = max(1, min(k, index.ntotal))
    dist, ids = index.search(np.ascontiguousarray(query), k)  # [T, k] each
    valid = ids >= 0
    weight = np.where(valid, 1.0 / np.square(np.maximum(dist.astype(np.float64), EPS)), 0.0)  # [T, k]
    found = weight.sum(axis=1, keepdims=True) > 0
    weight = weight / np.where(found, weight.sum(axis=1, keepdims=True), 1.0)
    mixed = np.zeros(query.shape, dtype=np.float64)  # [T, D]; one neighbour rank at a time bounds memory
    for j in range(k):
        mixed += weight[:, j, None] * vectors[np.where(valid[:, j], ids[:, j], 0)]
    out = np.where(found, mixed, query).astype(np.float32)
    if is_torch:
        return torch.from_numpy(out).to(features.device, features.dtype)
    return out


def retrieval_mix(features: torch.Tensor, speaker_index: SpeakerIndex, ratio: float, k: int = 8) -> torch.Tensor:
    """ratio · retrieve(features) + (1 − ratio) · features: `[T, D]` -> `[T, D]`."""
    if ratio == 0:
        return features
    retrieved = retrieve(features, speaker_index.index, speaker_index.vectors, k)
    return ratio * retrieved + (1.0 - ratio) * features


def _speaker_key(sid: object) -> int:
    try:
        return int(sid)
    except (TypeError, ValueError):
        raise SvcError(f"feature index key {sid!r} is not a speaker id") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
