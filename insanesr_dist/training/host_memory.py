"""Host memory of a CPU process: keep freed tensor memory instead of handing it back to the OS, and read
the process's own peak.

glibc serves large blocks (from 128 KiB, adapting up to 32 MiB) with fresh mmap()s and trims freed
memory from the top of its heap, so a training step that frees and reallocates the same activations
page-faults on every page of them again, every step: about 110,000 minor faults per step for the
default model at batch 16, LR patch 32, each a page the kernel zeroes. Served from a heap that is
never trimmed, those pages stay mapped and the process holds on to its peak memory instead, as
PyTorch's caching allocator does on a GPU. On the 2-core development CPU the bf16 model step went from
23.0 to 26.0 samples/s (three interleaved runs each; docs/benchmarks.md).
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


def own_peak_rss_mb() -> float:
    """This process's own peak resident memory, MiB. VmHWM rather than ru_maxrss: Linux carries
    ru_maxrss over from the forking parent across exec, so a child started by `accelerate launch` or
    by the bench would report at least its launcher's RSS."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
