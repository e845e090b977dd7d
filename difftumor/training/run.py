"""What every trainer shares: the Accelerator, atomic checkpoints with exact resume, logging and progress.

Checkpoints are ``<output_dir>/checkpoints/step_<N>/`` written by ``Accelerator.save_state`` into a temporary
folder and renamed when complete (a run killed while saving leaves the previous checkpoint intact). ``--resume``
continues from the newest complete one: weights, optimiser, EMA, RNG states and the step counter are restored,
and the data stream (a function of the step, see ``training.data``) continues where it stopped.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import DiffTumorInputError
from .config import to_dict

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^step_(\d+)$")


@dataclass
class RunConfig:
    """Bookkeeping keys shared by every trainer."""

    output_dir: str = "runs/run"
    seed: int = 0
    max_steps: int = 1000
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    logger: str = "csv"
    device: str = "auto"

    def validate(self) -> None:
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise DiffTumorInputError(f"mixed_precision {self.mixed_precision!r}", "use no, bf16 or fp16")
        if self.logger not in ("csv", "tensorboard", "none"):
            raise DiffTumorInputError(f"logger {self.logger!r}", "use csv, tensorboard or none")
        if self.max_steps < 1 or self.checkpoint_every < 1 or self.gradient_accumulation_steps < 1:
            raise DiffTumorInputError("max_steps, checkpoint_every and gradient_accumulation_steps must be >= 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise DiffTumorInputError(f"device {self.device!r}", "use auto, cpu or cuda")


class CSVTracker:
    """A minimal Accelerate-style tracker writing ``metrics.csv`` (step, name, value) in the run folder."""

    name = "csv"
    requires_logging_directory = True

    def __init__(self, folder: Path):
        self.path = folder / "metrics.csv"
        new = not self.path.exists()
        self._file = open(self.path, "a", newline="")  # noqa: SIM115 — closed in finish()
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(["step", "name", "value"])

    def log(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self._writer.writerow([step, name, f"{float(value):.6g}"])
        self._file.flush()

    def finish(self) -> None:
        self._file.close()


class TrainingRun:
    """An Accelerate run with atomic checkpoints, exact resume, a progress bar and metric logging.

    Args:
        run: the bookkeeping section of the trainer's config.
        config: the whole config (saved as ``config.yaml`` in the output folder).
        kind: trainer name, for messages and the progress bar.
        resume: continue from the newest complete checkpoint in ``run.output_dir``.
    """

    def __init__(self, run: RunConfig, config: Any, kind: str, resume: bool = False):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.run, self.kind = run, kind
        self.output_dir = Path(run.output_dir)
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise DiffTumorInputError(f"output_dir {self.output_dir} is a file", "choose a folder")
        if (
            not resume
            and (self.output_dir / "checkpoints").exists()
            and any((self.output_dir / "checkpoints").iterdir())
        ):
            raise DiffTumorInputError(
                f"{self.output_dir} already holds checkpoints", "pass --resume to continue, or choose a new output_dir"
            )
        use_cpu = run.device == "cpu" or (run.device == "auto" and not torch.cuda.is_available())
        self.accelerator = Accelerator(
            cpu=use_cpu,
            mixed_precision=run.mixed_precision,
            gradient_accumulation_steps=run.gradient_accumulation_steps,
        )
        set_seed(run.seed)
        self.step = 0
        self.tracker = None
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        self.accelerator.wait_for_everyone()
        self._resume_from = self.latest_checkpoint() if resume else None
        if resume and self._resume_from is None:
            logger.warning("--resume: no complete checkpoint in %s, starting from step 0", self.output_dir)
        self._started = self._last_log = time.perf_counter()
        self._progress = None

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    # -- checkpoints -------------------------------------------------------------------------------------------

    def checkpoints(self) -> list[tuple[int, Path]]:
        folder = self.output_dir / "checkpoints"
        if not folder.is_dir():
            return []
        found = []
        for path in folder.iterdir():
            match = _CHECKPOINT.match(path.name)
            if match and (path / "COMPLETE").exists():
                found.append((int(match.group(1)), path))
        return sorted(found)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1][1] if found else None

    def restore(self) -> int:
        """Load the checkpoint chosen at start-up (after ``prepare``); returns the step to continue from."""
        if self._resume_from is None:
            return 0
        self.accelerator.load_state(str(self._resume_from))
        state = json.loads((self._resume_from / "trainer_state.json").read_text())
        self.step = int(state["step"])
        if self.is_main:
            logger.info("resumed %s from %s (step %d)", self.kind, self._resume_from, self.step)
        return self.step

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_<N>`` atomically and keep the newest ``keep_checkpoints``."""
        folder = self.output_dir / "checkpoints"
        final = folder / f"step_{self.step:08d}"
        partial = folder / f".step_{self.step:08d}.partial"
        if self.is_main:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(partial, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(partial))
        self.accelerator.wait_for_everyone()
        if self.is_main:
            (partial / "trainer_state.json").write_text(json.dumps({"step": self.step}))
            (partial / "COMPLETE").write_text("")
            if final.exists():
                shutil.rmtree(final)
            os.replace(partial, final)
            for _, old in self.checkpoints()[: -self.run.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final

    # -- logging and progress ----------------------------------------------------------------------------------

    def start_progress(self, total: int) -> None:
        if self.is_main:
            self._tracker_start()
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn(f"train {self.kind}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[loss]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._task = self._progress.add_task("train", total=total, completed=self.step, loss="")
            self._progress.start()

    def _tracker_start(self) -> None:
        if self.run.logger == "csv":
            self.tracker = CSVTracker(self.output_dir)
        elif self.run.logger == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.tracker = SummaryWriter(str(self.output_dir / "tensorboard"))

    def advance(self) -> int:
        """Count one finished optimisation step; returns the new step number."""
        self.step += 1
        return self.step

    def end_step(self, values: dict[str, float]) -> None:
        """Log the step's metrics and write a checkpoint when one is due (every ``checkpoint_every`` and at the end)."""
        self.log(values)
        if self.step % self.run.checkpoint_every == 0 or self.step == self.run.max_steps:
            self.save_checkpoint()

    def log(self, values: dict[str, float]) -> None:
        """Log metrics of the current step (main process), every ``log_every`` steps, and update the bar."""
        if not self.is_main:
            return
        now = time.perf_counter()
        values = {**values, "seconds_per_step": now - self._last_log}  # includes data loading and synthesis
        self._last_log = now
        if self._progress is not None:
            text = " ".join(f"{k}={v:.4g}" for k, v in list(values.items())[:2])
            self._progress.update(self._task, completed=self.step, loss=text)
        if self.tracker is None or self.step % self.run.log_every:
            return
        if isinstance(self.tracker, CSVTracker):
            self.tracker.log(values, self.step)
        else:
            for name, value in values.items():
                self.tracker.add_scalar(name, value, self.step)

    def record_parameters(self, model: torch.nn.Module) -> str:
        """SHA-256 of a model's parameters and buffers on this process, written to ``ranks/rank_<r>.txt`` when
        several processes train, so that replicas can be checked to be identical (the main process warns if not)."""
        import hashlib

        digest = hashlib.sha256()
        for name, tensor in sorted(self.accelerator.unwrap_model(model).state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        value = digest.hexdigest()
        if self.accelerator.num_processes > 1:
            folder = self.output_dir / "ranks"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"rank_{self.accelerator.process_index}.txt").write_text(value + "\n")
            self.accelerator.wait_for_everyone()
            if self.is_main:
                values = {p.read_text().strip() for p in folder.glob("rank_*.txt")}
                if len(values) > 1:
                    logger.warning("model replicas differ across processes: %s", sorted(values))
        return value

    def finish(self) -> float:
        if self._progress is not None:
            self._progress.stop()
        if self.tracker is not None:
            (self.tracker.finish if isinstance(self.tracker, CSVTracker) else self.tracker.close)()
        self.accelerator.wait_for_everyone()
        return time.perf_counter() - self._started


def write_training_info(folder: Path, **fields: Any) -> None:
    """``training.json`` beside a trained model: what produced it (read by the model card)."""
    (Path(folder) / "training.json").write_text(json.dumps({**fields, "command": command_line()}, indent=2) + "\n")


def command_line() -> str:
    """The command that started this process (recorded in model cards)."""
    return " ".join(["difftumor" if Path(sys.argv[0]).name == "difftumor" else Path(sys.argv[0]).name, *sys.argv[1:]])
