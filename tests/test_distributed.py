"""Real multi-process runs: `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo DDP)."""

import json

import pytest

from conftest import TINY, accelerate_launch, independent_val_jm, run_cli
from insanesr_dist.scoring.submission import read_submission

pytestmark = pytest.mark.slow


def launch_two(*args: str):
    return run_cli(*accelerate_launch(2, *args))


def test_two_process_ddp_gathers_every_image_once(pair_folder, tmp_path):
    # 23 pairs -> 3 validation and 3 test images: uneven shards over 2 ranks.
    out = tmp_path / "ddp"
    result = launch_two(
        "--data",
        str(pair_folder),
        "--epochs",
        "2",
        "--output-dir",
        str(out),
        "--store-dir",
        str(tmp_path / "store"),
        *TINY,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "2 process(es)" in result.stdout
    # One decoded store, built once (a process that decodes says so, whichever rank it is) and used by both.
    assert result.stdout.count("pairs checked: decoded in") == 1, result.stdout
    assert len([p for p in (tmp_path / "store").iterdir() if not p.name.startswith(".")]) == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["images"] == 3 for r in records)
    # The gathered validation JM equals a single-process evaluation of the same weights.
    assert independent_val_jm(out / "latest.safetensors", pair_folder) == pytest.approx(records[-1]["jm"], abs=1e-9)
    test_ids = sorted(p.name for p in (pair_folder / "test" / "LR").iterdir())
    for csv_path in (out / "submissions").iterdir():
        assert sorted(read_submission(csv_path)) == test_ids  # read_submission rejects duplicate ids


def test_two_process_streaming_trains_by_steps(pair_folder, tmp_path):
    out = tmp_path / "stream"
    result = launch_two(
        "--data",
        str(pair_folder),
        "--streaming",
        "--max-steps",
        "6",
        "--epochs",
        "2",
        "--num-workers",
        "2",
        "--output-dir",
        str(out),
        *TINY,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6]
    assert (out / "best.safetensors").is_file()
