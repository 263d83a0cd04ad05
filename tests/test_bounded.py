"""Issue 14, bounded memory: `check-data` holds one file at a time, and an image whose header declares more
than INSANESR_MAX_PIXELS pixels is refused from that header, before any decoding, by every command that reads
images (a 20000x20000 PNG of a few hundred bytes would otherwise take 1.2 GB and a minute to decode).

Issue 25: the checking commands with their default options import neither torch nor datasets."""

from __future__ import annotations

import base64
import csv
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from bad_data import bomb_png
from conftest import assert_one_line_error, make_pair_folder, read_rgb, run_cli
from insanesr_dist.config import TrainConfig
from insanesr_dist.data import images as samples
from insanesr_dist.data.images import encode_png
from insanesr_dist.model.architecture import InsaneSRNet
from insanesr_dist.model.files import save_weights
from insanesr_dist.tools import check_data

BOMB = "20000x20000 (400,000,000 pixels), above the limit of 268,435,456 pixels"
MB = 1024  # ru_maxrss is in KiB on Linux

# Runs a command and writes its peak RSS (KiB) and wall time to argv[1]: getrusage(RUSAGE_CHILDREN) of a
# fresh process sees only that command, not every child this pytest process started before.
MEASURED = """
import resource, subprocess, sys, time
start = time.monotonic()
code = subprocess.run(sys.argv[2:], timeout=120).returncode
open(sys.argv[1], "w").write(f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss} {time.monotonic() - start}")
sys.exit(code)
"""


def run_measured(tmp_path: Path, *args: str):
    """run_cli of an insanesr-dist command; also its peak RSS in MiB and its wall time in seconds."""
    exe = str(Path(sys.executable).parent / "insanesr-dist")
    report = tmp_path / "measured.txt"
    result = run_cli(sys.executable, "-c", MEASURED, str(report), exe, *args, timeout=180)
    rss, seconds = report.read_text().split()
    return result, int(rss) / MB, float(seconds)


@pytest.fixture()
def lr_folder(tmp_path):
    return make_pair_folder(tmp_path / "d", num_train=0, num_test=2)


