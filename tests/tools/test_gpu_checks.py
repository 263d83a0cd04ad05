"""launch/gpu_checks.sh: what runs without a GPU (the refusal, the checks' plumbing on the CPU, the table)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import assert_one_line_error
from insanesr_dist.tools.gpu_checks import _run_child, markdown_table, per_step_syncs

SCRIPT = Path(__file__).resolve().parents[2] / "launch" / "gpu_checks.sh"
TINY_MODEL = {"num_rrdb": 1, "channels": 8, "growth": 8, "layers_per_block": 2, "patch_size": 8}


def test_the_script_refuses_in_one_line_without_a_gpu():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # none visible, also on a machine that has one
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120, env=env)
    assert_one_line_error(result, "need a CUDA GPU and none is visible")
    assert result.stdout == ""


def test_syncs_count_per_step_only_after_warm_up_and_outside_epoch_ends():
    hits = [
        (1, "train", "a"),
        (7, "train", "b"),
        (9, "train", "c"),
        (9, "epoch end", "d"),
        (0, "setup", "e"),
        (12, "train", "f"),
    ]
    assert per_step_syncs(hits, epoch_ends={9}, warmup=5) == [(7, "train", "b"), (12, "train", "f")]


def test_the_nan_check_passes_on_the_cpu_and_renders_as_a_table():
    from insanesr_dist.tools.gpu_checks import _rows_nan

    result = _run_child("nan_step", {"device": "cpu"}, timeout=300)
    rows = _rows_nan(result)
    assert [row[3] for row in rows] == ["ok", "ok"], rows
    table = markdown_table(rows).splitlines()
    assert table[0] == "| check | setting | result | verdict |" and len(table) == 4
    assert "scale 65536 -> 32768" in table[3]


def test_the_training_and_jm_checks_run_end_to_end_on_the_cpu(pair_folder, tmp_path):
    spec = {
        "out": str(tmp_path / "run"),
        "precision": "bf16",
        "steps": 12,
        "warmup": 2,
        "data": str(pair_folder),
        "config": TINY_MODEL,
    }
    sync = _run_child("sync_debug", spec, timeout=600)
    # 20 training pairs, batch 4: 5 steps per epoch, so 12 steps end 2 epochs and a third (at step 12)
    assert sync["steps"] == 12 and sync["epoch_ends"] == 3 and sync["per_step_syncs"] == 0, sync
    jm = _run_child(
        "ieee_vs_tf32", {"weights": str(tmp_path / "run" / "latest.safetensors"), "data": str(pair_folder)}, timeout=300
    )
    assert jm["images"] == 3 and jm["model"].endswith("latest.safetensors"), jm
    assert jm["jm_ieee"] == jm["jm_tf32"] and jm["max_abs_sr_difference"] == 0  # TF32 is a GPU matter


def test_one_table_row_per_check_from_the_children_results(monkeypatch):
    # The GPU run's path through main(), with the children's results as they would come back.
    from click.testing import CliRunner

    from insanesr_dist.tools import gpu_checks

    nan = {
        "channels_last_grads": True,
        "weights_unchanged": True,
        "moments_unchanged": True,
        "counted": 1,
        "next_step_updates": True,
    }
    results = {
        "nan_step": {"found_inf": {**nan, "scale": None}, "gradscaler": {**nan, "scale": [65536.0, 32768.0]}},
        "sync_debug": {
            "steps": 300,
            "warmup": 50,
            "per_step_syncs": 2,
            "steps_with_syncs": 1,
            "epoch_ends": 7,
            "other_syncs": 40,
            "where": [["train.py:1", 2]],
            "seconds": 30.0,
        },
        "ieee_vs_tf32": {"model": "w", "images": 20, "jm_ieee": 41.25, "jm_tf32": 41.2, "max_abs_sr_difference": 1e-3},
        "device_store": {"on": {"samples_per_s": 3000.0}, "off": {"samples_per_s": 1200.0}},
    }
    bench = {
        "compile": True,
        "bare": {"samples_per_s": 900.0, "first_step_s": 40.0},
        "toolkit": {"samples_per_s": 800.0, "tflops": 19.0, "percent_of_bf16_ceiling": 3.0},
        "ratios": {"toolkit_overhead_percent": 11.1},
    }
    monkeypatch.setattr(gpu_checks, "require_cuda", lambda: "NVIDIA H200")
    monkeypatch.setattr(gpu_checks, "_run_child", lambda name, spec, timeout: results[name])
    monkeypatch.setattr(gpu_checks, "_run_json", lambda command, timeout: bench)
    result = CliRunner().invoke(gpu_checks.main, [])
    assert result.exit_code == 1, result.output  # the per-step syncs fail the run
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "verdict" not in line]
    assert len(rows) == 2 + 2 + 1 + 1 + 8
    assert sum("| FAIL |" in row for row in rows) == 2 and "train.py:1 x2" in rows[2]
    assert "IEEE 41.2500, TF32 41.2000 (delta +0.0500)" in rows[4]
    assert "3000 vs 1200 samples/s (2.50x)" in rows[5]
    assert sum("bench train" in row for row in rows) == 8 and "first bare step 40.0 s" in rows[-1]


def test_a_check_over_its_time_is_cut_off_with_its_children(tmp_path):
    from insanesr_dist.tools.gpu_checks import _run_json

    marker = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])"
        f"; open({str(marker)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    assert _run_json([sys.executable, "-c", code], timeout=20) == {"error": "cut off after 20 s (time budget)"}
    pid = int(marker.read_text())
    time.sleep(1)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
