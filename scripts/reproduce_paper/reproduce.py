"""DiffTumor's protocol (Chen et al., CVPR 2024) end to end: datasets on disk -> every stage -> the paper's metrics.

    python scripts/reproduce_paper/reproduce.py --data-root /data --out runs/paper --gpus 8
    python scripts/reproduce_paper/reproduce.py --tiny --out /tmp/paper-tiny     # CI: the same protocol, tiny data
    python scripts/reproduce_paper/reproduce.py --data-root /data --out runs/paper --dry-run   # print the commands

Stages (each skipped when its output exists, so an interrupted run continues where it stopped):
1. ``difftumor data prepare`` for every dataset found under ``--data-root`` (see ``README.md`` beside this file for the
   folder names), early (<= 20 mm) / mid-late tumours labelled 2 / 3;
2. a seeded case-level split per organ (``--test-fraction``, default 0.2 = one fold of the paper's five), the same
   for the healthy CTs (their test part measures patient-level specificity); nothing of a test case is trained on;
3. the autoencoder on the training CTs of every organ and the healthy training CTs (released configuration);
4. one early-tumour diffusion model per organ, on that organ's training cases (released configuration);
5. per organ and backbone, two segmentation models with identical settings: ``real`` (the training cases' real
   tumours) and ``synthetic`` (healthy training CTs + tumours from the organ's diffusion model, on the fly);
6. ``difftumor segment`` + ``difftumor evaluate`` on the organ's test cases and the healthy test CTs;
7. ``results.md``: DSC, NSD, lesion sensitivity (all, < 20 mm) and patient specificity with 95 % intervals, beside
   the paper's Table 2 figures (``paper_table2.json``: DSC per organ and backbone, early sensitivity per organ).

Training runs under ``accelerate launch --multi_gpu --num_processes N`` when ``--gpus N`` > 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORGANS = ("liver", "pancreas", "kidney")
#: Folder under --data-root -> (layout, organ); the first one found per organ is used.
TUMOR_SOURCES = {
    "LiTS": ("lits", "liver"),
    "Task03_Liver": ("msd", "liver"),
    "Task07_Pancreas": ("msd", "pancreas"),
    "KiTS": ("kits", "kidney"),
}
#: Folders of healthy CTs with organ masks (AbdomenAtlas 1.0 includes CHAOS, BTCV and Pancreas-CT).
HEALTHY_SOURCES = {"AbdomenAtlas": "abdomenatlas", "TotalSegmentator": "totalsegmentator"}
ARMS = ("real", "synthetic")


class Protocol:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.data = self.out / "data"
        self.tiny = args.tiny
        # Tiny mode: the packaged CPU configurations, 2 steps, 32³ crops on a 3 mm grid, sliding windows without
        # overlap (the point is that every stage runs, not what it learns).
        self.config = "tiny_cpu" if self.tiny else "released"
        self.overrides = (
            ["--set", "run.max_steps=2", "--set", "run.checkpoint_every=2", "--set", "data.spacing=3.0",
             "--set", "data.crop_size=[32,32,32]"]
            if self.tiny
            else []
        )  # fmt: skip
        self.segment_options = ["--overlap", "0"] if self.tiny else []

    # -- running commands ------------------------------------------------------------------------------------------
    def difftumor(self, *argv: str, train: bool = False) -> None:
        """Run one ``difftumor`` command: under ``accelerate launch`` for multi-GPU training, else in this process
        (the CLI's own entry point; saves importing torch thirty times)."""
        launch = train and self.args.gpus > 1
        prefix = ["accelerate", "launch", "--multi_gpu", "--num_processes", str(self.args.gpus)] if launch else []
        print("+ " + shlex.join([*prefix, "difftumor", *argv]), flush=True)
        if self.args.dry_run:
            return
        if launch:
            code = subprocess.run([*prefix, shutil.which("difftumor") or "difftumor", *argv]).returncode
        else:
            from difftumor.cli.main import main

            code = main(list(argv))
        if code != 0:
            sys.exit(f"error: stage failed (exit {code}): difftumor {shlex.join(argv)}")

    def train(self, kind: str, output: Path, *settings: str) -> Path:
        product = output / ("vqmodel" if kind == "autoencoder" else "pipeline" if kind == "diffusion" else "model")
        if not product.exists():
            self.difftumor(
                "train", kind, "--config", self.config, *self.overrides,
                "--set", f"run.output_dir={output}", *settings, train=True,
            )  # fmt: skip
        return product

    # -- stages ----------------------------------------------------------------------------------------------------
    def prepare(self) -> dict[str, Path]:
        """Datalists ``{organ}.json`` and ``healthy_{organ}.json`` for every organ with data."""
        root = Path(self.args.data_root).resolve()
        self.data.mkdir(parents=True, exist_ok=True)
        datalists: dict[str, Path] = {}
        for folder, (layout, organ) in TUMOR_SOURCES.items():
            if (root / folder).is_dir() and organ in self.args.organs and organ not in datalists:
                datalists[organ] = self._prepare(layout, root / folder, organ, f"{organ}.json")
        for organ in self.args.organs:
            if organ not in datalists:
                print(f"note: no tumour dataset for {organ} under {root}; skipping it", flush=True)
                continue
            healthy = [
                self._prepare(layout, root / folder, organ, f"healthy_{folder}_{organ}.json")
                for folder, layout in HEALTHY_SOURCES.items()
                if (root / folder).is_dir()
            ]
            datalists[f"healthy_{organ}"] = self._merge(healthy, f"healthy_{organ}.json", healthy_only=True)
        return datalists

    def _prepare(self, layout: str, root: Path, organ: str, name: str) -> Path:
        out = self.data / name
        if not out.exists():
            self.difftumor(
                "data", "prepare", layout, str(root), "--organ", organ, "--early-max-diameter-mm", "20",
                "--out", str(out), "--labels-dir", str(self.data / f"labels_{out.stem}"),
            )  # fmt: skip
        return out

    def _merge(self, datalists: list[Path], name: str, healthy_only: bool = False) -> Path:
        out = self.data / name
        if self.args.dry_run or out.exists():
            return out
        entries = []
        for path in datalists:
            for entry in json.loads(path.read_text())["data"]:
                if healthy_only and entry.get("has_tumor"):
                    continue
                entries.append({**entry, **_absolute(entry, path.parent)})
        out.write_text(json.dumps({"difftumor_output": "datalist", "data": entries}, indent=1) + "\n")
        return out

    def split(self, datalist: Path) -> tuple[Path, Path]:
        """Seeded case-level split into ``*_train.json`` / ``*_test.json`` (a case is wholly on one side)."""
        train, test = (datalist.with_name(f"{datalist.stem}_{side}.json") for side in ("train", "test"))
        if self.args.dry_run or (train.exists() and test.exists()):
            return train, test
        document = json.loads(datalist.read_text())
        entries = [{**e, **_absolute(e, datalist.parent)} for e in document["data"]]
        random.Random(self.args.seed).shuffle(entries)
        count = max(1, round(self.args.test_fraction * len(entries))) if len(entries) > 1 else 0
        if count == 0:
            sys.exit(f"error: {datalist} holds {len(entries)} case(s); a train/test split needs at least 2")
        for path, part in ((test, entries[:count]), (train, entries[count:])):
            path.write_text(json.dumps({**document, "data": part}, indent=1) + "\n")
        return train, test

    def test_folder(self, organ: str, tumor_test: Path, healthy_test: Path) -> Path:
        """``test_{organ}/images`` + ``labels`` (links, case names unique) for segment and evaluate."""
        folder = self.data / f"test_{organ}"
        if self.args.dry_run or folder.exists():
            return folder
        for kind in ("images", "labels"):
            (folder / kind).mkdir(parents=True, exist_ok=True)
        for path in (tumor_test, healthy_test):
            for entry in json.loads(path.read_text())["data"]:
                name = f"{path.stem.replace('_test', '')}_{entry['id']}.nii.gz"
                os.symlink(entry["image"], folder / "images" / name)
                os.symlink(entry["label"], folder / "labels" / name)
        return folder

    def run(self) -> None:
        datalists = self.prepare()
        organs = [organ for organ in self.args.organs if organ in datalists]
        if not organs:
            sys.exit(f"error: no dataset found under {self.args.data_root}; see scripts/reproduce_paper/README.md")
        splits = {organ: self.split(datalists[organ]) for organ in organs}
        healthy = {organ: self.split(datalists[f"healthy_{organ}"]) for organ in organs}
        autoencoder_data = self._merge(
            [splits[o][0] for o in organs] + [healthy[o][0] for o in organs], "autoencoder_train.json"
        )
        vqmodel = self.train("autoencoder", self.out / "autoencoder", "--set", f"data.datalist={autoencoder_data}")
        results = {}
        for organ in organs:
            train, _ = splits[organ]
            pipeline = self.train(
                "diffusion", self.out / f"diffusion_{organ}",
                "--set", f"data.datalist={train}", "--set", f"vqmodel={vqmodel}", "--set", f"organ={organ}",
            )  # fmt: skip
            test = self.test_folder(organ, splits[organ][1], healthy[organ][1])
            for backbone in self.args.backbones:
                for arm in ARMS:
                    # Only the tumour source differs; no validation set (selecting on test cases would leak).
                    data = (
                        ["--set", f"data.datalist={train}", "--set", 'data.healthy_datalist=""',
                         "--set", "synthesis.synthesizer=none"]
                        if arm == "real"
                        else [
                            "--set", 'data.datalist=""', "--set", f"data.healthy_datalist={healthy[organ][0]}",
                            "--set", "synthesis.synthesizer=diffusion", "--set", f"synthesis.pipeline={pipeline}",
                        ]
                    ) + ["--set", 'data.validation_datalist=""']  # fmt: skip
                    run = self.out / f"segmentation_{organ}_{backbone}_{arm}"
                    # Synthesis paints on a 1 mm grid, so the segmentation stage keeps 1 mm even in tiny mode.
                    grid = ["--set", "data.spacing=1.0"] if self.tiny else []
                    model = self.train(
                        "segmentation", run, *data, *grid, "--set", f"model.backbone={backbone}", "--set",
                        f"organ={organ}",
                    )
                    self.difftumor("segment", str(test / "images"), "--model", str(model), "--out",
                                   str(run / "predictions"), "--continue", *self.segment_options)  # fmt: skip
                    self.difftumor("evaluate", "--pred", str(run / "predictions"), "--truth", str(test / "labels"),
                                   "--truth-labels", "internal", "--organ", organ, "--out", str(run / "metrics.json"),
                                   "--overwrite")  # fmt: skip
                    results[(organ, backbone, arm)] = run / "metrics.json"
        if not self.args.dry_run:
            table = report(results, json.loads((HERE / "paper_table2.json").read_text()))
            (self.out / "results.md").write_text(table)
            print(table, end="")


def _absolute(entry: dict, base: Path) -> dict:
    return {key: str((base / entry[key]).resolve()) for key in ("image", "label") if entry.get(key)}


def _percent(value: float | None, interval: list[float] | None = None) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.1f}" + (f" [{100 * interval[0]:.0f}, {100 * interval[1]:.0f}]" if interval else "")


