"""Data as users have it (sources.py): the DIV2K/Flickr2K layouts, folders given one by one (--hr-dir, ...), pairing
by the scale suffix, and the one-line errors of pairing mistakes; through load_splits, check-data and train."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import NO_WORKERS, TINY, assert_one_line_error, read_rgb, run_cli, write_png
from insanesr_dist.data import pairs as samples
from insanesr_dist.data.loaders import EvalImages
from insanesr_dist.data.splits import load_splits
from insanesr_dist.errors import UserError


def _pair_images(rng, lr_size=(16, 20)) -> tuple[np.ndarray, np.ndarray]:
    h, w = lr_size
    hr = cv2.resize(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (4 * w, 4 * h), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(hr, (w, h), interpolation=cv2.INTER_CUBIC), hr


def make_div2k(
    root: Path, prefix: str = "DIV2K", *, train: int = 6, valid: int = 2, test: int = 1, seed: int = 0
) -> Path:
    """DIV2K as its zips unpack: <prefix>_train_HR/0001.png, <prefix>_train_LR_bicubic/X4/0001x4.png, the same for
    _valid_, an LR-only _test_ set, and an X2 folder beside X4 that must not be read."""
    rng = np.random.default_rng(seed)
    number = 0
    for split, count in (("train", train), ("valid", valid), ("test", test)):
        for _ in range(count):
            number += 1
            lr, hr = _pair_images(rng)
            if split != "test":
                write_png(root / f"{prefix}_{split}_HR" / f"{number:04d}.png", hr)
                write_png(
                    root / f"{prefix}_{split}_LR_bicubic" / "X2" / f"{number:04d}x2.png",
                    cv2.resize(hr, (hr.shape[1] // 2, hr.shape[0] // 2), interpolation=cv2.INTER_AREA),
                )
            write_png(root / f"{prefix}_{split}_LR_bicubic" / "X4" / f"{number:04d}x4.png", lr)
    return root


def test_div2k_layout_pairs_by_the_suffix_and_validates_on_its_valid_set(tmp_path):
    root = make_div2k(tmp_path / "DIV2K")
    said = []
    splits = load_splits(root, val_fraction=0.1, seed=0, say=said.append, store_dir=tmp_path / "store")
    assert sorted(splits.train["id"]) == [f"{i:04d}.png" for i in range(1, 7)]
    assert sorted(splits.val["id"]) == ["0007.png", "0008.png"]  # the valid set, not a split of train
    assert list(splits.test["id"]) == ["0009x4.png"]
    line = next(s for s in said if s.startswith("data: DIV2K layout"))
    assert "6 training pair(s), 2 validation pair(s) (8 by the x4 suffix of the LR name)" in line
    assert "0 file(s) without a partner; 1 test image(s)" in line
    # the pixels are those of the files: LR from X4 (not X2), HR from _HR
    val = EvalImages(splits.val, with_hr=True, pixels=splits.pixels)
    for i, image_id in enumerate(splits.val["id"]):
        _, lr, hr = val[i]
        stem = Path(image_id).stem
        assert np.array_equal(
            lr.permute(1, 2, 0).numpy(), read_rgb(root / "DIV2K_valid_LR_bicubic" / "X4" / f"{stem}x4.png")
        )
        assert np.array_equal(hr.permute(1, 2, 0).numpy(), read_rgb(root / "DIV2K_valid_HR" / image_id))


def test_flickr2k_one_level_down_is_split_90_10(tmp_path):
    root = tmp_path / "download"  # Flickr2K.tar unpacks to Flickr2K/Flickr2K_HR, Flickr2K/Flickr2K_LR_bicubic/X4
    rng = np.random.default_rng(1)
    for i in range(1, 11):
        lr, hr = _pair_images(rng)
        write_png(root / "Flickr2K" / "Flickr2K_HR" / f"{i:06d}.png", hr)
        write_png(root / "Flickr2K" / "Flickr2K_LR_bicubic" / "X4" / f"{i:06d}x4.png", lr)
    splits = load_splits(root, val_fraction=0.1, seed=0, say=lambda _: None, store_dir=tmp_path / "store")
    assert (len(splits.train), len(splits.val), splits.test) == (9, 1, None)


def test_given_folders_pair_recursively_with_or_without_the_suffix(tmp_path):
    rng = np.random.default_rng(2)
    for _, (sub, lr_name) in enumerate(
        [("act1", "a.png"), ("act1", "bx4.png"), ("act2", "c_x4.png"), ("act2", "d.png")]
    ):
        lr, hr = _pair_images(rng)
        hr_name = (samples.scale_suffix(lr_name) or ([lr_name],))[0][0]
        write_png(tmp_path / "hr" / sub / hr_name, hr)
        write_png(tmp_path / "lr" / sub / lr_name, lr)
    write_png(tmp_path / "test" / "t.png", _pair_images(rng)[0])
    (tmp_path / "hr" / ".DS_Store").write_bytes(b"junk")
    said = []
    splits = load_splits(
        None,
        val_fraction=0.25,
        seed=0,
        say=said.append,
        store_dir=tmp_path / "store",
        folders={"train_hr": str(tmp_path / "hr"), "train_lr": str(tmp_path / "lr"), "test_lr": str(tmp_path / "test")},
    )
    ids = sorted(list(splits.train["id"]) + list(splits.val["id"]))
    assert ids == ["act1/a.png", "act1/b.png", "act2/c.png", "act2/d.png"]
    assert any("4 training pair(s) (2 by the x4 suffix of the LR name)" in s for s in said), said
    assert list(splits.test["id"]) == ["t.png"]


@pytest.mark.parametrize(
    "mistake, needles",
    [
        ("missing partner", ["0002x4.png", "has no partner of the same name in the HR folder"]),
        ("wrong scale", ["0001x2.png", "is named for x2", "training is x4"]),
        ("stray suffix", ["0001x3.png", "is named for x3"]),
    ],
)
def test_pairing_mistakes_are_one_line_naming_the_file(tmp_path, mistake, needles):
    rng = np.random.default_rng(3)
    hr_dir, lr_dir = tmp_path / "HR", tmp_path / "LR"
    for i in (1, 2, 3):
        lr, hr = _pair_images(rng)
        if not (mistake == "missing partner" and i == 2):
            write_png(hr_dir / f"{i:04d}.png", hr)
        suffix = {"wrong scale": "x2", "stray suffix": "x3"}.get(mistake, "x4") if i == 1 else "x4"
        write_png(lr_dir / f"{i:04d}{suffix}.png", lr)
    with pytest.raises(UserError) as raised:
        load_splits(
            None,
            val_fraction=0.3,
            seed=0,
            say=lambda _: None,
            store_dir=tmp_path / "store",
            folders={"train_hr": str(hr_dir), "train_lr": str(lr_dir)},
        )
    assert all(needle in raised.value.message for needle in needles), raised.value.message


def test_layout_option_mistakes_are_one_line(tmp_path):
    root = make_div2k(tmp_path / "DIV2K", train=2, valid=0, test=0)
    cases = [
        ({"train_hr": str(tmp_path / "nope")}, "no such folder (--hr-dir)"),
        ({"train_hr": str(root / "DIV2K_train_HR")}, "--hr-dir needs --lr-dir too"),
        ({"val_lr": str(root / "DIV2K_train_HR")}, "--val-lr-dir needs --val-hr-dir too"),
    ]
    for given, needle in cases:
        with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            load_splits(
                None if "train_hr" in given else root,
                val_fraction=0.3,
                seed=0,
                folders=given,
                say=lambda _: None,
                store_dir=tmp_path / "store",
            )
    # DIV2K's other degradations beside bicubic are fine; without bicubic, which one is meant must be said
    (root / "DIV2K_train_LR_unknown" / "X4").mkdir(parents=True)
    assert load_splits(root, val_fraction=0.5, seed=0, say=lambda _: None, store_dir=tmp_path / "store").train
    (root / "DIV2K_train_LR_bicubic").rename(root / "DIV2K_train_LR_mild")
    with pytest.raises(UserError, match=r"several LR sets for DIV2K_train .*choose one with --lr-dir"):
        load_splits(root, val_fraction=0.5, seed=0, say=lambda _: None, store_dir=tmp_path / "store")


@pytest.mark.slow
def test_each_layout_trains_one_step_and_passes_check_data_through_the_cli(tmp_path):
    div2k = make_div2k(tmp_path / "DIV2K", train=4, valid=2, test=1)
    runs = {
        "div2k": ["--data", str(div2k)],
        "folders": [
            "--hr-dir",
            str(div2k / "DIV2K_train_HR"),
            "--lr-dir",
            str(div2k / "DIV2K_train_LR_bicubic" / "X4"),
            "--val-hr-dir",
            str(div2k / "DIV2K_valid_HR"),
            "--val-lr-dir",
            str(div2k / "DIV2K_valid_LR_bicubic" / "X4"),
            "--test-lr-dir",
            str(div2k / "DIV2K_test_LR_bicubic" / "X4"),
        ],
    }
    for name, args in runs.items():
        check = run_cli(
            "insanesr-dist", "check-data", *args[1:] if name == "div2k" else args, "--patch-size", "8", timeout=120
        )
        assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
        assert "6 training pair(s), 6 usable; 1 test image(s); 0 bad" in check.stdout, check.stdout
        out = tmp_path / name
        result = run_cli(
            "insanesr-dist",
            "train",
            *args,
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
        assert "4 train / 2 val / 1 test images" in result.stdout, result.stdout
        assert (out / "submissions" / "epoch_001.csv").is_file()
    bad = run_cli(
        "insanesr-dist",
        "train",
        "--hr-dir",
        str(div2k / "DIV2K_train_HR"),
        "--lr-dir",
        str(div2k / "DIV2K_train_LR_bicubic" / "X2"),
        "--output-dir",
        str(tmp_path / "bad"),
        *TINY,
        timeout=120,
    )
    assert_one_line_error(bad, "0001x2.png", "is named for x2")
