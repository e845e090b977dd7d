"""What every trainer shares: the Accelerator, atomic checkpoints with exact resume, logging and progress.

Checkpoints are ``<output_dir>/checkpoints/step_<N>/`` written by ``Accelerator.save_state`` into a temporary
folder and renamed when complete (a run killed while saving leaves the previous checkpoint intact). ``--resume``
continues from the newest complete one: weights, optimiser, EMA, RNG states and the step counter are restored,
and the data stream (a function of the step, see ``training.data``) continues where it stopped.

What a checkpoint may hold and how it is checked before anything in it is loaded: :mod:`.checkpoints`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import sys
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ..atomic import WriterLock, atomic_folder, check_output, is_difftumor_folder, write_marker
from ..errors import DiffTumorInputError
from .checkpoints import (
    CHECKPOINT_FOLDER,
    broken_checkpoint,
    file_sha256,
    load_plain_state,
    save_plain_state,
    verify_checkpoint,
)
from .config import PositiveInt, to_dict

logger = logging.getLogger(__name__)

#: In a run folder: the lock its run holds while it runs.
RUN_LOCK = ".difftumor-run.lock"
_EXPORT_KINDS = {"model": "segmentation-model", "best_model": "segmentation-model"}


@dataclass
class RunConfig:
    """Bookkeeping keys shared by every trainer."""

    output_dir: str = "runs/run"
    seed: int = 0
    max_steps: PositiveInt = 1000
    gradient_accumulation_steps: PositiveInt = 1
    mixed_precision: str = "no"
    checkpoint_every: PositiveInt = 500
    keep_checkpoints: PositiveInt = 2
    log_every: PositiveInt = 10
    logger: str = "csv"
    device: str = "auto"

    def validate(self) -> None:
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise DiffTumorInputError(f"mixed_precision {self.mixed_precision!r}", "use no, bf16 or fp16")
        if self.logger not in ("csv", "tensorboard", "none"):
            raise DiffTumorInputError(f"logger {self.logger!r}", "use csv, tensorboard or none")
        if self.device not in ("auto", "cpu", "cuda"):
            raise DiffTumorInputError(f"device {self.device!r}", "use auto, cpu or cuda")


class CSVTracker:
    """A minimal Accelerate-style tracker writing ``metrics.csv`` (step, name, value) in the run folder."""

    name = "csv"
    requires_logging_directory = True

    def __init__(self, folder: Path):
        self.path = folder / "metrics.csv"
        # An empty file is a run killed before its first flush: it still needs the header.
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="")  # noqa: SIM115 — closed in finish()
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(["step", "name", "value"])
            self._file.flush()

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
        inputs: files the run reads that the config does not name (its YAML file): the run folder may not hold them.
    """

    def __init__(self, run: RunConfig, config: Any, kind: str, resume: bool = False, inputs: tuple = ()):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.run, self.kind = run, kind
        self.output_dir = Path(run.output_dir)
        # A run folder may be resumed (overwrite=True), but only if difftumor made it, and never over the data.
        named = [*config_paths(config), *(Path(path) for path in inputs if path is not None)]
        inputs = [path for path in named if path.resolve() != self.output_dir.resolve()]
        check_output(
            self.output_dir, "folder", inputs, True, "run.output_dir", create_parents=True, kind="training-run"
        )
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
        # One run per folder: a second one (a requeued job while the first still runs) is refused, whatever host or
        # PID namespace it runs in, before it reads a checkpoint or writes anything there.
        self._lock: WriterLock | None = None
        if self.is_main and self.output_dir.is_dir():
            self._lock_folder()
        self.step = 0
        self.tracker = None
        self._states: dict[str, Any] = {}
        # Checked before anything is written: a refused checkpoint leaves the run folder exactly as it was.
        self._resume_from = self.latest_checkpoint() if resume else None
        self._resume_state = (
            verify_checkpoint(self._resume_from, self.accelerator.process_index) if self._resume_from else None
        )
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if self._lock is None:
                self._lock_folder()
            if not is_difftumor_folder(self.output_dir):
                write_marker(self.output_dir, "training-run")
            (self.output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        self.accelerator.wait_for_everyone()
        if resume and self._resume_from is None:
            logger.warning("--resume: no complete checkpoint in %s, starting from step 0", self.output_dir)
        self._started = self._last_log = time.perf_counter()
        self._progress = None
        # Every trainer builds its networks right after this: they start from the seed, whatever happened above.
        torch.manual_seed(run.seed)

    def _lock_folder(self) -> None:
        self._lock = WriterLock(self.output_dir / RUN_LOCK).acquire(
            busy=(
                f"another difftumor run is writing to {self.output_dir}",
                "wait for it to finish (or stop it) before resuming, or choose another run.output_dir",
            )
        )
        weakref.finalize(self, self._lock.release)

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
            match = CHECKPOINT_FOLDER.match(path.name)
            if match and (path / "COMPLETE").exists():
                found.append((int(match.group(1)), path))
        return sorted(found)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1][1] if found else None

    def register_state(self, name: str, obj: Any) -> None:
        """Checkpoint ``obj`` (``state_dict``/``load_state_dict`` of tensors, tensor lists and plain scalars, such
        as diffusers' ``EMAModel``) as ``state_<name>.safetensors`` + ``.json``, replicated on every process."""
        self._states[name] = obj

    def restore(self) -> int:
        """Load the checkpoint chosen at start-up (after ``prepare``); returns the step to continue from.

        Raises:
            DiffTumorInputError: a checkpoint file was modified, is unexpected or cannot be read safely.
        """
        if self._resume_from is None:
            return 0
        folder, state = self._resume_from, self._resume_state
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.accelerator.load_state(str(folder))
        except Exception as error:  # noqa: BLE001 — torch/accelerate raise many types for broken files
            raise broken_checkpoint(folder, error) from None
        for name, obj in self._states.items():
            try:
                obj.load_state_dict(load_plain_state(folder, f"state_{name}"))
            except Exception as error:  # noqa: BLE001 — json, safetensors and EMAModel raise their own types
                raise broken_checkpoint(folder, error) from None
        self.step = state["step"]
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
            for name, obj in self._states.items():
                save_plain_state(obj.state_dict(), partial, f"state_{name}")
            files = {path.name: file_sha256(path) for path in sorted(partial.iterdir()) if path.is_file()}
            (partial / "trainer_state.json").write_text(json.dumps({"step": self.step, "files": files}, indent=1))
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
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise DiffTumorInputError(
                    "run.logger=tensorboard needs the tensorboard package",
                    "pip install 'difftumor[tensorboard]', or use run.logger=csv",
                ) from None

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
        from ..models.hashing import parameters_sha256

        value = parameters_sha256(self.accelerator.unwrap_model(model))
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

    def export(self, name: str, write: Any, **training_info: Any) -> Path:
        """Write a final artefact (``write(folder)``, e.g. ``model.save_pretrained``) atomically as
        ``<output_dir>/<name>``, with ``training.json`` from ``training_info`` when given: a disk filling up or a kill
        leaves the previous one, never half a model."""
        out = self.output_dir / name
        with atomic_folder(out, overwrite=True, kind=_EXPORT_KINDS.get(name, name)) as folder:
            write(folder)
            if training_info:
                write_training_info(folder, **training_info)
        return out

    def conclude(self, model: torch.nn.Module, name: str, write: Any, **training_info: Any) -> Path:
        """The end every trainer shares: fingerprint the final weights on every process, stop progress and logging,
        and let the main process export ``<output_dir>/<name>`` (``write(folder)``) with ``training.json`` (trainer,
        steps, seconds, parameter hash, then ``training_info``). Returns the exported folder."""
        digest = self.record_parameters(model)
        seconds = self.finish()
        if self.is_main:
            self.export(
                name,
                write,
                trainer=self.kind,
                steps=self.step,
                seconds=round(seconds, 1),
                parameters_sha256=digest,
                **training_info,
            )
        self.accelerator.wait_for_everyone()
        self.release()
        return self.output_dir / name

    def release(self) -> None:
        """Let another run use the folder (also when this object is collected, e.g. after a failed step)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

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


def config_paths(config: Any) -> list[Path]:
    """Every existing file or folder named by a string value of a (nested) config: the run's inputs."""
    found = []

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        elif isinstance(value, str) and value and len(value) < 4096:
            try:
                if Path(value).exists():
                    found.append(Path(value))
            except OSError:
                pass

    visit(to_dict(config) if not isinstance(config, dict) else config)
    return found + [path for datalist in found if datalist.suffix == ".json" for path in _datalist_files(datalist)]


def _datalist_files(datalist: Path) -> list[Path]:
    """The image and label files a datalist names (so a run folder can be kept away from them too); a file that is
    not a readable datalist names none (the trainer reports it when it reads its data)."""
    from .data import read_cases

    try:
        cases = read_cases(datalist)
    except DiffTumorInputError:
        return []
    return [Path(case[key]) for case in cases for key in ("image", "label") if case.get(key)]
