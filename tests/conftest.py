"""Shared test fixtures. Tests that need ../shared (spec vectors, fixtures, assets) skip without it."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from loguru import logger

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SVC_SHARED_DIR", REPO.parent / "shared"))
SPEC = SHARED / "spec"
VECTORS = SPEC / "vectors"
FIXTURES = SPEC / "fixtures"
ASSETS = SHARED / "assets"


RUN_FIRST = ("test_demo.py",)  # the longest test: started first, it runs beside the rest under two workers


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason=f"needs the shared spec folder at {SHARED}")
    for item in items:
        if "shared" in item.keywords and not SPEC.is_dir():
            item.add_marker(skip)
    items.sort(key=lambda item: item.path.name not in RUN_FIRST)


def _one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """One torch thread for tests of tiny models: several threads only contend on a shared CPU."""
    yield from _one_torch_thread()


@pytest.fixture(scope="module")
def one_thread_module():
    """`one_thread` for a whole module of tiny-model tests: `pytestmark = pytest.mark.usefixtures(...)`."""
    yield from _one_torch_thread()


@contextlib.contextmanager
def captured_logs(level: str = "INFO") -> Iterator[list[str]]:
    """The text of every loguru message at `level` or above that is logged inside the block."""
    messages: list[str] = []
    sink = logger.add(lambda message: messages.append(message.record["message"]), level=level)
    try:
        yield messages
    finally:
        logger.remove(sink)


@pytest.fixture(scope="session", autouse=True)
def graph_cache(tmp_path_factory):
    """ONNX Runtime graphs the tests export (core.onnx_cache) go to one temporary folder, never the user's cache;
    scripts the tests start inherit it."""
    folder = tmp_path_factory.mktemp("svc_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SVC_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture
def vector():
    """Load a reference vector by name from the spec's vectors/ folder."""
    def load(name: str) -> np.ndarray:
        return np.load(VECTORS / f"{name}.npy", allow_pickle=False)
    return load


@pytest.fixture(scope="session")
def manifest() -> dict:
    return json.loads((VECTORS / "manifest.json").read_text())


def run_script(script: str, *args: str, cwd: Path | None = None, check: bool = True,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """Run one of the top-level scripts as a user would, with this interpreter."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result
