"""Cluster files in MoeVoiceStudio's layout (moevoicestudio.md §C5), converted from 4.1's files.

- `KMeans.npy`: MoeVS skips a 128-byte header and reads float32 rows of HiddenSize, `KMeansLength` rows per
  character, characters in MoeVS order (by speaker id). It is written as a valid .npy file whose header
  is exactly 128 bytes, shape `[characters · KMeansLength, HiddenSize]`. 4.1's `kmeans_10000.pt` is keyed
  by speaker name; a speaker with fewer centres than the others (few training frames) has its centres
  repeated to fill its block, which leaves every nearest-centre answer unchanged.
- `Index-<i>.index`: one faiss index per character i, from 4.1's `feature_and_index.pkl` (keyed by speaker
  id). MoeVS reads them until a number is missing, so stale higher-numbered files are removed.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
import numpy as np
from loguru import logger

from cluster import load_feature_index, load_kmeans
from core.errors import SvcError
from core.fileio import atomic_path
from onnxexport.descriptor import Speakers

NPY_HEADER_BYTES = 128
KMEANS_FILE = "KMeans.npy"
_INDEX_FILE = re.compile(r"Index-(\d+)\.index")


def npy_header(shape: tuple[int, ...], dtype: np.dtype, total: int = NPY_HEADER_BYTES) -> bytes:
    """A .npy v1.0 header of exactly `total` bytes for a C-ordered array."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    text = repr(header)
    room = total - 10 - len(text) - 1  # magic + version (8), length field (2), final newline (1)
    if room < 0:
        raise SvcError(f"array shape {shape} does not fit a {total}-byte .npy header")
    body = (text + " " * room + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body


def write_npy_fixed_header(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write `array` as .npy with a 128-byte header (what MoeVS skips), atomically."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(npy_header(array.shape, array.dtype))
            f.write(array.tobytes(order="C"))


def kmeans_table(codebooks: dict[str, np.ndarray], speakers: Speakers, hidden: int) -> tuple[np.ndarray, int]:
    """Stack the characters' codebooks into `[characters · K, hidden]` float32; -> (table, K)."""
    missing = [name for name in speakers.names if name not in codebooks]
    if missing:
        raise SvcError(f"the cluster model has no codebook for speaker(s) {', '.join(missing)} "
                       f"(it has {', '.join(codebooks)}); MoeVS needs one per character. Retrain it, or export "
                       f"without a cluster model (--no_cluster)")
    extra = sorted(set(codebooks) - set(speakers.names))
    if extra:
        logger.warning(f"cluster model speakers not in the config are left out: {', '.join(extra)}")
    blocks = [np.asarray(codebooks[name], dtype=np.float32) for name in speakers.names]
    for name, block in zip(speakers.names, blocks):
        if block.ndim != 2 or block.shape[1] != hidden or block.shape[0] == 0:
            raise SvcError(f"the cluster model's centres for '{name}' have shape {block.shape}; the model's "
                           f"content features are {hidden}-dim (HiddenSize). Was it trained with another encoder?")
    length = max(block.shape[0] for block in blocks)
    table = np.concatenate([block[np.arange(length) % block.shape[0]] for block in blocks])
    return table, length


def prepare_kmeans(kmeans_path: str | os.PathLike, speakers: Speakers, hidden: int) -> tuple[np.ndarray, int]:
    """Load and check 4.1's `kmeans_10000.pt`; -> (KMeans.npy's table, KMeansLength). Writes nothing."""
    codebooks = {name: centres.numpy() for name, centres in load_kmeans(kmeans_path).items()}
    return kmeans_table(codebooks, speakers, hidden)


def write_kmeans(table: np.ndarray, folder: str | os.PathLike) -> Path:
    """`<folder>/KMeans.npy` from a table made by `prepare_kmeans`."""
    path = Path(folder) / KMEANS_FILE
    write_npy_fixed_header(path, table)
    logger.info(f"wrote {path}: {table.shape[0]} centres x {table.shape[1]}")
    return path


def export_kmeans(kmeans_path: str | os.PathLike, speakers: Speakers, hidden: int, folder: str | os.PathLike) -> int:
    """4.1's `kmeans_10000.pt` -> `<folder>/KMeans.npy`; returns KMeansLength (rows per character)."""
    table, length = prepare_kmeans(kmeans_path, speakers, hidden)
    write_kmeans(table, folder)
    return length


def prepare_index(index_path: str | os.PathLike, speakers: Speakers, hidden: int) -> list["faiss.Index"]:  # noqa: F821
    """Load and check 4.1's `feature_and_index.pkl`; -> one faiss index per character, in MoeVS order."""
    indexes = load_feature_index(index_path)
    missing = [f"{name} (id {sid})" for name, sid in zip(speakers.names, speakers.ids) if sid not in indexes]
    if missing:
        raise SvcError(f"the feature index has no entry for speaker(s) {', '.join(missing)}; MoeVS reads "
                       f"Index-0, Index-1, ... up to the first gap. Rebuild it with train_index.py, or export "
                       f"without it (--no_cluster)")
    for sid in speakers.ids:
        if indexes[sid].index.d != hidden:
            raise SvcError(f"the feature index of speaker id {sid} holds {indexes[sid].index.d}-dim vectors; the "
                           f"model's content features are {hidden}-dim. Was it built with another encoder?")
    return [indexes[sid].index for sid in speakers.ids]


def write_indexes(indexes: list["faiss.Index"], folder: str | os.PathLike) -> list[Path]:  # noqa: F821
    """`<folder>/Index-<i>.index` for character i; stale higher-numbered files are removed."""
    import faiss

    folder = Path(folder)
    written = []
    for position, index in enumerate(indexes):
        path = folder / f"Index-{position}.index"
        with atomic_path(path, suffix=".index") as tmp:
            faiss.write_index(index, str(tmp))
        written.append(path)
    remove_stale_indexes(folder, len(written))
    logger.info(f"wrote {len(written)} index file(s) Index-0..{len(written) - 1}.index in {folder}")
    return written


def export_index(index_path: str | os.PathLike, speakers: Speakers, hidden: int,
                 folder: str | os.PathLike) -> list[Path]:
    """4.1's `feature_and_index.pkl` -> `<folder>/Index-<i>.index` for character i (= speaker ids[i])."""
    return write_indexes(prepare_index(index_path, speakers, hidden), folder)


def remove_stale_indexes(folder: Path, count: int) -> None:
    """Delete `Index-<n>.index` for n >= count, left over from an export with more characters."""
    for path in folder.glob("Index-*.index"):
        match = _INDEX_FILE.fullmatch(path.name)
        if match and int(match[1]) >= count:
            logger.info(f"removing stale {path}")
            path.unlink()

