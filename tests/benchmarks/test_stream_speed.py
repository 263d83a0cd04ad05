"""`insanesr-dist bench data --streaming`: the streaming path's first batch and crops/s of one worker."""

from __future__ import annotations

import json

from conftest import run_cli
from stream_data import make_pairs, write_parquet


def test_bench_data_streaming_reports_one_workers_crops_per_second(tmp_path):
    for s in range(2):
        write_parquet(tmp_path / f"train-{s}.parquet", make_pairs(8, first=8 * s))
    result = run_cli(
        "insanesr-dist", "bench", "data", "--streaming", "--data", str(tmp_path), "--patch-size", "8",
        "--batch-size", "4", "--crops", "64", "--crops-per-decode", "3", "--shuffle-crops", "12", "--json",
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    assert (measured["crops_per_decode"], measured["shuffle_crops"]) == (3, 12)
    assert measured["crops_per_s"] > 0 and measured["first_batch_seconds"] > 0
    assert measured["skipped"] == {"bad": 0, "unreadable": 0} and "parquet files" in measured["source"]


def test_stream_settings_without_streaming_are_one_line(tmp_path):
    result = run_cli("insanesr-dist", "bench", "data", "--crops-per-decode", "3", timeout=60)
    assert result.returncode == 2 and "add --streaming" in result.stderr and "Traceback" not in result.stderr
