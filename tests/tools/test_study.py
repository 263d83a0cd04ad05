"""`insanesr-dist study`: every variant once per seed, the mean and spread over the seeds, the test split scored
by the grader, the `predict --tta` row, reuse of finished runs, and the grids themselves."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from conftest import assert_one_line_error, run_cli, write_png
from insanesr_dist.presets import PRESETS
from insanesr_dist.scoring.submission import read_submission
from insanesr_dist.tools import study
from insanesr_dist.tools.study import applied_beta2, study_command, summarize

TINY = "--num-rrdb 1 --channels 8 --growth 8 --layers-per-block 2 --patch-size 8 --batch-size 4"


def make_split_folder(root: Path, counts=(12, 3, 3), lr_size=(16, 20)) -> Path:
    """A folder laid out like the game-art set: train, val and test, each with HR and HR's bicubic /4 as LR."""
    rng = np.random.default_rng(3)
    h, w = lr_size
    index = 0
    for split, count in zip(("train", "val", "test"), counts):
        for _ in range(count):
            hr = cv2.resize(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (4 * w, 4 * h))
            write_png(root / split / "HR" / f"{index:05d}.png", hr)
            write_png(root / split / "LR" / f"{index:05d}.png", cv2.resize(hr, (w, h), interpolation=cv2.INTER_CUBIC))
            index += 1
    return root


def grader_jm(pred: dict[str, np.ndarray], hr_dir: Path) -> float:
    """The competition's joint metric with scikit-image, averaged over the images."""
    jms = []
    for image_id, image in pred.items():
        truth = cv2.cvtColor(cv2.imread(str(hr_dir / image_id)), cv2.COLOR_BGR2RGB)
        psnr = peak_signal_noise_ratio(truth, image, data_range=255)
        jms.append(40 * structural_similarity(image, truth, channel_axis=-1, data_range=255) + psnr)
    return float(np.mean(jms))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_seeds_give_mean_and_spread_test_scores_by_the_grader_and_a_tta_row(tmp_path):
    data = make_split_folder(tmp_path / "data")
    out = tmp_path / "study"
    args = ["insanesr-dist", "study", "--data", str(data), "--output-dir", str(out), "--steps", "2"]
    train_args = f"{TINY} --num-workers 0"  # the DataLoader workers are not what this test is about
    args += ["--seeds", "1,2", "--variants", "preset default", "--train-args", train_args]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]

    runs = read_csv(out / "runs.csv")
    assert [(r["variant"], r["seed"]) for r in runs] == [
        ("bilinear x4 (no training)", "1"),
        ("bicubic x4 (no training)", "1"),
        ("bilinear x4 (no training)", "2"),
        ("bicubic x4 (no training)", "2"),
        ("preset default", "1"),
        ("preset default", "2"),
        ("preset default + predict --tta (x8)", "1"),
        ("preset default + predict --tta (x8)", "2"),
    ]
    trained = {int(r["seed"]): r for r in runs if r["variant"] == "preset default"}
    for seed, row in trained.items():
        run_dir = out / "runs" / "preset_default" / f"seed_{seed}"
        assert json.loads((run_dir / "config.json").read_text())["seed"] == seed
        last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        assert row["steps"] == "2" and float(row["val_jm"]) == pytest.approx(last["jm"])
        # The test split's JM: the run's final submission, scored by scikit-image as the grader does.
        submission = read_submission(run_dir / "submissions" / f"epoch_{last['epoch']:03d}.csv")
        assert sorted(submission) == ["00015.png", "00016.png", "00017.png"]
        assert float(row["test_jm"]) == pytest.approx(grader_jm(submission, data / "test" / "HR"), abs=1e-9)
        assert (run_dir / "latest.safetensors").is_file() and not (run_dir / "checkpoints").exists()
    tta = [r for r in runs if "tta" in r["variant"]]
    assert all(float(r["val_jm"]) > 0 and float(r["test_jm"]) > 0 and r["val_gain"] != "" for r in tta)
    assert sorted(p.name for p in (out / "tta" / "preset_default" / "seed_1" / "test").iterdir()) == [
        "00015.png",
        "00016.png",
        "00017.png",
    ]

    table = {r["variant"]: r for r in read_csv(out / "study.csv")}
    assert list(table) == [
        "bilinear x4 (no training)",
        "bicubic x4 (no training)",
        "preset default",
        "preset default + predict --tta (x8)",
    ]
    row, bicubic = table["preset default"], table["bicubic x4 (no training)"]
    val = [float(trained[s]["val_jm"]) for s in (1, 2)]
    assert row["seeds"] == "2" and float(row["val_jm"]) == pytest.approx(np.mean(val))
    assert float(row["val_jm_spread"]) == pytest.approx(abs(val[0] - val[1]))
    assert float(row["test_gain"]) == pytest.approx(float(row["test_jm"]) - float(bicubic["test_jm"]))
    assert bicubic["val_jm_spread"] == "0.0"  # a given validation set: the same images for every seed
    md = (out / "study.md").read_text()
    assert "val_jm_spread" in md and "| preset default | 2 | 2 |" in md and "seeds 1,2" in md

    # The same command again reuses the finished runs; other options for them are refused.
    again = run_cli(*args, "--no-tta")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "insanesr_dist.train" not in again.stderr and "[study] preset default: --preset" not in again.stderr
    assert read_csv(out / "runs.csv")[4:6] == runs[4:6]
    other = run_cli(*args[:-1], train_args + " --lr 1e-3")
    assert_one_line_error(other, "holds a run of other options")


