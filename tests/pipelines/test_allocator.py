"""The pipeline's CPU calls reuse freed memory instead of faulting in fresh pages (difftumor.allocator).

The setting is per process and cannot be undone, so each case runs in a fresh interpreter; the page faults it counts
are the kernel's own (``ru_minflt``), not a timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from difftumor.allocator import _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="glibc's allocator only (not this C library)")

# Faults of touching a fresh 64 MiB tensor (16,384 pages), before and after one CPU pipeline call. 64 MiB is above
# the largest mmap threshold glibc picks by itself (32 MiB), so by default every such tensor is fresh pages.
SCRIPT = """
import json, resource, sys, torch
from difftumor import TumorInpaintPipeline
from difftumor.assets import BUNDLED_PIPELINE

def faults_of_a_fresh_tensor():
    torch.ones(16 << 20).sum()  # allocate, touch, free
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 << 20).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

first = faults_of_a_fresh_tensor()
pipe = TumorInpaintPipeline.from_pretrained(BUNDLED_PIPELINE)
pipe.set_progress_bar_config(disable=True)
hu = torch.full((1, 1, 32, 32, 32), 60.0)
mask = torch.zeros_like(hu, dtype=torch.bool)
mask[..., 12:20, 12:20, 12:20] = True
pipe(hu, mask, generator=torch.Generator().manual_seed(0))
print(json.dumps({"before": first, "after": faults_of_a_fresh_tensor()}))
"""


def _faults(opt_out: str | None) -> dict[str, int]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("DIFFTUMOR_KEEP_FREED_MEMORY", None)
    if opt_out is not None:
        env["DIFFTUMOR_KEEP_FREED_MEMORY"] = opt_out
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_cpu_call_stops_the_page_faults_of_fresh_memory():
    faults = _faults(None)
    assert faults["before"] > 8000  # glibc's default: the 64 MiB come back as fresh, zeroed pages
    assert faults["after"] < 500  # kept and reused


def test_the_opt_out_leaves_glibc_alone():
    faults = _faults("0")
    assert faults["before"] > 8000
    assert faults["after"] > 8000


def test_other_c_libraries_and_the_opt_out_are_left_alone(monkeypatch):
    from difftumor import allocator

    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv("DIFFTUMOR_KEEP_FREED_MEMORY", "off")
    monkeypatch.setattr(allocator, "_glibc", lambda: pytest.fail("the opt-out must not touch the C library"))
    assert allocator.keep_freed_memory() is False
    monkeypatch.delenv("DIFFTUMOR_KEEP_FREED_MEMORY")
    monkeypatch.setattr(allocator, "_glibc", lambda: None)  # macOS, musl
    assert allocator.keep_freed_memory() is False
