"""Graphs for ONNX Runtime built once per model and cached under a hash of its weights.

The decoder body (vdecoder.ort_body) and the speech encoder (vencoder.ort_encoder) are each exported once
per set of weights to `<cache>/<part>-<sha256 of the weights>-<kind>.onnx`. An .onnx file is data (a
protobuf graph with its weights), never code; a damaged cache file is removed and built again. The name is not
trusted: each graph records the full digest of the weights it was built from in its ONNX metadata
(SOURCE_KEY), and a cache file that records other weights, or none, is removed and built again, never used.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from loguru import logger

from core.fileio import atomic_path

SOURCE_KEY = "svc_source_sha256"  # metadata_props key: the digest of the weights a cached graph was built from


def cache_dir() -> Path:
    """`$SVC_CACHE_DIR`, else `$XDG_CACHE_HOME/svc`, else `~/.cache/svc`."""
    if os.environ.get("SVC_CACHE_DIR"):
        return Path(os.environ["SVC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "svc"


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def weights_digest(module: nn.Module, version: int) -> str:
    """sha256 over a graph format `version` and the module's parameter and buffer names, shapes and bytes."""
    digest = hashlib.sha256(f"v{version}".encode())
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def file_digest(path: Path, version: int, folder: Path | None = None) -> str:
    """sha256 over a graph format `version` and the bytes of the file at `path` (a cache key).

    Hashing a 378 MB speech encoder takes 0.3 s, so the digest is remembered under `<folder>/digests/`, keyed by
    the file's path, size, inode, modification time and status-change time: a file replaced or touched is hashed
    again, and so is one rewritten in place with its modification time put back (os.utime cannot set st_ctime).
    """
    stat = path.stat()
    identity = (f"v{version}:{path.resolve()}:{stat.st_size}:{stat.st_ino}:{stat.st_mtime_ns}:"
                f"{stat.st_ctime_ns}")
    memo = (folder or cache_dir()) / "digests" / hashlib.sha256(identity.encode()).hexdigest()[:32]
    try:
        known = memo.read_text().strip()
        if len(known) == 64 and all(c in "0123456789abcdef" for c in known):
            return known
    except (OSError, ValueError):  # absent, unreadable or not text: hashed again below and rewritten
        pass
    digest = hashlib.sha256(f"v{version}".encode())
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    try:
        with atomic_path(memo) as tmp:
            tmp.write_text(digest.hexdigest())
    except OSError:
        pass  # a read-only cache: the digest is computed at each start
    return digest.hexdigest()


def cached_session(path: Path, threads: int, build: Callable[[Path], None], source_digest: str):
    """A CPU session of the graph cached at `path` for the weights of digest `source_digest`; `build(path)`
    writes it first (and the digest is recorded in it) when it is missing, damaged (ONNX Runtime refuses it) or
    built from other weights: such a file is removed and built again."""
    if path.is_file():
        session = _trusted_session(path, threads, source_digest)
        if session is not None:
            return session
        discard(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    build(path)
    record_source(path, source_digest)
    return cpu_session(path, threads)


def _trusted_session(path: Path, threads: int, source_digest: str):
    """The session of the cached `path` if it opens and records `source_digest`; else None, with a warning."""
    try:
        session = cpu_session(path, threads)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own untyped errors for bad files
        logger.warning(f"rebuilding the damaged cache file {path} ({str(error).strip().splitlines()[0]})")
        return None
    recorded = session.get_modelmeta().custom_metadata_map.get(SOURCE_KEY)
    if recorded == source_digest:
        return session
    found = f"weights of digest {recorded[:16]}..." if recorded else "no weights"
    logger.warning(f"rebuilding the cache file {path}: it records {found}, not the weights it is cached for "
                   f"({source_digest[:16]}...), so it is not used")
    return None


def discard(path: Path) -> None:
    """Remove the cached graph `path` and its external weights `<path>.data`, if any."""
    path.unlink(missing_ok=True)
    Path(f"{path}.data").unlink(missing_ok=True)


def record_source(path: Path, source_digest: str) -> None:
    """Write `source_digest` into the graph's metadata_props (SOURCE_KEY), replacing the file whole. External
    weights beside it are left as they are: the graph is read and written without them."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    entries = [entry for entry in model.metadata_props if entry.key != SOURCE_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(entries)
    model.metadata_props.add(key=SOURCE_KEY, value=source_digest)
    with atomic_path(path, suffix=".onnx") as tmp:
        onnx.save_model(model, str(tmp))


def cpu_session(path: Path, threads: int):
    """An onnxruntime session on the CPU with every graph optimisation and `threads` intra-op threads."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A contiguous float32 numpy copy of `tensor` (from any device), as onnxruntime takes it."""
    return np.ascontiguousarray(tensor.detach().float().cpu().numpy())
