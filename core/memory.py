"""How the C allocator hands memory back to the kernel, tuned for jobs that repeat the same work per file.

glibc's malloc returns freed memory to the kernel early (a block of 128 KiB-32 MiB is given its own mapping
until a free raises the threshold, and the top of the heap is trimmed as soon as 128 KiB lie free there),
so a loop that allocates and frees the same buffers for every file touches fresh pages each time: every
page costs a fault. Feature extraction of 16 clips of 5 s took ~715k page faults and 2.7-3.0 s of system
time with the defaults, ~186k and 0.9-1.0 s with `keep_freed_memory` (peak memory 2 % lower); a 60 s
conversion ~580k and ~440k faults, 2.2-3.3 s and 1.9-2.2 s of system time.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts: bigger blocks still get their own mapping
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for the next allocation (blocks up to 32 MiB come from the heap, which is
    trimmed only past 1 GiB free) -> whether the setting was made.

    Nothing is changed off Linux, with another C library, or when the user tunes malloc through the
    environment (`MALLOC_*`, `GLIBC_TUNABLES`)."""
    if not uses_glibc():
        return False
    if "GLIBC_TUNABLES" in os.environ or any(name.startswith("MALLOC_") for name in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                       TRIM_THRESHOLD))


def uses_glibc() -> bool:
    """Whether this process runs on Linux with glibc (whose mallopt parameters this module sets)."""
    if sys.platform != "linux":
        return False
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):  # the name is unknown to this C library
        return False
