"""End to end through the real command line: every file a run leaves, read back as a user would."""

import itertools
import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import (
    NO_WORKERS,
    TINY,
    accelerate_launch,
    assert_one_line_error,
    finished_run_command,
    independent_val_jm,
    make_pair_folder,
    read_rgb,
    run_cli,
    run_train_script,
    upscale,
    write_png,
)
from insanesr_dist.model.files import read_metadata
from insanesr_dist.model.weights import load_model
from insanesr_dist.scoring.metrics import joint_metric, psnr_ssim
from insanesr_dist.scoring.submission import read_submission
from insanesr_dist.tools.evaluate import evaluate_predictions
from insanesr_dist.training.optimizer import lr_at
from insanesr_dist.training.precision import resolve_precision

SLOW = pytest.mark.slow


def test_lr_schedule_is_a_pure_function_of_the_step():
    flat = [lr_at(s, peak=1e-4, warmup=0, total=10, schedule="constant") for s in range(10)]
    assert flat == [1e-4] * 10
    warm = [lr_at(s, peak=1.0, warmup=4, total=12, schedule="cosine") for s in range(12)]
    assert warm[:4] == [0.25, 0.5, 0.75, 1.0]
    assert warm[4] == pytest.approx(1.0) and warm[8] == pytest.approx(0.5) and warm[-1] > 0
    assert all(a >= b for a, b in itertools.pairwise(warm[3:]))
    assert lr_at(12, peak=1.0, warmup=4, total=12, schedule="cosine") == pytest.approx(0.0)


def test_fp16_on_a_cpu_becomes_bf16_with_a_note(monkeypatch):
    assert resolve_precision("fp16", cpu=True)[0] == "bf16" and "CUDA" in resolve_precision("fp16", cpu=True)[1]
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert resolve_precision("auto", cpu=True) == ("bf16", None)  # the accelerate config's choice stands
    assert resolve_precision("no", cpu=True) == ("no", None)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_it_is_native(monkeypatch, native):
    import insanesr_dist.training.precision as precision_module

    monkeypatch.setattr(precision_module, "native_bf16", lambda cpu: native)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)  # not launched by accelerate: nothing said
    precision, note = resolve_precision("auto", cpu=True)
    assert precision == ("bf16" if native else "no") and (note is not None) == native
    assert resolve_precision("no", cpu=True) == ("no", None)
    # A GPU always trains in mixed precision unless asked not to: fp16 with gradient scaling where bf16 is not
    # native (pre-Ampere), as the seed report's AMP; the note says which.
    precision, note = resolve_precision("auto", cpu=False)
    assert precision == ("bf16" if native else "fp16") and precision in note
    assert resolve_precision("no", cpu=False) == ("no", None)


# `finished_run` (conftest.py): one short real run, shared with test_tracking.py and test_export.py.


def test_run_leaves_every_file(finished_run):
    out, result = finished_run
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {
        "config.json",
        "latest.safetensors",
        "best.safetensors",
        "metrics.jsonl",
        "submissions/epoch_001.csv",
        "submissions/epoch_002.csv",
    } <= names
    assert not [n for n in names if ".tmp" in n]  # atomic writes leave no temp files
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 2 and config["channels"] == 8
    # One summary line per epoch on the console.
    assert len([line for line in result.stdout.splitlines() if line.startswith("epoch ")]) == 2


def test_a_run_prints_no_warning(finished_run):
    # accelerate launch -m: each DataLoader worker runs the main module again as `__mp_main__` (data/workers.py),
    # and runpy warns of "unpredictable behaviour" when the fork server has imported it under its own name first.
    _, result = finished_run
    lines = (result.stdout + result.stderr).replace("\r", "\n").splitlines()
    warnings = [line for line in lines if "warning" in line.lower()]
    assert not warnings, "\n".join(warnings)


