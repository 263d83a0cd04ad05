"""Keep freed tensor memory inside a CPU training process instead of handing it back to the OS.

glibc serves large blocks (from 128 KiB, adapting up to 32 MiB) with fresh mmap()s and trims freed
memory from the top of its heap, so a training step that frees and reallocates the same activations
page-faults on every page of them again, every step: about 110,000 minor faults per step for the
default model at batch 16, LR patch 32, each a page the kernel zeroes. Served from a heap that is
never trimmed, those pages stay mapped and the process holds on to its peak memory instead, as
PyTorch's caching allocator does on a GPU. On the 2-core development CPU the bf16 model step went from
23.0 to 26.0 samples/s (three interleaved runs each; README, Benchmarks).
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt() parameters, from <malloc.h>


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse; True if it agreed (a no-op without glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another libc (musl) or none by that name
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mmap() only blocks of 1 GiB and up; trim the heap only past 2 GiB free (the most an int says).
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
