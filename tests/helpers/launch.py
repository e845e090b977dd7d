"""Run a `difftumor` command as two CPU processes under `accelerate launch` (the ecosystem notes' working form)."""

from __future__ import annotations

import os
import shutil
import subprocess


def launch_two_cpu_processes(arguments: list[str], port: int) -> subprocess.CompletedProcess:
    command = [
        shutil.which("accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        shutil.which("difftumor"),
        *arguments,
    ]
    return subprocess.run(command, env={**os.environ, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True)