def test_metrics_and_weights_agree_with_an_independent_evaluation(finished_run, pair_folder):
    out, _ = finished_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert r["jm"] == pytest.approx(joint_metric(r["psnr"], r["ssim"]), abs=1e-9)
        assert r["images"] == 3 and r["train_loss"] > 0 and r["samples_per_s"] > 0
    # latest.safetensors rebuilds the model, and scoring it from scratch gives the logged JM.
    assert read_metadata(out / "latest.safetensors")["epoch"] == 2
    assert independent_val_jm(out / "latest.safetensors", pair_folder) == pytest.approx(records[-1]["jm"], abs=1e-9)
    best_epoch = max(records, key=lambda r: r["jm"])["epoch"]
    assert read_metadata(out / "best.safetensors")["epoch"] == best_epoch


def test_every_submission_row_is_a_lossless_4x_png_of_a_test_image(finished_run, pair_folder):
    out, _ = finished_run
    test_ids = sorted(p.name for p in (pair_folder / "test" / "LR").iterdir())
    model = load_model(out / "latest.safetensors").eval()
    for csv_path in sorted((out / "submissions").iterdir()):
        images = read_submission(csv_path)
        assert sorted(images) == test_ids
        for image_id, image in images.items():
            lr = read_rgb(pair_folder / "test" / "LR" / image_id)
            assert image.shape == (lr.shape[0] * 4, lr.shape[1] * 4, 3) and image.dtype == np.uint8
    # The last CSV holds exactly the quantized prediction of the last weights: PNG is lossless.
    for image_id, image in read_submission(out / "submissions" / "epoch_002.csv").items():
        assert np.array_equal(image, upscale(model, read_rgb(pair_folder / "test" / "LR" / image_id)))


