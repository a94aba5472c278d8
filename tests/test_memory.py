"""core.memory: glibc keeps freed blocks for reuse, so repeating work does not fault in fresh pages."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.memory import uses_glibc
from tests.conftest import REPO

glibc = pytest.mark.skipif(not uses_glibc(), reason="glibc only")

PROBE = """
import ctypes, resource, sys
from core.memory import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "keep" else "-")
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def faults_of_block(megabytes):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(megabytes << 20)
    ctypes.memset(block, 1, megabytes << 20)
    libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults_of_block(20), faults_of_block(30)
print(faults_of_block(20))
"""


def probe(mode: str, **env: str) -> tuple[str, int]:
    """(what keep_freed_memory returned, page faults of a 20 MiB block after blocks of 20 and 30 MiB)."""
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")},
                              "PYTHONPATH": str(REPO), **env}).stdout.split()
    return out[0], int(out[1])


@glibc
def test_a_freed_block_is_reused_without_page_faults():
    said, faults = probe("keep")
    assert said == "True" and faults < 64  # the 5120 pages of the first 20 MiB block are reused
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not (thp.is_file() and "[always]" in thp.read_text()):  # huge pages would hide the default's faults
        assert probe("default")[1] > 4000  # glibc's default gave the 20 MiB back and faults it in again


@glibc
def test_the_users_malloc_settings_are_left_alone():
    assert probe("keep", MALLOC_ARENA_MAX="2")[0] == "False"
    assert probe("keep", GLIBC_TUNABLES="glibc.malloc.trim_threshold=0")[0] == "False"
