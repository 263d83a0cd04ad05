"""`visualize`: LR (bicubic) | prediction | ground truth panels with captions, from weights or stored predictions."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, make_pair_folder, read_rgb, run_cli
from insanesr_dist.data.images import encode_png
from insanesr_dist.inference.tiles import upscale_image
from insanesr_dist.model.architecture import InsaneSRNet
from insanesr_dist.model.files import save_weights
from insanesr_dist.scoring.submission import write_submission
from insanesr_dist.tools.visualize import MIN_WIDTH, STRIP


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vis")
    make_pair_folder(root, num_train=3, num_test=0, lr_size=(16, 20), seed=9)  # HR 64x80
    torch.manual_seed(0)
    model = InsaneSRNet(num_rrdb=1, channels=8, growth=8, layers_per_block=2).eval()
    save_weights(model, root / "tiny.safetensors")
    return root, model


def test_panels_from_weights_show_lr_prediction_and_truth_with_captions(pairs, tmp_path):
    root, model = pairs
    result = run_cli(
        "insanesr-dist",
        "visualize",
        "--checkpoint",
        str(root / "tiny.safetensors"),
        "--lr-dir",
        str(root / "train/LR"),
        "--hr",
        str(root / "train/HR"),
        "--output-dir",
        str(tmp_path),
        "--limit",
        "2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["img_000.png", "img_001.png"]  # --limit 2, in name order
    zoom = -(-MIN_WIDTH // 80)  # small images are enlarged by pixel repetition
    for name in names:
        figure = read_rgb(tmp_path / name)
        assert figure.shape == (STRIP + 64 * zoom + STRIP, 3 * 80 * zoom, 3)
        lr, hr = read_rgb(root / "train/LR" / name), read_rgb(root / "train/HR" / name)
        sr = upscale_image(model, torch.from_numpy(lr.transpose(2, 0, 1).copy())).permute(1, 2, 0).numpy()
        body = figure[STRIP : STRIP + 64 * zoom]
        shown = [body[::zoom, i * 80 * zoom : (i + 1) * 80 * zoom : zoom] for i in range(3)]
        assert np.array_equal(shown[0], cv2.resize(lr, (80, 64), interpolation=cv2.INTER_CUBIC))
        assert np.abs(shown[1].astype(int) - sr).max() <= 1
        assert np.array_equal(shown[2], hr)
        for strip in (figure[:STRIP], figure[-STRIP:]):  # captions were drawn: light text on the dark strips
            assert (strip.max(-1) > 200).sum() > 100


def test_panels_from_a_submission_csv_without_ground_truth(pairs, tmp_path):
    root, _ = pairs
    rows = [(p.name, encode_png(cv2.resize(read_rgb(p), (80, 64)))) for p in sorted((root / "train/LR").iterdir())]
    write_submission(tmp_path / "sub.csv", rows)
    result = run_cli(
        "insanesr-dist",
        "visualize",
        "--pred",
        str(tmp_path / "sub.csv"),
        "--lr-dir",
        str(root / "train/LR"),
        "--output-dir",
        str(tmp_path / "figs"),
        "--limit",
        "0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = sorted((tmp_path / "figs").iterdir())
    assert len(figures) == 3
    zoom = -(-MIN_WIDTH // 80)
    assert read_rgb(figures[0]).shape == (2 * STRIP + 64 * zoom, 2 * 80 * zoom, 3)  # LR | prediction


def test_weights_and_stored_predictions_together_are_refused(pairs, tmp_path):
    root, _ = pairs
    result = run_cli(
        "insanesr-dist",
        "visualize",
        "--checkpoint",
        str(root / "tiny.safetensors"),
        "--pred",
        str(root / "train/HR"),
        "--lr-dir",
        str(root / "train/LR"),
        "--output-dir",
        str(tmp_path),
    )
    assert_one_line_error(result, "exactly one of --checkpoint")