def test_tensorboard_events_hold_the_scalars_and_panels(finished_run, pair_folder):
    out, _ = finished_run
    events = EventAccumulator(str(out / "logs"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for tag in [
        "train/loss",
        "train/lr",
        "train/epoch_loss",
        "val/psnr",
        "val/ssim",
        "val/jm",
        "val/psnr_piq",
        "val/ssim_piq",
        "perf/samples_per_s",
    ]:
        assert tag in tags["scalars"], tags
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [(e.step, e.value) for e in events.Scalars("val/jm")]
    assert [s for s, _ in logged] == [r["step"] for r in records]
    assert all(math.isclose(v, r["jm"], rel_tol=1e-6) for (_, v), r in zip(logged, records))
    epoch_losses = [(e.step, e.value) for e in events.Scalars("train/epoch_loss")]  # the epoch's mean, at its end
    assert [s for s, _ in epoch_losses] == [r["step"] for r in records]
    assert all(math.isclose(v, r["train_loss"], rel_tol=1e-6) for (_, v), r in zip(epoch_losses, records))
    assert len(events.Scalars("train/loss")) == records[-1]["step"]  # --log-every 1
    panels = [t for t in tags["images"] if t.startswith("panels/")]
    assert len(panels) == 2
    panel = events.Images(panels[0])[-1]
    assert panel.step == records[-1]["step"]
    # LR (bilinear) | SR | HR side by side; the right third is the HR image itself.
    image = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(panel.encoded_image_string, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )
    hr = read_rgb(pair_folder / "train" / "HR" / panels[0].removeprefix("panels/"))
    assert image.shape == (hr.shape[0], 3 * hr.shape[1], 3)
    assert np.array_equal(image[:, 2 * hr.shape[1] :], hr)


def test_evaluate_command_agrees_with_the_grader(finished_run, tmp_path):
    out, _ = finished_run
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(0)
    predictions = read_submission(out / "submissions" / "epoch_002.csv")
    grader = []
    for image_id, image in predictions.items():
        truth = np.clip(image.astype(int) + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
        write_png(tmp_path / "hr" / image_id, truth)
        write_png(tmp_path / "pred" / image_id, image)
        grader.append(
            40 * structural_similarity(image, truth, channel_axis=-1, data_range=255)
            + peak_signal_noise_ratio(truth, image, data_range=255)
        )
    expected = float(np.mean(grader))
    for pred in [out / "submissions" / "epoch_002.csv", tmp_path / "pred"]:
        assert evaluate_predictions(pred, tmp_path / "hr")["jm"] == pytest.approx(expected, abs=1e-6)
        result = run_cli("insanesr-dist", "evaluate", "--pred", str(pred), "--hr", str(tmp_path / "hr"))
        assert result.returncode == 0, result.stderr
        assert float(result.stdout.split("JM ")[1]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_config_file_fills_what_the_command_line_leaves(pair_folder, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 1\nmax-steps: 2\nbatch_size: 2\nlr: 0.001\n")
    out = tmp_path / "out"
    result = run_cli(
        "insanesr-dist",
        "train",
        "--config",
        str(config),
        "--data",
        str(pair_folder),
        "--output-dir",
        str(out),
        *TINY,
        *NO_WORKERS,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((out / "config.json").read_text())
    assert saved["lr"] == 0.001 and saved["max_steps"] == 2
    assert saved["batch_size"] == 4  # the command line (TINY) wins over the file
    assert json.loads((out / "metrics.jsonl").read_text())["step"] == 2


@pytest.mark.parametrize(
    "setup,args,needles",
    [
        # The cases that get as far as the data set: slow tier; the checks of the settings alone stay fast.
        pytest.param("none", ["--data", "{tmp}/does/not/exist"], ["does/not/exist", "no such folder"], marks=SLOW),
        pytest.param("no-hr", ["--data", "{tmp}/d"], ["train/HR", "missing"], marks=SLOW),
        pytest.param("not-4x", ["--data", "{tmp}/d"], ["img_001.png", "exactly 4x"], marks=SLOW),
        pytest.param("garbage", ["--data", "{tmp}/d"], ["img_002.png", "cannot be decoded"], marks=SLOW),
        ("ok", ["--data", "{tmp}/d", "--batch-size", "0"], ["batch_size must be >= 1"]),
        ("ok", ["--data", "{tmp}/d", "--config", "{tmp}/bad.yaml"], ["unknown setting", "epoch_count"]),
        pytest.param("ok", ["--data", "{tmp}/d", "--patch-size", "50"], ["--patch-size 50 is larger"], marks=SLOW),
        ("ok", ["--data", "{tmp}/d", "--streaming"], ["max_steps"]),
        ("ok", ["--data", "{tmp}/d", "--val-every", "0"], ["val_every must be >= 1"]),
        ("ok", ["--data", "{tmp}/d", "--submit-every-steps", "-1"], ["submit_every_steps must be >= 0"]),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(tmp_path, setup, args, needles):
    if setup != "none":
        make_pair_folder(tmp_path / "d", num_train=4, num_test=1)
    if setup == "no-hr":
        for p in (tmp_path / "d" / "train" / "HR").iterdir():
            p.unlink()
        (tmp_path / "d" / "train" / "HR").rmdir()
    if setup == "not-4x":
        write_png(tmp_path / "d" / "train" / "HR" / "img_001.png", np.zeros((60, 80, 3), np.uint8))
    if setup == "garbage":
        (tmp_path / "d" / "train" / "LR" / "img_002.png").write_bytes(b"\x89PNG truncated")
    (tmp_path / "bad.yaml").write_text("epoch_count: 3\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run_cli("insanesr-dist", "train", "--output-dir", str(tmp_path / "out"), *TINY, *NO_WORKERS, *args)
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_a_finished_run_is_never_overwritten(finished_run, pair_folder):
    out, _ = finished_run
    before = {p: p.read_bytes() for p in out.glob("*.safetensors")}
    command = ("insanesr-dist", "train", "--data", str(pair_folder), "--output-dir", str(out), *TINY, *NO_WORKERS)
    # The same budget (a larger one trains the finished run further, see below)
    again = run_cli(*command, "--epochs", "2")
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr
    fresh = run_cli(*command, "--resume", "none")
    assert_one_line_error(fresh, "already holds a run")
    # The checkpoint holds an EMA state (the default recipe): continuing without one is refused, not a traceback.
    no_ema = run_cli(*command, "--ema-decay", "0")
    assert_one_line_error(no_ema, "cannot resume with --ema-decay 0", "--ema-decay 0.999")
    assert {p: p.read_bytes() for p in out.glob("*.safetensors")} == before


BUG_AT_STEP_3 = """
class Custom(Trainer):
    def train_step(self, batch):  # a genuine bug mid-epoch, with the DataLoader workers (SIGTERM blocked) running
        if self.state.step == 2:
            raise RuntimeError("a bug at step 3")
        return super().train_step(batch)
"""


@pytest.mark.slow
def test_a_bug_mid_epoch_exits_with_its_traceback_instead_of_hanging(pair_folder, tmp_path):
    args = ["--data", str(pair_folder), *TINY, "--num-workers", "2", "--output-dir", str(tmp_path / "run")]
    result = run_train_script(BUG_AT_STEP_3, *args, timeout=120)
    assert result.returncode == 1 and "RuntimeError: a bug at step 3" in result.stderr, result.stderr[-2000:]
    assert "Exception ignored" not in result.stderr  # the workers' ends are not reported as further failures


@pytest.mark.slow
def test_val_every_submit_every_and_val_max_images_through_the_cli(pair_folder, tmp_path):
    """--val-every 2 --submit-every 2 over 3 epochs: validation and submissions at epochs 2 and 3 (the last
    always), epoch 1 a train-only record; --val-max-images 2 scores the same 2 seeded images, named up front."""
    from insanesr_dist.data.splits import load_splits, val_subset
    from insanesr_dist.tools.study import read_row

    out = tmp_path / "out"
    result = run_cli(
        "insanesr-dist",
        "train",
        "--data",
        str(pair_folder),
        "--epochs",
        "3",
        "--val-every",
        "2",
        "--submit-every",
        "2",
        "--val-max-images",
        "2",
        "--output-dir",
        str(out),
        *TINY,
        *NO_WORKERS,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert "jm" not in records[0] and "images" not in records[0] and records[0]["train_loss"] > 0
    assert [r["images"] for r in records[1:]] == [2, 2]
    assert sorted(p.name for p in (out / "submissions").iterdir()) == ["epoch_002.csv", "epoch_003.csv"]
    events = EventAccumulator(str(out / "logs"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("val/jm")] == [r["step"] for r in records[1:]]
    assert [e.step for e in events.Scalars("train/epoch_loss")] == [r["step"] for r in records]
    best = max(records[1:], key=lambda r: r["jm"])
    assert read_metadata(out / "best.safetensors")["epoch"] == best["epoch"]
    assert read_metadata(out / "latest.safetensors")["epoch"] == 3
    # The subset: the seeded rows, printed in the run's first lines, and the logged JM is theirs.
    val = load_splits(str(pair_folder), val_fraction=0.1, seed=0).val
    kept = val.select(val_subset(len(val), 2, 0))
    ids = list(kept["id"])
    assert f"2 of {len(val)} val images (seeded subset: {', '.join(ids)})" in result.stdout
    assert val_subset(len(val), 2, 0) == val_subset(len(val), 2, 0) and val_subset(len(val), 0, 0) is None
    model = load_model(out / "latest.safetensors").eval()
    scores = [
        psnr_ssim(upscale(model, read_rgb(Path(row["lr"]["path"]))), read_rgb(Path(row["hr"]["path"])))[0]
        for row in kept
    ]
    psnr, ssim = torch.stack(scores).mean(0).tolist()
    assert joint_metric(psnr, ssim) == pytest.approx(records[-1]["jm"], abs=1e-9)
    # Readers of metrics.jsonl skip the train-only record.
    assert read_row("v", {}, out)["best_jm"] == best["jm"]


def test_every_epoch_reaches_the_dataset_also_through_a_sharded_loader(pair_folder):
    """accelerate's DataLoaderShard.set_epoch skips the dataset when its batch sampler is sharded over processes
    (several ranks): the crops would repeat every epoch unless the loop sets it too."""
    from accelerate.data_loader import prepare_data_loader

    from insanesr_dist.data import loaders, splits
    from insanesr_dist.data.batches import epoch_batches

    train = splits.load_splits(pair_folder, val_fraction=0.1, seed=0).train
    loader = loaders.train_loader(train, batch_size=2, patch_size=4, scale=4, seed=0, num_workers=0)
    shard = prepare_data_loader(
        loader, num_processes=2, process_index=1, put_on_device=False, use_seedable_sampler=True
    )
    for epoch in (1, 2):
        epoch_batches(shard, epoch, 0)
        assert shard.dataset.epoch == epoch


@pytest.mark.slow
def test_val_every_steps_and_submit_every_steps_evaluate_mid_epoch_without_changing_training(finished_run, pair_folder):
    """The step forms evaluate mid-epoch (TensorBoard, best/latest weights, step CSVs, a console line), leave
    the epoch's last step to the epoch end, keep metrics.jsonl a line per epoch, and change nothing of the
    training: the same command as finished_run's, plus the step flags and without its DataLoader worker (a
    setting that changes no result), ends with its losses and weights."""
    reference, _ = finished_run
    out = reference.parent / "steps"
    steps = ("--val-every-steps", "2", "--submit-every-steps", "3")
    result = run_cli(*finished_run_command(pair_folder, out, *steps, *NO_WORKERS), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in records] == [r["train_loss"] for r in expected]
    assert [r["jm"] for r in records] == [r["jm"] for r in expected]
    ends = [r["step"] for r in records]
    assert ends[1] == 2 * ends[0] and ends[0] >= 4  # enough steps per epoch for mid-epoch evaluations
    mine, theirs = (load_model(run / "latest.safetensors").state_dict() for run in (out, reference))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)

    mid = lambda every: [s for s in range(1, ends[1]) if s % every == 0 and s not in ends]  # noqa: E731
    events = EventAccumulator(str(out / "logs"), size_guidance={"scalars": 0})
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("val/jm")}
    assert sorted(logged) == sorted(mid(2) + ends)
    assert sorted(p.name for p in (out / "submissions").iterdir()) == sorted(
        [f"step_{s:07d}.csv" for s in mid(3)] + ["epoch_001.csv", "epoch_002.csv"]
    )
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, ends[1] + 1))
    for s in mid(2):
        assert f"step {s} (epoch {1 + (s > ends[0])})  PSNR" in result.stdout
    for s in set(mid(3)) - set(mid(2)):
        assert f"step {s} (epoch {1 + (s > ends[0])})  submission only" in result.stdout
    # best.safetensors: the best JM of every validation, mid-epoch ones included, and its logged score is real.
    best_step = max(logged, key=logged.get)
    meta = read_metadata(out / "best.safetensors")
    assert meta["step"] == best_step and meta["jm"] == pytest.approx(logged[best_step], abs=1e-4)
    assert independent_val_jm(out / "best.safetensors", pair_folder) == pytest.approx(meta["jm"], abs=1e-9)


@pytest.mark.slow
def test_epoch_samples_set_the_epoch_and_epoch_ends_save_only_when_a_checkpoint_is_due(pair_folder, tmp_path):
    """--epoch-samples 40 at batch 4: 10 steps an epoch (20 training pairs would give 5). --checkpoint-every 7
    saves at steps 7, 14, 21, 28 mid-epoch; the epoch ends at steps 10 and 20 come 3 and 6 steps after a save,
    so they do not save; the last one always does, as finished."""
    out = tmp_path / "out"
    args = ("--data", str(pair_folder), "--epochs", "3", "--output-dir", str(out), *TINY, *NO_WORKERS)
    cadence = ("--epoch-samples", "40", "--checkpoint-every", "7", "--keep-checkpoints", "10")
    result = run_cli(*accelerate_launch(1, *args, *cadence), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30] and all("jm" in r for r in records)
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert saved == [f"step_{s:08d}" for s in (7, 14, 21, 28, 30)]
    assert json.loads((out / "checkpoints" / saved[-1] / "train_state.json").read_text())["finished"]
    assert read_metadata(out / "latest.safetensors")["epoch"] == 3


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_model(path).state_dict()


@pytest.mark.slow
def test_init_from_a_run_directory_and_an_exported_folder_starts_from_their_weights(
    finished_run, pair_folder, tmp_path
):
    """--init-from RUN takes its best.safetensors, an exported folder its model.safetensors; with a learning rate
    too small to move a float32 weight, the run's weights after one step are the source's."""
    from insanesr_dist.model.files import save_folder

    run, _ = finished_run
    save_folder(load_model(run / "latest.safetensors"), tmp_path / "exported")
    for source, expected in (
        (run, run / "best.safetensors"),
        (tmp_path / "exported", tmp_path / "exported" / "model.safetensors"),
    ):
        out = tmp_path / f"from-{source.name}"
        result = run_cli(
            "insanesr-dist",
            "train",
            "--data",
            str(pair_folder),
            "--init-from",
            str(source),
            "--lr",
            "1e-30",
            "--ema-decay",
            "0",
            "--epochs",
            "1",
            "--max-steps",
            "1",
            "--output-dir",
            str(out),
            *TINY,
            *NO_WORKERS,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"init: weights from {expected}" in result.stdout
        assert json.loads((out / "config.json").read_text())["init_from"] == str(expected)
        mine, theirs = _tensors(out / "latest.safetensors"), _tensors(expected)
        assert all(torch.allclose(mine[k], theirs[k], rtol=0, atol=1e-12) for k in theirs)


def test_a_partial_init_lists_what_it_left_and_a_strict_one_names_the_tensor(tmp_path):
    from insanesr_dist.errors import UserError
    from insanesr_dist.model.architecture import InsaneSRNet
    from insanesr_dist.model.files import save_weights
    from insanesr_dist.model.weights import init_weights

    small = InsaneSRNet(num_rrdb=1, channels=8, growth=8, layers_per_block=2)
    save_weights(small, tmp_path / "small.safetensors")
    bigger = InsaneSRNet(num_rrdb=2, channels=8, growth=8, layers_per_block=2)
    before = {k: v.clone() for k, v in bigger.state_dict().items()}
    with pytest.raises(UserError, match=r"small.safetensors: does not fit this model \(trunk\.1\..* missing"):
        init_weights(bigger, tmp_path / "small.safetensors", strict=True)
    left = init_weights(bigger, tmp_path / "small.safetensors", strict=False)
    after, source = bigger.state_dict(), small.state_dict()
    assert left and all(k.startswith("trunk.1.") for k in left)
    assert all(torch.equal(after[k], before[k]) for k in left)  # left at their initial value
    assert all(torch.equal(after[k], source[k]) for k in after if k not in left)  # the rest copied
    same = InsaneSRNet(num_rrdb=1, channels=8, growth=8, layers_per_block=2)  # a weights file that fits: all of it
    assert init_weights(same, tmp_path / "small.safetensors") == []
    assert all(torch.equal(same.state_dict()[k], v) for k, v in source.items())


@pytest.mark.slow
@pytest.mark.parametrize("extra, stop_step", [([], None), (["--val-every-steps", "2"], 4)])
def test_early_stopping_ends_the_run_as_finished_at_the_expected_validation(pair_folder, tmp_path, extra, stop_step):
    """Patience 1 with a min delta no JM gain reaches: the first validation sets the bar, the second stops the
    run — at the end of epoch 2, or mid-epoch at step 4 with --val-every-steps 2; the run ends with its CSV and
    is finished (a rerun does nothing)."""
    out = tmp_path / "out"
    args = [
        "insanesr-dist",
        "train",
        "--data",
        str(pair_folder),
        "--epochs",
        "4",
        "--early-stop-patience",
        "1",
        "--early-stop-min-delta",
        "1000",
        "--output-dir",
        str(out),
        *extra,
        *TINY,
        *NO_WORKERS,
    ]
    result = run_cli(*args, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    stop = stop_step or 2 * records[0]["step"]
    assert records[-1]["step"] == stop and "jm" in records[-1]
    assert [r["epoch"] for r in records] == ([1] if stop_step else [1, 2])
    assert "early stop: 1 validation(s) without a JM above" in result.stdout
    assert read_metadata(out / "latest.safetensors")["step"] == stop
    assert read_metadata(out / "latest.safetensors")["jm"] == pytest.approx(records[-1]["jm"], abs=1e-9)
    assert (out / "submissions" / f"epoch_{records[-1]['epoch']:03d}.csv").is_file()
    again = run_cli(*args, timeout=120)
    assert again.returncode == 0 and "this run already finished" in again.stdout


@pytest.mark.slow
def test_a_finished_run_given_a_larger_budget_continues_from_its_final_state(finished_run, pair_folder, tmp_path):
    """A finished run rerun with more epochs continues (step count, Adam moments, EMA and RNG carried over): a
    1-epoch run extended to 2 under --schedule constant ends exactly as a 2-epoch run; under cosine (a copy of
    finished_run's 2 epochs, extended to 3) its learning rate follows the new total's schedule from the step it
    stopped at; the same budget again does nothing."""

    def train(out: Path, *args: str) -> str:
        result = run_cli(
            "insanesr-dist",
            "train",
            "--data",
            str(pair_folder),
            "--output-dir",
            str(out),
            "--log-every",
            "1",
            *args,
            *TINY,
            *NO_WORKERS,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    train(tmp_path / "straight", "--epochs", "2", "--schedule", "constant")
    train(tmp_path / "extended", "--epochs", "1", "--schedule", "constant")
    said = train(tmp_path / "extended", "--epochs", "2", "--schedule", "constant")
    straight, extended = (
        [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        for run in ("straight", "extended")
    )
    steps = straight[0]["step"]
    assert f"the run had finished: its budget grows from {steps} to {2 * steps} steps" in said
    for key in ("epoch", "step", "train_loss", "jm"):
        assert [r[key] for r in extended] == [r[key] for r in straight], key
    mine, theirs = (_tensors(tmp_path / run / "latest.safetensors") for run in ("extended", "straight"))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert "already finished" in train(tmp_path / "extended", "--epochs", "2", "--schedule", "constant")

    # finished_run's settings are train()'s with the default (cosine) schedule; the copy leaves it unchanged.
    cosine = tmp_path / "cosine"
    shutil.copytree(finished_run[0], cosine)
    said = train(cosine, "--epochs", "3")
    assert f"the run had finished: its budget grows from {2 * steps} to {3 * steps} steps" in said
    events = EventAccumulator(str(cosine / "logs"), size_guidance={"scalars": 0})
    events.Reload()
    lrs = {e.step: e.value for e in events.Scalars("train/lr")}
    config = json.loads((cosine / "config.json").read_text())
    for step in (2 * steps + 1, 3 * steps):  # the lr set for a step is the schedule's at the steps taken before it
        expected = lr_at(step - 1, peak=config["lr"], warmup=config["warmup_steps"], total=3 * steps, schedule="cosine")
        assert lrs[step] == pytest.approx(expected, rel=1e-6)
    assert lrs[2 * steps] == pytest.approx(
        lr_at(2 * steps - 1, peak=config["lr"], warmup=config["warmup_steps"], total=2 * steps, schedule="cosine"),
        rel=1e-6,
    )
