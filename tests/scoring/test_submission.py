"""Submission CSVs: written atomically, read back losslessly, and checked before uploading."""

from __future__ import annotations

import base64
import csv

import cv2
import numpy as np
import pytest

from conftest import make_pair_folder, read_rgb, run_cli
from insanesr_dist.data.images import encode_png
from insanesr_dist.scoring.submission import check_submission, read_submission, write_submission


@pytest.fixture(scope="module")
def test_lr(tmp_path_factory):
    """Four LR test images (16x20) and, per id, a 4x image standing in for a prediction."""
    root = make_pair_folder(tmp_path_factory.mktemp("sub"), num_train=0, num_test=4)
    lr_dir = root / "test" / "LR"
    predictions = {
        p.name: cv2.resize(read_rgb(p), (80, 64), interpolation=cv2.INTER_CUBIC) for p in sorted(lr_dir.iterdir())
    }
    return lr_dir, predictions


def write_rows(path, rows, header=("id", "Encoded Image")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_written_submission_reads_back_losslessly_and_passes_the_check(test_lr, tmp_path):
    lr_dir, predictions = test_lr
    path = tmp_path / "nested" / "sub.csv"
    write_submission(path, ((k, encode_png(v)) for k, v in predictions.items()))
    assert [p.name for p in path.parent.iterdir()] == ["sub.csv"]  # no temporary file left behind
    back = read_submission(path)
    assert list(back) == list(predictions)
    assert all(np.array_equal(back[k], v) for k, v in predictions.items())
    assert check_submission(path, lr_dir) == ([], 4)
    result = run_cli("insanesr-dist", "check-submission", str(path), "--lr-dir", str(lr_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK:") and "4 rows" in result.stdout and not result.stderr.strip()


def test_a_missing_row_a_bad_base64_row_and_a_wrong_size_are_one_line_each(test_lr, tmp_path):
    lr_dir, predictions = test_lr
    ids = list(predictions)
    small = cv2.resize(predictions[ids[3]], (40, 32))
    path = write_rows(
        tmp_path / "bad.csv",
        [
            (ids[1], "@@not base64@@"),
            (ids[2], b64(encode_png(predictions[ids[2]]))),
            (ids[3], b64(encode_png(small))),
        ],
    )  # ids[0] has no row
    result = run_cli("insanesr-dist", "check-submission", str(path), "--lr-dir", str(lr_dir))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error:") and "3 problem(s)" in lines[-1]
    problems = lines[:-1]
    assert len(problems) == 3, result.stderr
    assert f"bad.csv:2 (id {ids[1]}): Encoded Image is not valid base64" in problems[0]
    assert f"bad.csv:4 (id {ids[3]}): PNG is 40x32, expected 80x64" in problems[1]
    assert problems[2].endswith(f"missing row for {lr_dir / ids[0]}")


def _rgba(image):
    return cv2.imencode(".png", np.dstack([image, np.full(image.shape[:2], 255, np.uint8)]))[1].tobytes()


@pytest.mark.parametrize(
    "case,expected",
    [
        ("extra column", "has 3 columns, expected 2"),
        ("unknown id", "extra row, no LR image stray.png"),
        ("duplicate id", "duplicate row, id already on line 2"),
        ("jpeg", "not a PNG"),
        ("truncated png", "damaged PNG"),
        ("gray png", "1 channel(s) of uint8, expected 3"),
        ("rgba png", "4 channel(s) of uint8, expected 3"),
        ("16-bit png", "3 channel(s) of uint16"),
        ("empty id", "row has no id"),
        ("header", "header is id,image"),
    ],
)
def test_every_kind_of_problem_is_named(case, expected, test_lr, tmp_path):
    lr_dir, predictions = test_lr
    rows = [[k, b64(encode_png(v))] for k, v in predictions.items()]
    header = ("id", "Encoded Image")
    image = predictions[rows[1][0]]
    if case == "extra column":
        rows[1].append("x")
    elif case == "unknown id":
        rows.append(["stray.png", rows[0][1]])
    elif case == "duplicate id":
        rows.append(list(rows[0]))
    elif case == "jpeg":
        rows[1][1] = b64(cv2.imencode(".jpg", image)[1].tobytes())
    elif case == "truncated png":
        rows[1][1] = b64(encode_png(image)[:200])
    elif case == "gray png":
        rows[1][1] = b64(cv2.imencode(".png", image[..., 0])[1].tobytes())
    elif case == "rgba png":
        rows[1][1] = b64(_rgba(image))
    elif case == "16-bit png":
        rows[1][1] = b64(cv2.imencode(".png", image.astype(np.uint16) * 257)[1].tobytes())
    elif case == "empty id":
        rows.append(["", rows[0][1]])
    elif case == "header":
        header = ("id", "image")
    problems, _ = check_submission(write_rows(tmp_path / "s.csv", rows, header), lr_dir)
    assert len(problems) == 1 and expected in problems[0], problems


def test_a_wrong_size_is_read_from_the_png_header_without_decoding(test_lr, tmp_path, monkeypatch):
    from insanesr_dist.scoring import submission

    lr_dir, predictions = test_lr
    rows = [[k, b64(encode_png(v))] for k, v in predictions.items()]
    wrong = encode_png(cv2.resize(predictions[rows[2][0]], (81, 64)))
    rows[2][1] = b64(wrong)
    decoded = []
    real = submission.cv2.imdecode
    monkeypatch.setattr(
        submission.cv2, "imdecode", lambda data, flags: decoded.append(bytes(data)) or real(data, flags)
    )
    problems, _ = check_submission(write_rows(tmp_path / "s.csv", rows), lr_dir)
    assert len(problems) == 1 and "PNG is 81x64, expected 80x64 (4x the 20x16 LR)" in problems[0], problems
    assert wrong not in decoded and len(decoded) == 4 + 3  # the LR images and the rows of the right size
