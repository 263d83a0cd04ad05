"""`insanesr-dist bench train/data/metric` (benchmarks/bench.py): real runs on a small folder, their figures
consistent with each other; and the command outside a checkout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench_stages import STAGES, call_command, training_flops_per_lr_pixel
from conftest import assert_one_line_error, run_cli, run_tree
from insanesr_dist.model.architecture import InsaneSRNet
from insanesr_dist.tools.children import failure_line


def test_bench_runs_the_checkout_s_script_with_its_help_and_exit_status():
    result = run_cli("insanesr-dist", "bench", "--help", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("Usage: insanesr-dist bench [OPTIONS] COMMAND")
    assert all(f"  {name} " in result.stdout for name in ("train", "data", "metric", "predict", "ema"))
    result = run_cli("insanesr-dist", "bench", "no-such-bench", timeout=120)
    assert result.returncode == 2 and "No such command 'no-such-bench'" in result.stderr


@pytest.mark.parametrize("command", ["train", "data", "metric", "predict", "ema"])
def test_every_bench_command_has_documented_options_and_maps_user_errors(command):
    import click
    from click.testing import CliRunner

    import bench
    from insanesr_dist.commands import Command

    sub = bench.bench.commands[command]
    assert isinstance(sub, Command)
    assert [p.name for p in sub.params if isinstance(p, click.Option) and not p.help] == []
    result = CliRunner().invoke(bench.bench, [command, "--help"], prog_name="insanesr-dist bench")
    assert result.exit_code == 0 and f"Usage: insanesr-dist bench {command}" in result.output


def test_an_installed_package_without_the_scripts_says_so_in_one_line(tmp_path):
    import shutil
    import sys

    import insanesr_dist

    site = tmp_path / "site-packages"  # the package alone, as a wheel installs it: no benchmarks/ beside it
    shutil.copytree(Path(insanesr_dist.__file__).parent, site / "insanesr_dist")
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = run_tree([sys.executable, "-m", "insanesr_dist", "bench", "train"], cwd=tmp_path, env=env, timeout=120)
    assert_one_line_error(result, "the benchmarks run from a source checkout")


def bench_json(*args: str) -> dict:
    result = run_cli("insanesr-dist", "bench", *args, "--json", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_every_stage_bench_names_is_in_the_table():
    import ast
    import inspect

    import bench

    calls = [
        node
        for node in ast.walk(ast.parse(inspect.getsource(bench)))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_run_stage"
    ]
    named = {call.args[1].value if len(call.args) > 1 else "predict" for call in calls}
    assert len(named) == 8 and named <= set(STAGES) and all(callable(f) for f in STAGES.values())


def test_a_failed_child_is_told_by_its_last_stderr_line():
    assert (
        failure_line("warming up\nTraceback (most recent call last):\n  ...\nKeyError: 'threads'\n")
        == "KeyError: 'threads'"
    )
    assert failure_line("  \n") == "(no output)" and failure_line("", "no output") == "no output"


def test_a_stage_runs_by_its_name_in_a_child_and_a_failed_one_is_its_last_line():
    import subprocess

    command = call_command("bench_stages", "STAGES", "ema_update", {"threads": 1})
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and failure_line(result.stderr) == "KeyError: 'warmup'"


def test_training_flops_match_the_hand_count():
    # Issue 5's figure: 3.78 M multiply-adds per LR pixel forward -> 22.7 MFLOP per LR pixel per training step.
    assert training_flops_per_lr_pixel(InsaneSRNet()) == pytest.approx(22.7e6, rel=1e-3)


@pytest.mark.slow
def test_bench_train_measures_every_stage_and_its_ratios(pair_folder):
    report = bench_json(
        "train",
        "--data",
        str(pair_folder),
        "--batch-size",
        "4",
        "--patch-size",
        "8",
        "--steps",
        "5",
        "--warmup",
        "1",
        "--mixed-precision",
        "no",
    )
    assert report["precision"] == "no" and report["batch_size"] == 4
    ceiling = report["ceiling_tflops"]
    assert ceiling["fp32"] > 0 and ceiling["bf16"] > 0
    flops_per_sample = 22.7e6 * 8 * 8
    for stage in ("baseline", "bare", "toolkit"):
        r = report[stage]
        assert r["samples_per_s"] > 0
        assert r["tflops"] == pytest.approx(r["samples_per_s"] * flops_per_sample / 1e12, rel=1e-3)
        assert r["percent_of_bf16_ceiling"] == pytest.approx(100 * r["tflops"] / ceiling["bf16"])
    # The toolkit's figure is its own: read back from the training run's TensorBoard log.
    assert report["toolkit"]["intervals"] >= 1
    ratios = report["ratios"]
    toolkit = report["toolkit"]["samples_per_s"]
    assert ratios["toolkit_over_baseline"] == pytest.approx(toolkit / report["baseline"]["samples_per_s"])
    assert ratios["toolkit_overhead_percent"] == pytest.approx(100 * (1 - toolkit / report["bare"]["samples_per_s"]))
    assert ratios["data_headroom_per_worker"] == pytest.approx(report["data_pipeline"]["store_crops_per_s"] / toolkit)


def test_bench_data_reports_the_store_and_the_paths_without_it(pair_folder):
    r = bench_json("data", "--data", str(pair_folder), "--batch-size", "4", "--patch-size", "8", "--crops", "64")
    assert r["pairs"] == 23 and r["store_gb"] == pytest.approx(23 * 16 * 20 * 3 * 17 / 1e9)
    for key in (
        "build_seconds_1",
        "build_seconds_2",
        "reopen_seconds",
        "startup_seconds",
        "store_crops_per_s",
        "decode_crops_per_s",
        "cached_crops_per_s",
        "peak_rss_mb",
        "peak_worker_rss_mb",
    ):
        assert r[key] > 0, key
    assert r["gpu_samples_per_s"][1] == pytest.approx(2.5 * r["gpu_samples_per_s"][0])


def test_bench_metric_agrees_with_scikit_image(pair_folder):
    result = bench_json("metric", "--data", str(pair_folder))
    assert result["images"] == 3  # the validation split of 23 pairs
    assert result["ours_images_per_s"] > 0 and result["skimage_images_per_s"] > 0
    assert result["max_abs_difference"] < 1e-12


def test_bench_predict_json_has_both_speeds():
    report = bench_json(
        "predict", "--size", "32", "--untiled-size", "16", "--tile", "16", "--tile-overlap", "4", "--threads", "1"
    )
    for key, size in (("tiled", 32), ("untiled", 16)):
        run = report[key]
        assert run["lr_megapixels_per_s"] == pytest.approx(size * size / 1e6 / run["seconds"])
        assert run["peak_rss_mb"] > 50


def test_bench_ema_times_both_updates_on_the_default_model():
    report = bench_json("ema", "--updates", "3", "--warmup", "1", "--threads", "1")
    assert report["tensors"] > 100 and report["per_tensor_ms"] > 0 and report["foreach_ms"] > 0