def report(results: dict[tuple[str, str, str], Path], paper: dict) -> str:
    """Markdown table of every organ x backbone x arm beside the paper's Table 2 (DSC of that organ, backbone and
    arm; early-tumour sensitivity of the same source and target organ)."""
    lines = [
        "| organ | backbone | training tumours | tumour DSC (mean) | tumour DSC (global) | tumour NSD | lesion sens. "
        "| early (< 20 mm) sens. | patient specificity | paper DSC | paper early sens. |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (organ, backbone, arm), path in results.items():
        s = json.loads(path.read_text())["summary"]
        dsc = paper.get("figures", {}).get(organ, {}).get(backbone, {}).get(arm, {}).get("dsc", "not in the paper")
        early = paper.get("early_sensitivity", {}).get(organ, {}).get(organ, {}).get(arm, "not in the paper")
        lines.append(
            f"| {organ} | {backbone} | {arm} | {_percent(s['tumor_dsc_mean'], s['tumor_dsc_mean_ci95'])} "
            f"| {_percent(s['tumor_dsc_global'], s['tumor_dsc_global_ci95'])} "
            f"| {_percent(s['tumor_nsd_mean'], s['tumor_nsd_mean_ci95'])} "
            f"| {_percent(s['lesion_sensitivity']['all'], s['lesion_sensitivity_ci95']['all'])} "
            f"| {_percent(s['early_lesion_sensitivity'], s['early_lesion_sensitivity_ci95'])} "
            f"| {_percent(s['patient_specificity'], s['patient_specificity_ci95'])} "
            f"| {dsc} | {early} |"
        )
    return "\n".join(lines) + "\n\nPaper figures: " + paper.get("source", "") + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", help="folder holding LiTS/, Task03_Liver/, Task07_Pancreas/, KiTS/, "
                        "AbdomenAtlas/, TotalSegmentator/ (any subset)")  # fmt: skip
    parser.add_argument("--out", required=True, help="working folder (datalists, models, predictions, results.md)")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per training run (accelerate launch when > 1)")
    parser.add_argument("--organs", nargs="+", default=list(ORGANS), choices=ORGANS)
    parser.add_argument("--backbones", nargs="+", default=["unet"], choices=("unet", "dynunet", "swinunetr"))
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the case-level splits")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--tiny", action="store_true", help="build tiny datasets from the repository's CT and run "
                        "every stage with a few steps (CI)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.tiny:
        from tiny_data import build_tiny_data_root

        args.data_root = str(build_tiny_data_root(Path(args.out).resolve() / "tiny_data"))
    if not args.data_root:
        parser.error("--data-root is required (or --tiny)")
    if not Path(args.data_root).is_dir():
        parser.error(f"--data-root {args.data_root} is not a folder")
    return args


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    Protocol(parse()).run()