def test_summary_is_the_mean_and_spread_over_seeds_with_blanks_where_a_score_is_missing():
    runs = [
        {"variant": "a", "seed": 1, "steps": 5, "val_jm": 40.0, "test_jm": 41.0, "samples_per_s": 10.0},
        {"variant": "b", "seed": 1, "steps": 5, "val_jm": 30.0},
        {"variant": "a", "seed": 2, "steps": 5, "val_jm": 41.0, "test_jm": 44.0, "samples_per_s": 12.0},
    ]
    a, b = summarize(runs)
    assert (a["variant"], a["seeds"], a["val_jm"], a["val_jm_spread"]) == ("a", 2, 40.5, 1.0)
    assert (a["test_jm"], a["test_jm_spread"], a["samples_per_s"]) == (42.5, 3.0, 11.0)
    assert (b["seeds"], b["val_jm"], b["val_jm_spread"], b["test_jm"], b["test_jm_spread"]) == (1, 30.0, "", "", "")


def test_the_default_grid_is_the_issues_one_factor_at_a_time_from_the_default_preset():
    base, variants = study.GRIDS["default"]
    assert base == {"preset": "default"} and variants["preset default"] == {}
    assert PRESETS["default"]["lr"] == 5e-4 and {variants[f"lr {v}"]["lr"] for v in ("2e-4", "1e-3")} == {2e-4, 1e-3}
    pixels = {name: s["patch_size"] ** 2 * s["batch_size"] for name, s in variants.items() if "patch_size" in s} | {
        "preset default": 32**2 * 16
    }
    assert max(pixels.values()) / min(pixels.values()) < 1.02  # patch/batch at equal LR pixels per step
    assert [variants[n].get("ssim_weight") for n in variants if n.startswith("loss")] == [0.0, 0.0, 0.25, 1.0]
    assert {variants[n]["ema_decay"] for n in ("ema off", "ema 0.9999")} == {0.0, 0.9999}
    assert variants["adam betas (0.9, 0.99)"] == {"adam_beta2": 0.99} and variants["grad clip 1.0"]
    # The first study's grid is kept as it was, on the report's recipe.
    assert study.GRIDS["levers"][0] == {"preset": "report", "patch_size": 32, "batch_size": 16}


def test_a_variant_of_another_grid_and_bad_seeds_are_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(study_command, ["--output-dir", str(tmp_path), "--variants", "head: residual"])
    assert result.exit_code == 1 and "not in --grid default" in result.output
    result = runner.invoke(study_command, ["--output-dir", str(tmp_path), "--seeds", "1,1"])
    assert result.exit_code == 2 and "different seeds" in result.output


def test_the_beta2_a_run_stepped_with_is_read_from_its_checkpoint(tmp_path):
    layer = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(layer.parameters(), betas=(0.9, 0.99))
    layer(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    assert applied_beta2(tmp_path) is None
    (tmp_path / "checkpoints" / "step_00000001").mkdir(parents=True)
    torch.save(optimizer.state_dict(), tmp_path / "checkpoints" / "step_00000001" / "optimizer.bin")
    assert applied_beta2(tmp_path) == 0.99
