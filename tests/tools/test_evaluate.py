"""`evaluate`: grader-exact per-image report with bilinear/bicubic baselines, read back as a user would."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from conftest import assert_one_line_error, make_pair_folder, read_rgb, run_cli, write_png
from insanesr_dist.scoring.validation import score_images
from insanesr_dist.tools.evaluate import Stems, evaluate_predictions, score_predictions


def grader(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """The competition's calculate_joint_metric, term by term, on uint8 images."""
    psnr = peak_signal_noise_ratio(truth, pred, data_range=255)
    ssim = structural_similarity(pred, truth, channel_axis=-1, data_range=255)
    return psnr, ssim, 40 * ssim + psnr


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Pairs, plus predictions that beat bicubic: the HR with a little noise."""
    root = make_pair_folder(tmp_path_factory.mktemp("eval"), num_train=3, num_test=0, lr_size=(16, 20), seed=5)
    rng = np.random.default_rng(1)
    for hr_path in sorted((root / "train" / "HR").iterdir()):
        hr = read_rgb(hr_path)
        noisy = np.clip(hr.astype(int) + rng.integers(-6, 7, hr.shape), 0, 255).astype(np.uint8)
        write_png(root / "pred" / hr_path.name, noisy)
    return root


def test_report_matches_the_grader_for_predictions_and_both_baselines(scored, tmp_path):
    report = tmp_path / "out" / "report.csv"
    result = run_cli(
        "insanesr-dist",
        "evaluate",
        "--pred",
        str(scored / "pred"),
        "--hr",
        str(scored / "train/HR"),
        "--lr-dir",
        str(scored / "train/LR"),
        "--report",
        str(report),
    )
    assert result.returncode == 0, result.stderr
    with open(report, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == sorted(p.name for p in (scored / "pred").iterdir())
    assert list(rows[0]) == [
        "id",
        "psnr",
        "ssim",
        "jm",
        "bilinear_psnr",
        "bilinear_ssim",
        "bilinear_jm",
        "bicubic_psnr",
        "bicubic_ssim",
        "bicubic_jm",
    ]
    expected = {"": [], "bilinear_": [], "bicubic_": []}
    for row in rows:
        hr, lr = read_rgb(scored / "train/HR" / row["id"]), read_rgb(scored / "train/LR" / row["id"])
        images = {
            "": read_rgb(scored / "pred" / row["id"]),
            "bilinear_": cv2.resize(lr, (80, 64), interpolation=cv2.INTER_LINEAR),
            "bicubic_": cv2.resize(lr, (80, 64), interpolation=cv2.INTER_CUBIC),
        }
        for prefix, image in images.items():
            psnr, ssim, jm = grader(image, hr)
            expected[prefix].append(jm)
            assert float(row[prefix + "psnr"]) == pytest.approx(psnr, abs=1e-9)
            assert float(row[prefix + "ssim"]) == pytest.approx(ssim, abs=1e-9)
            assert float(row[prefix + "jm"]) == pytest.approx(jm, abs=1e-9)
    lines = result.stdout.splitlines()
    assert float(lines[0].split("JM ")[1]) == pytest.approx(np.mean(expected[""]), abs=1e-6)
    for kind, line in zip(["bilinear", "bicubic"], lines[1:3]):
        assert line.startswith(kind)
        gain = np.mean(expected[""]) - np.mean(expected[kind + "_"])
        assert gain > 0 and float(line.split("gain: JM ")[1].split()[0]) == pytest.approx(gain, abs=1e-4)
    assert not [p for p in report.parent.iterdir() if p.name != "report.csv"]  # written atomically


def test_predictions_named_png_find_their_jpeg_partners(scored, tmp_path):
    (tmp_path / "hr").mkdir()
    for p in (scored / "train/HR").iterdir():
        assert cv2.imwrite(str(tmp_path / "hr" / (p.stem + ".jpg")), cv2.imread(str(p)))
    rows = score_predictions(scored / "pred", tmp_path / "hr")
    assert len(rows) == 3 and all(r["jm"] > 20 for r in rows)
    assert evaluate_predictions(scored / "pred", tmp_path / "hr")["images"] == 3


def test_a_partner_is_the_same_name_else_the_only_one_with_its_stem():
    stems = Stems(["a.jpg", "b.png", "b.jpg", "c.txt.png"])
    names = {"a.jpg", "b.png", "b.jpg", "c.txt.png"}
    assert stems.partner("b.png", names.__contains__) == "b.png"  # the same name first, even with a twin stem
    assert stems.partner("a.png", names.__contains__) == "a.jpg"
    assert stems.partner("b.webp", names.__contains__) is None  # two with that stem: neither is chosen
    assert stems.partner("d.png", names.__contains__) is None
    assert stems.partner("c.txt.bmp", names.__contains__) == "c.txt.png"


def test_an_lr_that_is_not_a_quarter_of_its_hr_is_one_line(scored, tmp_path):
    write_png(tmp_path / "lr" / "img_000.png", np.zeros((10, 10, 3), np.uint8))
    for p in list((scored / "train/LR").iterdir())[1:]:
        write_png(tmp_path / "lr" / p.name, read_rgb(p))
    result = run_cli(
        "insanesr-dist",
        "evaluate",
        "--pred",
        str(scored / "pred"),
        "--hr",
        str(scored / "train/HR"),
        "--lr-dir",
        str(tmp_path / "lr"),
    )
    assert_one_line_error(result, "img_000.png", "LR is 10x10, HR is 80x64")


def test_tiled_validation_and_submissions_match_the_whole_image_forward(tmp_path):
    """Training's evaluation with a tile threshold below the images' size (so every image is tiled, with the
    model's exact overlap) scores and predicts what the whole-image float32 forward does, on the same weights."""
    import torch
    from accelerate import Accelerator

    from insanesr_dist.data.loaders import eval_loader
    from insanesr_dist.data.splits import load_splits
    from insanesr_dist.inference.forward import float32_forward
    from insanesr_dist.inference.sharded import predict_pngs
    from insanesr_dist.inference.tiles import exact_overlap, layout
    from insanesr_dist.model.architecture import InsaneSRNet

    root = make_pair_folder(tmp_path / "d", num_train=10, num_test=2, lr_size=(44, 52), seed=3)
    splits = load_splits(str(root), val_fraction=0.3, seed=0)
    torch.manual_seed(0)
    model = InsaneSRNet(num_rrdb=1, channels=8, growth=8, layers_per_block=2).eval()
    overlap = exact_overlap(model.config)
    assert len(layout(44, 8, overlap).starts) > 1 and len(layout(52, 8, overlap).starts) > 1  # really tiled
    accelerator = Accelerator(cpu=True)
    forward = float32_forward(accelerator, model)
    val = accelerator.prepare(eval_loader(splits.val, with_hr=True, num_workers=0))
    test = accelerator.prepare(eval_loader(splits.test, with_hr=False, num_workers=0))
    whole, tiled = score_images(forward, val, accelerator), score_images(forward, val, accelerator, 8, overlap)
    # The test can fail: without enough context the tiles' seams change the scores.
    assert abs(score_images(forward, val, accelerator, 8, 0)["jm"] - whole["jm"]) > 1e-3
    assert whole["images"] == tiled["images"] == 3
    # Stated tolerance: the exact overlap leaves float rounding only, which moves a few uint8 values by 1 at
    # most; measured dJM 0.0 here, allowed 1e-2 (the PSNR of a 1-level change on one pixel is far smaller).
    assert abs(whole["jm"] - tiled["jm"]) < 1e-2 and abs(whole["ssim"] - tiled["ssim"]) < 1e-4
    pngs = {tile: predict_pngs(forward, test, accelerator, tile, overlap) for tile in (0, 8)}
    assert sorted(pngs[0]) == sorted(pngs[8]) == [0, 1]
    for i in pngs[0]:
        a, b = (cv2.imdecode(np.frombuffer(pngs[tile][i], np.uint8), cv2.IMREAD_COLOR).astype(int) for tile in (0, 8))
        assert a.shape == b.shape == (176, 208, 3) and np.abs(a - b).max() <= 1


def test_lr_is_a_deprecated_alias_of_lr_dir(scored):
    # `--lr` meant the LR folder in evaluate, check-submission and visualize; `train --lr` is the learning rate.
    # The folder options are `--lr-dir`; `--lr` still works for a release, with one line saying so, unlisted.
    from click.testing import CliRunner

    from insanesr_dist.cli import cli

    args = ["evaluate", "--pred", str(scored / "pred"), "--hr", str(scored / "train/HR")]
    new, old = (CliRunner().invoke(cli, [*args, flag, str(scored / "train/LR")]) for flag in ("--lr-dir", "--lr"))
    assert new.exit_code == old.exit_code == 0, old.output
    assert old.stdout == new.stdout and "bicubic" in new.stdout
    assert new.stderr == "" and old.stderr.splitlines() == [
        "--lr is deprecated and will be removed; use --lr-dir (the same folder)"
    ]
    for command in ("evaluate", "check-submission", "visualize"):
        shown = CliRunner().invoke(cli, [command, "--help"]).output
        assert "--lr-dir" in shown and "--lr " not in shown and "--lr," not in shown, command
    missing = CliRunner().invoke(cli, ["check-submission", str(scored / "pred" / "img_000.png")])
    assert missing.exit_code == 2 and "Missing option '--lr-dir'" in missing.stderr
