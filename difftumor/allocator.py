"""Opt-in: let a process reuse the memory it frees (glibc), so that CPU synthesis does not page-fault through fresh
memory on every call.

PyTorch's CPU allocator keeps no cache: every tensor is a ``malloc`` and every free a ``free``. glibc hands blocks
above its mmap threshold (128 KiB, raised on the fly to at most 32 MiB) straight back to the kernel and trims the free
top of its heap, so the next call gets fresh pages, each zeroed by the kernel on first touch. A released-size early
tumour allocates its 96³ activations (up to 113 MB each) afresh on every call: a hundred thousand or more minor page
faults and a large share of a second of kernel CPU time per call. With both thresholds raised, freed blocks stay in
the heap and the next call reuses them: no faults after the first call. ``bench/bench_allocator.py`` measures both,
with the wall-time gain (small against a loaded machine's noise; BENCHMARKS.md).

The costs, which is why a library never does this by itself:
- the process keeps its peak memory after the work instead of returning it;
- large and small blocks then share one heap, and a small block left in a large freed hole makes the next large
  block extend the heap: a loop that frees 64 MiB and keeps 4 KiB each time grows without bound (with glibc's
  defaults the 64 MiB are mmapped and it does not). Realistic loops fragment either way: 80 calls of the bundled
  pipeline at 96³ that each keep a 12³ piece of the result went 634 → 935 MiB kept, 546 → 933 MiB (peak 999) with
  glibc's defaults;
- it is process-wide; in threads other than the main one (glibc's per-thread arenas, 64 MiB heaps) blocks larger
  than those heaps are still mmapped and faulted in on every call.

``difftumor synthesize`` and ``difftumor demo`` turn it on for their own short-lived processes; from Python, call
:func:`keep_freed_memory` in a process dedicated to synthesis. ``DIFFTUMOR_KEEP_FREED_MEMORY=0`` turns it off, and it
is skipped when the environment already tunes these parameters (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_``, or ``glibc.malloc.`` tunables in ``GLIBC_TUNABLES``). Other C libraries
(macOS, musl, Windows) are left alone.
"""

from __future__ import annotations

import ctypes
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
#: A user's own tuning of these glibc parameters wins over ours (the environment aliases, and any ``glibc.malloc.``
#: tunable in ``GLIBC_TUNABLES``).
_USER_TUNING = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process, so freed memory is reused instead of returned.

    Returns whether the process now keeps its freed memory: ``False`` off glibc, with
    ``DIFFTUMOR_KEEP_FREED_MEMORY=0`` or when the environment tunes glibc's allocator itself (the environment is read
    on every call until the setting is made). See the module docstring for what it costs.
    """
    global _applied
    if _applied is not None:
        return _applied
    if os.environ.get("DIFFTUMOR_KEEP_FREED_MEMORY", "").strip().lower() in _OPT_OUT:
        return False
    if any(name in os.environ for name in _USER_TUNING) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
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
    """The C library this process runs on, if it is glibc (``CDLL(None)``: no search, no ``ldconfig``)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    # musl also exports mallopt (as a no-op); only glibc has gnu_get_libc_version.
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc
