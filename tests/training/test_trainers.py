"""Both trainers on small real CT crops: they learn, save loadable models, resume exactly, and run on 2 processes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from difftumor import TumorInpaintPipeline, VQModel3D
from difftumor.cli.main import main as cli
from tests.helpers.launch import launch_two_cpu_processes
from tests.helpers.training_data import small_training_set

TINY_AE = [
    "--set",
    "data.crop_size=[32,32,32]",
    "--set",
    "data.batch_size=2",
    "--set",
    "model.hidden_channels=4",
    "--set",
    "model.latent_channels=4",
    "--set",
    "model.num_codes=64",
    "--set",
    "model.norm_num_groups=2",
    "--set",
    "loss.discriminator_channels=8",
    "--set",
    "loss.discriminator_layers=2",
    "--set",
    "optim.lr=1e-3",
    "--set",
    "run.log_every=1",
]


@pytest.fixture(scope="module")
def training_set(tmp_path_factory, data_dir):
    return small_training_set(tmp_path_factory.mktemp("training_set"))


@pytest.fixture(scope="module")
def trained_autoencoder(training_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("ae") / "run"
    code = cli(
        [
            "train",
            "autoencoder",
            "--set",
            f"run.output_dir={out}",
            "--set",
            f"data.datalist={training_set['all']}",
            "--set",
            "run.max_steps=12",
            "--set",
            "run.checkpoint_every=6",
            "--set",
            "loss.discriminator_start_step=6",
            *TINY_AE,
        ]
    )
    assert code == 0
    return out


def _tiny_diffusion(training_set, vqmodel, out, steps, every):
    return [
        "train",
        "diffusion",
        "--set",
        f"run.output_dir={out}",
        "--set",
        f"data.datalist={training_set['lits']}",
        "--set",
        f"vqmodel={vqmodel}",
        "--set",
        f"run.max_steps={steps}",
        "--set",
        f"run.checkpoint_every={every}",
        "--set",
        "data.crop_size=[32,32,32]",
        "--set",
        "model.base_channels=8",
        "--set",
        "model.channel_multipliers=[1,2]",
        "--set",
        "ema.start_step=2",
        "--set",
        "ema.update_every=1",
        "--set",
        "run.log_every=1",
    ]


def test_autoencoder_training_learns_and_saves_a_loadable_model(trained_autoencoder):
    metrics = (trained_autoencoder / "metrics.csv").read_text().splitlines()[1:]
    recon = [float(v) for s, n, v in (line.split(",") for line in metrics) if n == "recon"]
    assert len(recon) == 12 and sum(recon[-3:]) < sum(recon[:3])
    names = {line.split(",")[1] for line in metrics}
    assert {"d_loss", "g_adversarial", "feature_matching", "perplexity"} <= names  # GAN switched on at step 6
    model = VQModel3D.from_pretrained(trained_autoencoder / "vqmodel")
    assert bool(model.quantizer.initialized) and model.config.num_codes == 64
    info = json.loads((trained_autoencoder / "vqmodel" / "training.json").read_text())
    assert info["steps"] == 12 and len(info["parameters_sha256"]) == 64
    assert sorted(p.name for p in (trained_autoencoder / "checkpoints").iterdir()) == ["step_00000006", "step_00000012"]


def test_diffusion_training_writes_a_pipeline_that_synthesises(training_set, trained_autoencoder, tmp_path):
    out = tmp_path / "diffusion"
    assert cli(_tiny_diffusion(training_set, trained_autoencoder / "vqmodel", out, 8, 4)) == 0
    pipe = TumorInpaintPipeline.from_pretrained(out / "pipeline")
    assert pipe.config.organ == "liver" and pipe.config.tumor_stage == "early"
    assert pipe.scheduler.config.num_train_timesteps == 4 and pipe.config.default_num_inference_steps == 4
    # The pipeline holds the EMA weights, not the last online weights.
    online = load_file(str(sorted((out / "checkpoints").iterdir())[-1] / "model.safetensors"))
    saved = pipe.unet.state_dict()
    assert any(not torch.equal(saved[k], online[k]) for k in online if k in saved)
    hu = torch.full((1, 1, 32, 32, 32), 60.0)
    mask = torch.zeros_like(hu, dtype=torch.bool)
    mask[..., 12:20, 12:20, 12:20] = True
    result = pipe(hu, mask, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(result.images).all() and not torch.equal(result.images, hu)
    info = json.loads((out / "pipeline" / "training.json").read_text())
    assert info["prediction_type"] == "epsilon" and info["loss"] == "l1" and info["steps"] == 8


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_other_objectives_train(training_set, trained_autoencoder, tmp_path, prediction_type):
    args = _tiny_diffusion(training_set, trained_autoencoder / "vqmodel", tmp_path / "d", 3, 3)
    assert (
        cli(
            [
                *args,
                "--set",
                f"diffusion.prediction_type={prediction_type}",
                "--set",
                "diffusion.loss=l2",
                "--set",
                "diffusion.num_train_timesteps=200",
            ]
        )
        == 0
    )
    pipe = TumorInpaintPipeline.from_pretrained(tmp_path / "d" / "pipeline")
    assert pipe.scheduler.config.prediction_type == prediction_type
    assert type(pipe.scheduler).__name__ == "PreciseDDIMScheduler" and pipe.config.default_num_inference_steps == 50


def _run_cli(args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "difftumor.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _wait_for_checkpoint(process, run: Path, step: int, seconds: float = 120) -> None:
    """Wait until the running ``process`` has completed checkpoint ``step`` in ``run`` (it must not exit first)."""
    deadline = time.time() + seconds
    while not (run / "checkpoints" / f"step_{step:08d}" / "COMPLETE").exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.05)


@pytest.mark.slow
def test_killed_run_resumes_exactly(training_set, trained_autoencoder, tmp_path):
    vqmodel = trained_autoencoder / "vqmodel"
    reference = tmp_path / "reference"
    assert cli(_tiny_diffusion(training_set, vqmodel, reference, 12, 3)) == 0
    interrupted = tmp_path / "interrupted"
    process = _run_cli(_tiny_diffusion(training_set, vqmodel, interrupted, 12, 3))
    _wait_for_checkpoint(process, interrupted, 6)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "pipeline").exists()
    assert cli([*_tiny_diffusion(training_set, vqmodel, interrupted, 12, 3), "--resume"]) == 0
    final = {"reference": reference, "interrupted": interrupted}
    weights = {k: load_file(str(v / "checkpoints" / "step_00000012" / "model.safetensors")) for k, v in final.items()}
    assert weights["reference"].keys() == weights["interrupted"].keys()
    for key, value in weights["reference"].items():
        assert torch.equal(value, weights["interrupted"][key]), key
    ema = {k: TumorInpaintPipeline.from_pretrained(v / "pipeline").unet.state_dict() for k, v in final.items()}
    assert all(torch.equal(ema["reference"][k], ema["interrupted"][k]) for k in ema["reference"])


def test_autoencoder_resume_continues_exactly(training_set, trained_autoencoder, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(trained_autoencoder, partial)
    shutil.rmtree(partial / "checkpoints" / "step_00000012")
    shutil.rmtree(partial / "vqmodel")
    args = [
        "train",
        "autoencoder",
        "--set",
        f"run.output_dir={partial}",
        "--set",
        f"data.datalist={training_set['all']}",
        "--set",
        "run.max_steps=12",
        "--set",
        "run.checkpoint_every=6",
        "--set",
        "loss.discriminator_start_step=6",
        *TINY_AE,
        "--resume",
    ]
    assert cli(args) == 0
    a = load_file(str(trained_autoencoder / "vqmodel" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(partial / "vqmodel" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_cpu_processes_keep_identical_replicas(training_set, trained_autoencoder, tmp_path):
    out = tmp_path / "ddp"
    result = launch_two_cpu_processes(
        [
            *_tiny_diffusion(training_set, trained_autoencoder / "vqmodel", out, 4, 4),
            "--set",
            "run.gradient_accumulation_steps=2",
        ],
        29571,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    digests = [(out / "ranks" / f"rank_{r}.txt").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    assert (out / "pipeline" / "model_index.json").exists()
    state = sorted((out / "checkpoints" / "step_00000004").glob("random_states_*.pkl"))
    assert len(state) == 2  # each process saved its own RNG state


@pytest.mark.slow
def test_two_cpu_processes_share_one_codebook(training_set, tmp_path):
    """The autoencoder's EMA codebook is updated in the forward pass: counts and sums are all-reduced and restart
    vectors broadcast, so both replicas keep the same codebook (with the GAN on, two optimisers)."""
    out = tmp_path / "ddp_ae"
    result = launch_two_cpu_processes(
        [
            "train",
            "autoencoder",
            "--set",
            f"run.output_dir={out}",
            "--set",
            f"data.datalist={training_set['all']}",
            "--set",
            "run.max_steps=4",
            "--set",
            "run.checkpoint_every=4",
            "--set",
            "loss.discriminator_start_step=2",
            *TINY_AE,
        ],
        29573,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    digests = [(out / "ranks" / f"rank_{r}.txt").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    model = VQModel3D.from_pretrained(out / "vqmodel")
    assert bool(model.quantizer.initialized) and (model.quantizer.cluster_size > 0).any()


def test_bad_configs_are_one_line_errors(training_set, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("run:\n  max_step: 3\n")
    cases = [
        (["train", "autoencoder", "--config", str(config)], "unknown config key run.max_step"),
        (
            [
                "train",
                "autoencoder",
                "--set",
                "data.datalist=" + str(training_set["all"]),
                "--set",
                "run.max_steps=ten",
            ],
            "must be an integer",
        ),
        (["train", "autoencoder", "--set", "data.datalist=" + str(tmp_path / "none.json")], "does not exist"),
        (
            [
                "train",
                "diffusion",
                "--set",
                "data.datalist=" + str(training_set["healthy"]),
                "--set",
                "vqmodel=" + str(tmp_path),
            ],
            "has early tumours",
        ),
        (["train", "autoencoder", "--set", "optim"], "is not key=value"),
    ]
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"data": []}))
    cases.append((["train", "autoencoder", "--set", f"data.datalist={empty}"], "has no cases"))
    for args, message in cases:
        assert cli(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_config_overrides_parse_like_yaml():
    from difftumor.training.config import apply_overrides, build
    from difftumor.training.diffusion import DiffusionConfig

    raw = apply_overrides(
        {},
        [
            "run.mixed_precision=no",
            "optim.lr=2e-4",
            "vqmodel=x",
            "model.channel_multipliers=[1,2]",
            "data.datalist=a.json",
        ],
    )
    config = build(DiffusionConfig, raw)
    assert config.run.mixed_precision == "no" and config.optim.lr == 2e-4
    assert config.model.channel_multipliers == (1, 2)


def test_every_example_config_is_valid():
    from pathlib import Path

    from difftumor.training.autoencoder import load_autoencoder_config
    from difftumor.training.diffusion import load_diffusion_config
    from difftumor.training.segmentation import load_segmentation_config

    loaders = {
        "autoencoder": load_autoencoder_config,
        "diffusion": load_diffusion_config,
        "segmentation": load_segmentation_config,
    }
    configs = sorted((Path(__file__).resolve().parents[2] / "difftumor" / "configs").glob("*.yaml"))
    assert len(configs) == 7
    for path in configs:
        loaders[path.name.split("_")[0]](path, [])
    for loader in loaders.values():  # packaged configs by name, as `--config released` takes them
        for name in ("released", "tiny_cpu"):
            loader(name, [])


@pytest.mark.slow
def test_a_second_run_on_a_busy_run_folder_is_refused(training_set, trained_autoencoder, tmp_path, capsys):
    """A requeued job resuming while the first still runs: refused in one line before it reads or writes anything;
    once the first is gone, the resume goes on from its last checkpoint."""
    vqmodel = trained_autoencoder / "vqmodel"
    out = tmp_path / "run"
    process = _run_cli(_tiny_diffusion(training_set, vqmodel, out, 400, 3))
    _wait_for_checkpoint(process, out, 3)
    try:
        before = (out / "metrics.csv").read_text()
        code = cli([*_tiny_diffusion(training_set, vqmodel, out, 6, 3), "--resume"])
        error = capsys.readouterr().err
        assert code == 2 and "another difftumor run is writing to" in error and error.strip().count("\n") == 0
        assert (out / "metrics.csv").read_text().startswith(before)  # the refused run wrote nothing there
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == len(set(rows))
    assert cli([*_tiny_diffusion(training_set, vqmodel, out, 6, 3), "--resume"]) == 0


def test_the_metrics_log_gets_its_header_even_after_a_run_killed_before_its_first_flush(tmp_path):
    import csv

    from difftumor.training.run import CSVTracker

    (tmp_path / "metrics.csv").touch()  # what a run killed at start-up leaves
    tracker = CSVTracker(tmp_path)
    tracker.log({"loss": 0.5}, 1)
    tracker.finish()
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert rows == [{"step": "1", "name": "loss", "value": "0.5"}]
    again = CSVTracker(tmp_path)  # a resumed run appends under the same header
    again.log({"loss": 0.25}, 2)
    again.finish()
    assert [row["step"] for row in csv.DictReader(open(tmp_path / "metrics.csv"))] == ["1", "2"]
