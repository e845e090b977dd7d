"""Let the process reuse the memory it frees (glibc), so that CPU inference does not page-fault through fresh memory.

PyTorch's CPU allocator keeps no cache: every tensor is a ``malloc`` and every free a ``free``. glibc hands blocks
above its mmap threshold (128 KiB, raised on the fly to at most 32 MiB) straight back to the operating system and
trims the free top of its heap, so the next call gets fresh pages, each one zeroed by the kernel on first touch. A
released-size early tumour allocates its 96³ activations (up to 113 MB each) again on every call: 145,000–250,000
minor page faults per call, 45,000 in fast mode (``bench/bench_models.py`` counts them). With both thresholds raised,
freed blocks stay in the heap and are reused: no faults after the first call, 1.07–1.12× faster end to end on a
2-core Xeon (BENCHMARKS.md). The price: after the work the process keeps its peak memory instead of returning it
(peak RSS is unchanged; it is what ``ru_maxrss`` reports either way).

The pipeline turns this on for CPU calls and the ``difftumor`` command for its process;
``DIFFTUMOR_KEEP_FREED_MEMORY=0`` leaves glibc's defaults alone. Other C libraries (macOS, musl) are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: ``mallopt`` parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap and freed heap memory up to this size is kept: above the largest
#: activation a released-size call allocates (a few hundred MB), far below any machine it runs on.
_KEEP_BYTES = 1 << 30
#: glibc before 2.26 refuses mmap thresholds above half its 64 MiB heap size.
_FALLBACK_MMAP_BYTES = 32 << 20
_OPT_OUT = {"0", "false", "no", "off"}

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process, so freed memory is reused instead of returned.

    Returns whether the process now keeps its freed memory: ``False`` off glibc or with
    ``DIFFTUMOR_KEEP_FREED_MEMORY=0`` (the environment is read on every call until the setting is made).
    """
    global _applied
    if _applied is not None:
        return _applied
    if os.environ.get("DIFFTUMOR_KEEP_FREED_MEMORY", "").strip().lower() in _OPT_OUT:
        return False
    libc = _glibc()
    if libc is None:
        _applied = False
        return False
    mmap_set = libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) or libc.mallopt(_M_MMAP_THRESHOLD, _FALLBACK_MMAP_BYTES)
    trim_set = libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)
    _applied = bool(mmap_set and trim_set)
    return _applied


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    # musl also exports mallopt (as a no-op); only glibc has gnu_get_libc_version.
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc
