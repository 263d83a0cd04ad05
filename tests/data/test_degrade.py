"""--lr-from-hr: each kernel is the documented resize, an HR image off the scale's grid is cropped, and an HR-only
set trains exactly as the same set with the LR files that kernel made (through the real CLI)."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import NO_WORKERS, TINY, make_pair_folder, run_cli, write_png
from insanesr_dist.data.degrade import lr_from_hr, mod_crop
from insanesr_dist.data.loaders import EvalImages
from insanesr_dist.data.splits import load_splits


@pytest.fixture(scope="module")
def hr_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (25, 31, 3), dtype=np.uint8)
    return cv2.resize(base, (4 * 31 + 3, 4 * 25 + 2), interpolation=cv2.INTER_LINEAR)  # off the x4 grid


def test_mod_crop_drops_the_rows_and_columns_off_the_grid(hr_image):
    cropped = mod_crop(hr_image, 4)
    assert cropped.shape == (100, 124, 3) and np.array_equal(cropped, hr_image[:100, :124])


def test_kernels_are_the_documented_resizes(hr_image):
    hr = mod_crop(hr_image, 4)
    assert np.array_equal(lr_from_hr(hr, 4, "bicubic"), cv2.resize(hr, (31, 25), interpolation=cv2.INTER_CUBIC))
    # area: the mean of each 4x4 block (OpenCV rounds it; within half a grey level of the exact mean)
    blocks = hr.reshape(25, 4, 31, 4, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(lr_from_hr(hr, 4, "area").astype(np.float64) - blocks).max() <= 0.5
    # bicubic-antialias: PIL's antialiased bicubic, within one grey level
    pil = np.asarray(Image.fromarray(hr).resize((31, 25), Image.BICUBIC))
    assert np.abs(lr_from_hr(hr, 4, "bicubic-antialias").astype(int) - pil).max() <= 1
    with pytest.raises(ValueError, match="unknown LR kernel"):
        lr_from_hr(hr, 4, "lanczos")


@pytest.mark.parametrize("store_gb", [64, 0])
def test_an_hr_only_folder_gives_the_kernels_lr_from_the_store_and_without_it(tmp_path, hr_image, store_gb):
    for i in range(4):
        write_png(tmp_path / "shots" / f"shot{i}.png", np.roll(hr_image, 7 * i, axis=1))
    said = []
    splits = load_splits(
        None,
        val_fraction=0.25,
        seed=0,
        folders={"train_hr": str(tmp_path / "shots")},
        lr_from_hr="area",
        store_gb=store_gb,
        store_dir=tmp_path / "store",
        say=said.append,
    )
    assert any("4 training HR image(s); LR made from HR by area (--lr-from-hr)" in s for s in said), said
    assert (splits.pixels is not None) == bool(store_gb)
    images = EvalImages(splits.val, with_hr=True, pixels=splits.pixels)
    _, lr, hr = images[0]
    shift = int(splits.val[0]["id"][4])
    expected_hr = mod_crop(np.roll(hr_image, 7 * shift, axis=1), 4)
    assert np.array_equal(hr.permute(1, 2, 0).numpy(), expected_hr)
    assert np.array_equal(lr.permute(1, 2, 0).numpy(), lr_from_hr(expected_hr, 4, "area"))
    assert set(splits.train.column_names) >= {"id", "lr", "hr"}


@pytest.mark.slow
def test_hr_only_training_equals_training_on_the_lr_files_the_kernel_made(tmp_path):
    """make_pair_folder's LR files are OpenCV bicubic of their HR: `--lr-from-hr bicubic` on the HR folder alone
    must train exactly as the pairs do (same losses, same JM); check-data reads the HR-only folder too."""
    pairs = make_pair_folder(tmp_path / "pairs", num_train=12, num_test=2)
    hr_only = tmp_path / "hr-only"
    shutil.copytree(pairs / "train" / "HR", hr_only / "train" / "HR")
    shutil.copytree(pairs / "test", hr_only / "test")
    write_png(hr_only / "train" / "HR" / "zz_odd.png", np.zeros((70, 83, 3), np.uint8))  # cropped to 68x80
    write_png(pairs / "train" / "HR" / "zz_odd.png", np.zeros((68, 80, 3), np.uint8))
    write_png(pairs / "train" / "LR" / "zz_odd.png", np.zeros((17, 20, 3), np.uint8))
    check = run_cli(
        "insanesr-dist", "check-data", str(hr_only), "--lr-from-hr", "bicubic", "--patch-size", "8", timeout=120
    )
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    assert (
        "zz_odd.png: HR is 83x70, not a multiple of 4: its last 2 row(s) and 3 column(s) are cropped (80x68)"
        in check.stdout
    ), check.stdout
    assert "13 training pair(s), 13 usable" in check.stdout
    records = {}
    for name, extra in (("files", [str(pairs)]), ("hr-only", [str(hr_only), "--lr-from-hr", "bicubic"])):
        out = tmp_path / f"run-{name}"
        result = run_cli(
            "insanesr-dist",
            "train",
            "--data",
            *extra,
            "--epochs",
            "2",
            "--output-dir",
            str(out),
            *TINY,
            *NO_WORKERS,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        records[name] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "jm", "psnr", "ssim"):
        assert [r[key] for r in records["hr-only"]] == [r[key] for r in records["files"]], key
