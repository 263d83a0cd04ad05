"""TensorBoard as a user opens it: a real `tensorboard --logdir` server, read through its HTTP API."""

import json
import math
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import NO_WORKERS, TINY, assert_one_line_error, free_port, read_rgb, run_cli, upscale
from insanesr_dist.model.weights import load_model

RUN = "logs"  # the run name TensorBoard gives OUT/logs when started with --logdir OUT


@pytest.fixture(scope="module")
def run_dir(finished_run):
    return finished_run[0]  # conftest.py: one short real run, 2 epochs, LR|SR|HR panels of 2 images


class Board:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, route: str, **query) -> bytes:
        url = f"{self.base}/{route}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()

    def json(self, route: str, **query):
        return json.loads(self.get(route, **query))

    def post(self, route: str, body: dict):
        request = urllib.request.Request(
            f"{self.base}/{route}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())


@pytest.fixture(scope="module")
def board(run_dir):
    """`tensorboard --logdir OUT` on a free local port, until every epoch's scalars are loaded; stopped after."""
    port = free_port()
    exe = Path(sys.executable).parent / "tensorboard"
    server = subprocess.Popen(
        [str(exe), "--logdir", str(run_dir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    client = Board(port)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    deadline = time.monotonic() + 90
    try:
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if len(client.json("data/plugin/scalars/scalars", run=RUN, tag="val/jm")) == len(records):
                    break
            except OSError:  # not listening yet, or the run not loaded yet (400)
                pass
            assert time.monotonic() < deadline, "TensorBoard did not show the run within 90 s"
            time.sleep(0.5)
        yield client
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode is not None


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_scalars_are_grouped_and_match_metrics_jsonl(board, run_dir):
    records = _records(run_dir)
    tags = set(board.json("data/plugin/scalars/tags")[RUN])
    assert {
        "train/loss",
        "train/lr",
        "val/psnr",
        "val/ssim",
        "val/jm",
        "perf/samples_per_s",
        "perf/epoch_seconds",
        "perf/peak_cpu_mb",
    } <= tags, tags
    assert {tag.split("/")[0] for tag in tags} == {"train", "val", "perf"}
    for tag, key in [
        ("val/jm", "jm"),
        ("val/psnr", "psnr"),
        ("val/ssim", "ssim"),
        ("val/ssim_piq", "ssim_piq"),
        ("perf/samples_per_s", "samples_per_s"),
        ("perf/peak_cpu_mb", "peak_cpu_mb"),
    ]:
        points = board.json("data/plugin/scalars/scalars", run=RUN, tag=tag)  # [wall_time, step, value]
        assert [step for _, step, _ in points] == [r["step"] for r in records], tag
        assert all(math.isclose(value, r[key], rel_tol=1e-6) for (_, _, value), r in zip(points, records)), tag
    # The training process itself held at least the model and a torch import in memory.
    assert all(r["peak_cpu_mb"] > 100 for r in records)
    assert len(board.json("data/plugin/scalars/scalars", run=RUN, tag="train/loss")) == records[-1]["step"]


def test_panels_show_lr_sr_hr_of_fixed_validation_images(board, run_dir, pair_folder):
    records = _records(run_dir)
    tags = board.json("data/plugin/images/tags")[RUN]
    assert len(tags) == 2 and all(tag.startswith("panels/") for tag in tags)
    model = load_model(run_dir / "latest.safetensors").eval()
    for tag in tags:
        samples = board.json("data/plugin/images/images", run=RUN, tag=tag, sample=0)
        assert [s["step"] for s in samples] == [r["step"] for r in records]  # one panel per epoch
        png = board.get("data/plugin/images/individualImage?" + samples[-1]["query"])
        image = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        name = tag.removeprefix("panels/")
        hr = read_rgb(pair_folder / "train" / "HR" / name)
        lr = read_rgb(pair_folder / "train" / "LR" / name)
        w = hr.shape[1]
        assert image.shape == (hr.shape[0], 3 * w, 3)
        # Middle: the last epoch's prediction (= latest weights); right: the HR image itself.
        assert np.abs(image[:, w : 2 * w].astype(int) - upscale(model, lr)).max() <= 1
        assert np.array_equal(image[:, 2 * w :], hr)


def test_hparams_dashboard_shows_settings_with_final_jm_speed_and_memory(board, run_dir):
    records = _records(run_dir)
    settings = json.loads((run_dir / "config.json").read_text())
    experiment = board.post("data/plugin/hparams/experiment", {"experimentName": ""})
    assert {"lr", "batch_size", "channels", "epochs", "loss"} <= {h["name"] for h in experiment["hparamInfos"]}
    metric_tags = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"val/jm", "perf/samples_per_s", "perf/peak_cpu_mb"} <= metric_tags
    groups = board.post(
        "data/plugin/hparams/session_groups",
        {
            "experimentName": "",
            "startIndex": 0,
            "sliceSize": 10,
            "colParams": [],
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        },
    )["sessionGroups"]
    assert len(groups) == 1
    (session,) = groups[0]["sessions"]
    assert session["status"] == "STATUS_SUCCESS"
    hparams = groups[0]["hparams"]
    for key in ["lr", "batch_size", "channels", "epochs", "patch_size"]:
        assert hparams[key] == pytest.approx(settings[key]), key
    assert hparams["loss"] == settings["loss"]
    values = {m["name"]["tag"]: m["value"] for m in session["metricValues"]}
    assert values["val/jm"] == pytest.approx(records[-1]["jm"], rel=1e-6)  # the final val JM
    assert values["perf/samples_per_s"] == pytest.approx(records[-1]["samples_per_s"], rel=1e-6)
    assert values["perf/peak_cpu_mb"] == pytest.approx(records[-1]["peak_cpu_mb"], rel=1e-6)


@pytest.mark.slow
def test_epochs_shorter_than_log_every_still_log_their_training_loss(pair_folder, tmp_path):
    # 20 training pairs, batch 4: 5 steps per epoch, never a multiple of --log-every 100.
    out = tmp_path / "run"
    result = run_cli(
        "python",
        "-m",
        "insanesr_dist.train",
        "--data",
        str(pair_folder),
        "--epochs",
        "2",
        "--log-every",
        "100",
        "--panel-images",
        "0",
        "--output-dir",
        str(out),
        *TINY[:-2],
        *NO_WORKERS,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    events = EventAccumulator(str(out / "logs"), size_guidance={"scalars": 0})  # the real event files
    events.Reload()
    assert "train/loss" not in events.Tags()["scalars"]  # no step reached --log-every
    records = _records(out)
    logged = [(e.step, e.value) for e in events.Scalars("train/epoch_loss")]
    assert [step for step, _ in logged] == [r["step"] for r in records] == [5, 10]  # each epoch's last step
    assert all(math.isclose(value, r["train_loss"], rel_tol=1e-6) for (_, value), r in zip(logged, records))


@pytest.mark.slow
def test_report_to_mlflow_receives_the_same_scalars_and_settings(pair_folder, tmp_path, monkeypatch):
    """A real second tracker, offline: MLflow with a local file store, read back with MLflow's own client."""
    from mlflow.tracking import MlflowClient

    store = f"file://{tmp_path / 'mlruns'}"
    out = tmp_path / "out"
    for name, value in (
        ("MLFLOW_TRACKING_URI", store),
        ("MLFLOW_ALLOW_FILE_STORE", "true"),
        ("MLFLOW_EXPERIMENT_NAME", "insanesr-test"),
    ):
        monkeypatch.setenv(name, value)
    result = run_cli(
        "insanesr-dist",
        "train",
        "--data",
        str(pair_folder),
        "--epochs",
        "2",
        "--log-every",
        "1",
        "--report-to",
        "mlflow",
        "--output-dir",
        str(out),
        *TINY,
        *NO_WORKERS,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(tracking_uri=store)
    [run] = client.search_runs([client.get_experiment_by_name("insanesr-test").experiment_id])
    assert run.info.run_name == "out" and run.data.params["batch_size"] == "4"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for tag, key in (("val/jm", "jm"), ("val/psnr", "psnr"), ("train/epoch_loss", "train_loss")):
        logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, tag)}
        assert logged == pytest.approx({r["step"]: r[key] for r in records}), tag
    events = EventAccumulator(str(out / "logs"), size_guidance={"scalars": 0})  # TensorBoard still written
    events.Reload()
    assert [e.step for e in events.Scalars("val/jm")] == [r["step"] for r in records]


@pytest.mark.slow
def test_an_unknown_or_missing_tracker_is_one_line(pair_folder, tmp_path):
    result = run_cli(
        "insanesr-dist",
        "train",
        "--data",
        str(pair_folder),
        "--report-to",
        "tensorbored",
        "--output-dir",
        str(tmp_path / "out"),
        *TINY,
        *NO_WORKERS,
        timeout=120,
    )
    assert_one_line_error(result, "--report-to tensorbored: no tracker 'tensorbored'", "mlflow")