def _csv(path: Path, rows: list[tuple[str, bytes]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(("id", "Encoded Image"))
        writer.writerows((i, base64.b64encode(png).decode("ascii")) for i, png in rows)
    return path


def test_check_data_reads_judges_and_drops_one_file_at_a_time(tmp_path, monkeypatch):
    root = make_pair_folder(tmp_path / "d", num_train=4, num_test=2)
    events = []
    real_read, real_decode = Path.read_bytes, samples.decode_image
    monkeypatch.setattr(Path, "read_bytes", lambda self: events.append("read") or real_read(self))
    monkeypatch.setattr(check_data, "decode_image", lambda *a, **k: events.append("decode") or real_decode(*a, **k))
    assert check_data.run_check(str(root), patch_size=8, on_bad_sample="error", echo=lambda line: None)
    assert events == ["read", "decode"] * 10  # never a second file read before the first is judged


def test_check_data_refuses_a_bomb_from_its_header_in_little_memory(tmp_path):
    root = make_pair_folder(tmp_path / "d", num_train=3, num_test=0)
    bomb = root / "train" / "HR" / "img_001.png"
    bomb.write_bytes(bomb_png())
    result, rss, seconds = run_measured(tmp_path, "check-data", str(root), "--patch-size", "8")
    assert_one_line_error(result, "training would stop")
    lines = [line for line in result.stdout.splitlines() if line.startswith(f"{bomb}: image is {BOMB}")]
    assert len(lines) == 1, result.stdout
    assert rss < 300 and seconds < 30, (rss, seconds)  # decoding it would take 1.2 GB


def test_check_submission_reports_a_wrong_size_from_the_header_of_a_bomb(lr_folder, tmp_path):
    lr_dir = lr_folder / "test" / "LR"
    good = encode_png(cv2.resize(read_rgb(lr_dir / "img_000.png"), (80, 64)))
    path = _csv(tmp_path / "s.csv", [("img_000.png", good), ("img_001.png", bomb_png())])
    result, rss, seconds = run_measured(tmp_path, "check-submission", str(path), "--lr-dir", str(lr_dir))
    assert_one_line_error(result, "1 problem(s)")
    assert "s.csv:3 (id img_001.png): PNG is 20000x20000, expected 80x64 (4x the 20x16 LR)" in result.stderr
    assert rss < 300 and seconds < 30, (rss, seconds)  # the issue measured 3.0 GB and 72 s


@pytest.fixture(scope="module")
def div2k_sized(tmp_path_factory) -> Path:
    """A few pairs of DIV2K's size (HR 2040x1344, LR 510x336) and test images, with a valid submission CSV."""
    root = make_pair_folder(tmp_path_factory.mktemp("div2k"), num_train=4, num_test=2, lr_size=(336, 510))
    rows = [(p.name, encode_png(cv2.resize(read_rgb(p), (2040, 1344)))) for p in sorted((root / "test/LR").iterdir())]
    _csv(root / "submission.csv", rows)
    return root


def test_check_data_with_default_options_stays_light(div2k_sized, tmp_path):
    # Without --patch-size the command reads training's default from TrainConfig, which must not bring torch.
    result, rss, seconds = run_measured(tmp_path, "check-data", str(div2k_sized))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.splitlines()[-1]
    assert "4 usable" in summary and f"--patch-size {TrainConfig().patch_size})" in summary, summary
    assert rss < 300 and seconds < 30, (rss, seconds)  # torch alone (TrainConfig -> ModelConfig) is more


def test_check_submission_with_default_options_stays_light(div2k_sized, tmp_path):
    csv_path, lr_dir = div2k_sized / "submission.csv", div2k_sized / "test" / "LR"
    result, rss, seconds = run_measured(tmp_path, "check-submission", str(csv_path), "--lr-dir", str(lr_dir))
    assert result.returncode == 0 and result.stdout.startswith("OK:"), result.stdout + result.stderr
    assert rss < 300 and seconds < 30, (rss, seconds)


def test_the_limit_is_set_by_the_environment_and_a_bad_value_is_one_line(lr_folder, tmp_path, monkeypatch):
    lr_dir = lr_folder / "test" / "LR"
    rows = [(p.name, encode_png(cv2.resize(read_rgb(p), (80, 64)))) for p in sorted(lr_dir.iterdir())]
    path = _csv(tmp_path / "s.csv", rows)
    args = ("check-submission", str(path), "--lr-dir", str(lr_dir))
    monkeypatch.setenv("INSANESR_MAX_PIXELS", "5000")  # run_cli passes this process's environment on
    limited = run_cli("insanesr-dist", *args, timeout=120)
    assert_one_line_error(limited, "2 problem(s)")  # 80x64 is 5120 pixels; the 20x16 LR images pass
    assert "PNG image is 80x64 (5,120 pixels), above the limit of 5,000 pixels" in limited.stderr
    monkeypatch.setenv("INSANESR_MAX_PIXELS", "5120")
    assert run_cli("insanesr-dist", *args, timeout=120).returncode == 0
    monkeypatch.setenv("INSANESR_MAX_PIXELS", "1e9")
    for command in (args, ("check-data", str(lr_folder))):
        bad = run_cli("insanesr-dist", *command, timeout=120)
        assert_one_line_error(bad, "INSANESR_MAX_PIXELS: must be a positive whole number of pixels, got '1e9'")


@pytest.mark.slow
def test_predict_and_evaluate_refuse_a_bomb_in_one_line(lr_folder, tmp_path):
    lr_dir = lr_folder / "test" / "LR"
    (lr_dir / "img_001.png").write_bytes(bomb_png())
    torch.manual_seed(0)
    save_weights(InsaneSRNet(num_rrdb=1, channels=8, growth=8, layers_per_block=2), tmp_path / "w.safetensors")
    predicted = run_cli(
        "insanesr-dist",
        "predict",
        "--checkpoint",
        str(tmp_path / "w.safetensors"),
        "--input",
        str(lr_dir),
        "--csv",
        str(tmp_path / "s.csv"),
        timeout=300,
    )
    assert_one_line_error(predicted, f"{lr_dir / 'img_001.png'}: image is {BOMB}")
    hr = tmp_path / "hr"
    hr.mkdir()
    (hr / "img_001.png").write_bytes(encode_png(np.zeros((64, 80, 3), np.uint8)))
    evaluated = run_cli("insanesr-dist", "evaluate", "--pred", str(lr_dir), "--hr", str(hr), timeout=300)
    assert_one_line_error(evaluated, f"{lr_dir / 'img_001.png'}: image is {BOMB}")
