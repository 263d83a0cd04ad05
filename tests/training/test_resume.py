"""Continuing a run (training/resume.py) with a larger step budget than it finished with."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from conftest import NO_WORKERS, TINY, run_cli
from insanesr_dist.config import TrainConfig
from insanesr_dist.data.loaders import AUTO_CROPS_PER_DECODE
from insanesr_dist.model.weights import load_model
from insanesr_dist.training.resume import changed_settings


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


def test_only_settings_that_alter_the_result_count_as_changed_and_as_the_run_uses_them():
    saved = TrainConfig(data="d", lr=1e-4, crops_per_decode=AUTO_CROPS_PER_DECODE, num_workers=2).to_dict()
    # An older run saved map-style's automatic crop count as its number; 0 now means the same crops.
    assert changed_settings(saved, TrainConfig(data="d", lr=1e-4, crops_per_decode=0).to_dict()) == []
    assert changed_settings(saved, TrainConfig(data="d", lr=2e-4, crops_per_decode=1).to_dict()) == [
        "crops_per_decode",
        "lr",
    ]
    streamed = {**saved, "streaming": True}  # streaming's 0 crops by each pair's size: another setting
    assert changed_settings(streamed, {**streamed, "crops_per_decode": 0}) == ["crops_per_decode"]
    assert changed_settings({"lr": 1e-4}, {"lr": 1e-4, "shuffle_crops": 64}) == []  # saved before it existed
