"""``keep_freed_memory`` moves large blocks into glibc's heap, where they are reused (difftumor.allocator).

The setting is per process and cannot be undone, so each case runs in a fresh interpreter. It reads glibc's own
account (``mallinfo2().hblkhd``: bytes held in separately mmapped blocks) while a 64 MiB tensor is alive — 64 MiB is
above any mmap threshold glibc picks by itself (at most 32 MiB), so by default the tensor is mmapped (and its pages
fresh on every allocation); kept, it comes from the heap. Page-fault counts would depend on the page size
(transparent huge pages), this does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from difftumor.allocator import _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="glibc's allocator only (not this C library)")

MIB = 1 << 20

SCRIPT = """
import ctypes, json, torch
from difftumor.allocator import keep_freed_memory

libc = ctypes.CDLL(None)
names = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
if hasattr(libc, "mallinfo2"):  # glibc >= 2.33
    class Info(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in names]
    libc.mallinfo2.restype = Info
    info = libc.mallinfo2
else:
    class Info(ctypes.Structure):
        _fields_ = [(name, ctypes.c_int) for name in names]
    libc.mallinfo.restype = Info
    info = libc.mallinfo

def mmapped_bytes_holding_64_mib():
    tensor = torch.ones(16 << 20)
    return info().hblkhd

before = mmapped_bytes_holding_64_mib()
applied = keep_freed_memory()
print(json.dumps({"before": before, "applied": applied, "after": mmapped_bytes_holding_64_mib()}))
"""


def _run(**environment: str) -> dict:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    for name in ("DIFFTUMOR_KEEP_FREED_MEMORY", "THP_MEM_ALLOC_ENABLE", "LD_PRELOAD"):  # LD_PRELOAD: jemalloc etc.
        env.pop(name, None)
    env.update(environment)
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_kept_memory_serves_large_blocks_from_the_heap():
    state = _run()
    assert state["before"] >= 64 * MIB  # glibc's default: mmapped, returned to the kernel when freed
    assert state["applied"] is True
    assert state["after"] < 64 * MIB  # from the heap, kept and reused after a free


@pytest.mark.parametrize(
    "environment",
    [
        {"DIFFTUMOR_KEEP_FREED_MEMORY": "0"},
        {"MALLOC_TOP_PAD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.top_pad=131072"},
    ],
)
def test_the_opt_out_and_a_users_own_tuning_leave_glibc_alone(environment):
    state = _run(**environment)
    assert state["applied"] is False
    assert state["before"] >= 64 * MIB and state["after"] >= 64 * MIB


def test_other_c_libraries_are_left_alone(monkeypatch):
    from difftumor import allocator

    monkeypatch.setattr(allocator, "_applied", None)
    for name in [name for name in os.environ if name.startswith("MALLOC_")] + ["GLIBC_TUNABLES"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DIFFTUMOR_KEEP_FREED_MEMORY", "off")
    monkeypatch.setattr(allocator, "_glibc", lambda: pytest.fail("the opt-out must not touch the C library"))
    assert allocator.keep_freed_memory() is False
    monkeypatch.delenv("DIFFTUMOR_KEEP_FREED_MEMORY")
    monkeypatch.setattr(allocator, "_glibc", lambda: None)  # macOS, musl
    assert allocator.keep_freed_memory() is False


def test_the_synthesize_command_keeps_freed_memory_on_cpu_only_for_diffusion(monkeypatch):
    """The CLI's synthesis process (``difftumor synthesize``/``demo``) turns it on; the library never does."""
    from difftumor import allocator
    from difftumor.cli.synthesize import make_synthesizer

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    make_synthesizer("handcrafted")
    assert calls == []
    make_synthesizer("diffusion", device="cpu")
    assert calls == [1]
