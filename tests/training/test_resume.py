"""Continuing a run (training/resume.py) with a larger step budget than it finished with."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from conftest import NO_WORKERS, TINY, run_cli
from insanesr_dist.model.weights import load_model


@pytest.mark.slow
def test_a_max_steps_cut_inside_an_epoch_goes_on_from_there_given_more_steps(pair_folder, tmp_path):
    """--max-steps ending inside an epoch keeps the epoch's place: rerun with a larger --max-steps, the run
    trains the steps in between and ends as a straight run to that budget (constant schedule); it trained no
    step when the cut epoch was recorded as done."""

    def train(out: str, steps: int) -> str:
        result = run_cli(
            *("insanesr-dist", "train", "--data", str(pair_folder), "--output-dir", str(tmp_path / out)),
            *("--epochs", "1", "--max-steps", str(steps), "--schedule", "constant", *NO_WORKERS),
            *TINY,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    with ThreadPoolExecutor(2) as pool:  # independent runs: side by side
        list(pool.map(train, ["straight", "extended"], [4, 2]))
    said = train("extended", 4)
    assert "its budget grows from 2 to 4 steps" in said
    straight, extended = (
        [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        for run in ("straight", "extended")
    )
    assert len(extended) == 1 and extended[0]["step"] == 4
    for key in ("epoch", "step", "train_loss", "jm"):
        assert extended[0][key] == straight[0][key], key
    mine, theirs = (load_model(tmp_path / run / "latest.safetensors").state_dict() for run in ("extended", "straight"))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
