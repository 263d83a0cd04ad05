"""`insanesr-dist bench stream-training` at a tiny size: real training runs over served shards, its figures sane."""

from __future__ import annotations

import json

import pytest

from conftest import TINY, run_cli
from stream_training import describe


# Four real `accelerate launch` training runs (a checkpoint run, a fresh run on each set, a resumed run): about
# 8 s each on two idle cores, the floor of a benchmark that measures real processes.
@pytest.mark.slow
def test_bench_stream_training_reports_sane_figures(tmp_path):
    patch_and_batch = TINY[TINY.index("--patch-size") : TINY.index("--batch-size") + 2]
    result = run_cli(
        "insanesr-dist", "bench", "stream-training", "--pairs", "4", "--copies", "2", "--hr-size", "32x32",
        "--shard-mb", "0.004", "--steps", "2", "--resume-steps", "1", "--repeats", "1", *patch_and_batch,
        "--work-dir", str(tmp_path / "work"), "--run-timeout", "60", "--json", timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout)
    assert measured["set"]["pairs"] == 4 and measured["set"]["large_pairs"] == 8
    assert measured["set"]["large_shards"] == 2 * measured["set"]["shards"] >= 2
    # a pass of 8 pairs of 32x32 HR, 1 crop each by size (HR crops of 32x32), 4 a batch: 2 steps; resumed at 90 %
    assert (measured["pass_steps"], measured["resume_step"]) == (2, 1)
    runs = measured["runs"]
    assert sorted((r["kind"], r["pairs"]) for r in runs) == [("fresh", 4), ("fresh", 8), ("resumed", 8)]
    for run in runs:
        assert 0 < run["first_step_s"] < run["seconds"]
        assert 0 < run["bytes_before_first_step"] <= run["bytes_total"]
        assert run["peak_tree_rss_mb"] > 100  # a training process and its DataLoader worker at least
        assert run["hf_home_bytes"] < 2**20  # no copy of the set (a few KB of datasets' bookkeeping at most)
    assert next(r for r in runs if r["kind"] == "resumed")["first_step"] == measured["resume_step"] + 1
    (row,) = measured["summary"]["per_repeat"]
    assert all(value > 0 for value in row.values())
    # the table: a line per figure, each with a value per repeat
    table = describe(measured).splitlines()
    assert table[0].startswith("bench stream-training: ") and "--streaming" in table[1]
    for label in ("1. first step, 4 pairs", "2. MB fetched", "3. first step resumed at step 1/2", "4. peak RSS"):
        assert any(line.startswith(label) for line in table), label
    assert sum(line.strip().startswith("ratio") for line in table) == 4
