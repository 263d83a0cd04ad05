"""launch/gpu_checks.sh: what runs without a GPU (the refusal, the checks' plumbing on the CPU, the budget's
shares, the verdicts, the exit code and the table)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

import gpu_checks
from conftest import assert_one_line_error, run_tree
from gpu_checks import (
    CHECKS_RUN,
    DEFAULT_BUDGET_S,
    MIN_CHECK_S,
    Check,
    Context,
    Row,
    caps,
    exit_code,
    last_json_document,
    markdown_table,
    per_step_syncs,
    run_all,
    selected,
)

SCRIPT = Path(__file__).resolve().parents[2] / "launch" / "gpu_checks.sh"
TINY_MODEL = {"num_rrdb": 1, "channels": 8, "growth": 8, "layers_per_block": 2, "patch_size": 8}
OPTIONS = [set(), {"--compile"}, {"--extra"}, {"--compile", "--extra"}]


def test_the_script_refuses_in_one_line_without_a_gpu():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # none visible, also on a machine that has one
    result = run_tree(["bash", str(SCRIPT)], timeout=120, env=env)
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
        (13, "train", "cadence.py:48"),  # the periodic preemption/checkpoint read: on purpose, not per step
    ]
    assert per_step_syncs(hits, epoch_ends={9}, warmup=5) == [(7, "train", "b"), (12, "train", "f")]


# ---------------------------------------------------------------------------------------------
# The budget


def test_the_default_rows_fill_the_default_budget_with_the_important_ones_first():
    default = selected(CHECKS_RUN, set())
    assert sum(check.share for check in default) == DEFAULT_BUDGET_S
    assert caps([check.share for check in default], DEFAULT_BUDGET_S) == [check.share for check in default]
    assert all(check.share >= MIN_CHECK_S for check in CHECKS_RUN)
    # The default rows run before every optional one; the rows that matter are all there.
    assert [check.option for check in CHECKS_RUN[: len(default)]] == [None] * len(default)
    settings = [(check.name, check.setting) for check in default]
    assert [s for n, s in settings if n.startswith("no per-step sync")] == [
        "fp16, device store on, panels on (4), batch 4",
        "bf16, device store off, panels on (4), batch 4",
    ]
    assert [s.split(", ")[:3] for n, s in settings if n == "bench train"] == [
        ["fp16", "channels-last", "eager"],
        ["bf16", "channels-last", "eager"],
    ]
    assert {n for n, _ in settings} >= {
        "NaN gradient skipped by fused Adam",
        "validation JM, IEEE vs TF32 convolutions",
    }
    compiled = [check for check in CHECKS_RUN if "compile," in check.setting]
    assert len(compiled) == 2 and {check.option for check in compiled} == {"--compile"}


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "+".join(sorted(o)) or "default")
def test_the_caps_never_sum_to_more_than_the_budget(options):
    shares = [check.share for check in selected(CHECKS_RUN, options)]
    for budget in range(60, 5001):
        given = caps(shares, budget)
        assert sum(given) <= budget and min(given) >= 0, budget
        assert sum(given) > budget - len(shares)  # rounded down, and only that
    # Without --budget-s, optional rows bring their own shares: the default rows keep theirs.
    assert caps(shares, sum(shares)) == shares


# ---------------------------------------------------------------------------------------------
# Verdicts and the exit code


def rows_of(*verdicts: str) -> list[Row]:
    return [Row(f"check {i}", "setting", "result", verdict) for i, verdict in enumerate(verdicts)]


@pytest.mark.parametrize(
    "verdicts, code",
    [
        (("ok", "info", "ok"), 0),
        (("ok", "not run", "info", "not run"), 0),  # a row not run is not a failure
        (("not run",), 0),
        ((), 0),
        (("ok", "FAIL", "info"), 1),
        (("FAIL", "not run"), 1),
    ],
)
def test_the_exit_code_is_0_when_every_row_that_ran_passed(verdicts, code):
    assert exit_code(rows_of(*verdicts)) == code


def test_an_unknown_verdict_is_a_bug_not_a_pass():
    with pytest.raises(ValueError, match="skipped"):
        exit_code(rows_of("ok", "skipped"))


def sync_result(**changes) -> dict:
    return {
        "steps": 300,
        "warmup": 50,
        "per_step_syncs": 0,
        "steps_with_syncs": 0,
        "epoch_ends": 7,
        "other_syncs": 40,
        "where": [],
        "device_store": "on",
        "device_batches": 300,
        "panels": [4, 28],
        "seconds": 30.0,
        **changes,
    }


def test_a_sync_row_fails_on_a_per_step_sync_on_the_other_store_path_or_without_panels():
    from gpu_checks import _rows_sync

    check = CHECKS_RUN[0]

    def verdict(**changes) -> tuple[str, str]:
        (row,) = _rows_sync(check, sync_result(**changes))
        return row.verdict, row.result

    assert verdict()[0] == "ok"
    assert "300 batches cut on the device; panels: 28 images of 4 validation images" in verdict()[1]
    failed, result = verdict(per_step_syncs=3, steps_with_syncs=2, where=[["losses.py:12", 3]])
    assert failed == "FAIL" and "3 sync warnings in steps 51-300 (2 steps; at: losses.py:12 x3)" in result
    failed, result = verdict(device_batches=0)  # the store was asked for, the workers cut the crops
    assert failed == "FAIL" and "(device store on was asked for)" in result
    assert verdict(device_store="off", device_batches=0)[0] == "ok"
    assert verdict(device_store="off")[0] == "FAIL"
    assert verdict(panels=[0, 0])[0] == "FAIL"
    (row,) = _rows_sync(check, {"error": "cut off after 110 s (its share of the time budget)"})
    assert row == Row(check.name, check.setting, "cut off after 110 s (its share of the time budget)", "FAIL")


# ---------------------------------------------------------------------------------------------
# The run: which checks run, with which limits, and the rows they give


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


NAN = {
    "channels_last_grads": True,
    "weights_unchanged": True,
    "moments_unchanged": True,
    "counted": 1,
    "next_step_updates": True,
}
RESULTS = {
    "nan_step": {"found_inf": {**NAN, "scale": None}, "gradscaler": {**NAN, "scale": [65536.0, 32768.0]}},
    "sync_debug": sync_result(),
    "ieee_vs_tf32": {"model": "w", "images": 20, "jm_ieee": 41.25, "jm_tf32": 41.2, "max_abs_sr_difference": 1e-3},
    "device_store": {"on": {"samples_per_s": 3000.0}, "off": {"samples_per_s": 1200.0}},
}
BENCH = {
    "compile": False,
    "bare": {"samples_per_s": 900.0, "first_step_s": 40.0},
    "toolkit": {"samples_per_s": 800.0, "tflops": 19.0, "percent_of_bf16_ceiling": 3.0},
    "ratios": {"toolkit_overhead_percent": 11.1},
}


@pytest.fixture
def fake_children(monkeypatch):
    """The children's results as a GPU run gives them, each taking `seconds[name]` of a fake clock (a child over
    its limit is cut off there, unless it is in `late`: then it ends that late, as a process slow to die could);
    the calls made, as (name, spec or command, limit)."""
    clock, calls, seconds, results, late = FakeClock(), [], {}, {**RESULTS}, set()

    def took(name, timeout) -> dict | None:
        wanted = seconds.get(name, 5)
        clock.now += wanted if wanted <= timeout or name in late else timeout
        return {"error": f"cut off after {timeout:.0f} s (its share of the time budget)"} if wanted > timeout else None

    def child(name, spec, timeout):
        calls.append((name, spec, timeout))
        if cut := took(name, timeout):
            return cut
        if store := spec.get("device_store"):
            return {**results[name], "device_store": store, "device_batches": 300 if store == "on" else 0}
        return results[name]

    def command(command, timeout, parse):
        calls.append(("bench", command, timeout))
        return took("bench", timeout) or {**BENCH, "compile": "--compile" in command}

    monkeypatch.setattr(gpu_checks, "clock", clock)
    monkeypatch.setattr(gpu_checks, "_run_child", child)
    monkeypatch.setattr(gpu_checks, "_run_json", command)
    return clock, calls, seconds, results, late


def test_the_default_run_gives_every_row_and_says_why_the_optional_ones_did_not_run(fake_children, tmp_path):
    _, calls, *_ = fake_children
    rows = run_all(CHECKS_RUN, DEFAULT_BUDGET_S, set(), Context(str(tmp_path), None, 300, 50), print)
    assert [name for name, *_ in calls] == ["sync_debug", "sync_debug", "nan_step", "ieee_vs_tf32", "bench", "bench"]
    assert [(spec["precision"], spec["device_store"], spec["steps"]) for name, spec, _ in calls[:2]] == [
        ("fp16", "on", 300),
        ("bf16", "off", 300),
    ]
    assert calls[3][1]["weights"] == f"{tmp_path}/sync-bf16-off/latest.safetensors"  # the bf16 run's model
    for _, command, _ in calls[4:]:
        assert {"--one-process", "--no-baseline", "--no-data-pipeline", "--channels-last"} <= set(command)
        assert "--compile" not in command
    # Each check may run to the sum of the caps so far: its own cap and what the ones before left.
    assert [round(limit) for *_, limit in calls] == [110, 205, 235, 275, 350, 425]
    assert [row.verdict for row in rows] == ["ok"] * 4 + ["info"] * 3 + ["not run"] * 7
    assert rows[0].seconds == "5 (110)" and rows[1].seconds == "5 (205)"
    assert exit_code(rows) == 0
    optional = rows[7:]
    assert sum(row.result == "optional: --compile runs it" for row in optional) == 2
    assert sum(row.result == "optional: --extra runs it" for row in optional) == 5
    table = markdown_table(rows).splitlines()
    assert table[0] == "| check | setting | result | seconds (limit) | verdict |" and len(table) == 2 + len(rows)
    assert table[-1].endswith("| optional: --extra runs it |  | not run |")


def test_a_check_over_its_limit_fails_and_the_later_ones_keep_their_caps(fake_children, tmp_path):
    _, calls, seconds, _, _ = fake_children
    seconds.update(sync_debug=500)  # both sync runs hang: cut off at their limits
    rows = run_all(CHECKS_RUN, DEFAULT_BUDGET_S, set(), Context(str(tmp_path), None, 300, 50), print)
    assert [row.verdict for row in rows[:2]] == ["FAIL", "FAIL"] and exit_code(rows) == 1
    assert rows[0].result == "cut off after 110 s (its share of the time budget)" and rows[0].seconds == "110 (110)"
    assert [round(limit) for *_, limit in calls] == [110, 100, 35, 75, 150, 225]  # and what the others left
    assert [row.verdict for row in rows[2:7]] == ["ok", "ok", "info", "info", "info"]


def test_time_lost_beyond_a_limit_comes_out_of_the_later_checks_and_a_spent_budget_is_not_run(fake_children, tmp_path):
    clock, calls, seconds, _, late = fake_children
    seconds.update(sync_debug=300)
    late.add("sync_debug")  # the first sync run, cut off, ends 190 s after its limit
    started = clock.now
    rows = run_all(CHECKS_RUN, DEFAULT_BUDGET_S, set(), Context(str(tmp_path), None, 300, 50), print)
    assert [name for name, *_ in calls] == ["sync_debug", "bench", "bench"]
    assert [round(limit) for *_, limit in calls] == [110, 70, 145]
    assert [row.verdict for row in rows[:6]] == ["FAIL", "not run", "not run", "not run", "info", "info"]
    assert rows[1].result == "the time budget is spent: 0 s left, under 20 s"
    assert rows[3].result == "the time budget is spent: 0 s left, under 20 s"
    assert clock.now - started <= DEFAULT_BUDGET_S  # the total still fits, the lost time taken from later checks
    assert exit_code(rows) == 1


def test_a_failed_child_fails_its_row_and_the_run(fake_children, tmp_path):
    _, _, _, results, _ = fake_children
    results["nan_step"] = {"error": "RuntimeError: CUDA error: an illegal memory access was encountered"}
    rows = run_all(CHECKS_RUN, DEFAULT_BUDGET_S, set(), Context(str(tmp_path), None, 300, 50), print)
    failed = [row for row in rows if row.verdict == "FAIL"]
    assert len(failed) == 1 and failed[0].check == "NaN gradient skipped by fused Adam"
    assert "illegal memory access" in failed[0].result and exit_code(rows) == 1


def test_the_command_prints_the_table_and_exits_by_the_rows(fake_children, monkeypatch):
    from click.testing import CliRunner

    _, _, _, results, _ = fake_children
    monkeypatch.setattr(gpu_checks, "require_cuda", lambda: "NVIDIA H200")
    result = CliRunner().invoke(gpu_checks.main, ["--compile"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("GPU checks on NVIDIA H200 (") and "of a 750 s budget)" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "verdict" not in line]
    assert len(rows) == len(CHECKS_RUN) + 1  # the NaN check gives two rows
    assert "IEEE 41.2500, TF32 41.2000 (delta +0.0500)" in rows[4]
    assert sum("first bare step 40.0 s" in row for row in rows) == 2  # the compile rows
    results["sync_debug"] = sync_result(per_step_syncs=2, steps_with_syncs=1, where=[["train.py:1", 2]])
    result = CliRunner().invoke(gpu_checks.main, ["--budget-s", "300"])
    assert result.exit_code == 1 and "of a 300 s budget)" in result.stdout
    assert result.stdout.count("| FAIL |") == 2 and "train.py:1 x2" in result.stdout


# ---------------------------------------------------------------------------------------------
# The children, for real, on the CPU


@pytest.mark.slow
def test_the_training_nan_and_jm_checks_run_end_to_end_on_the_cpu(pair_folder, tmp_path):
    # The run the GPU gets up to the bench rows, on tiny settings: both sync runs (fp16 trains in bf16 on a CPU),
    # the NaN step and the JM of the bf16 run's weights, each in its own process, with the real limits.
    context = Context(str(tmp_path), str(pair_folder), 12, 2, device="cpu", train_config=TINY_MODEL)
    said = []
    rows = run_all(CHECKS_RUN[:4], DEFAULT_BUDGET_S, set(), context, said.append)
    assert [row.verdict for row in rows] == ["ok"] * 4 + ["info"], rows
    assert len(said) == 4 and exit_code(rows) == 0
    sync_on, sync_off = rows[0].result, rows[1].result
    # 20 training pairs, batch 4: 5 steps per epoch, so 12 steps end 2 epochs and a third (at step 12); each
    # validates and draws the panels of the 3 validation images.
    for result in (sync_on, sync_off):
        assert result.startswith("0 sync warnings in steps 3-12") and "3 epoch ends" in result, result
        assert "panels: 9 images of 3 validation images" in result
    assert "12 batches cut on the device" in sync_on and "0 batches cut on the device" in sync_off
    assert "scale 65536 -> 32768" in rows[3].result  # the fp16 NaN step halved the GradScaler's scale
    assert rows[4].setting.endswith("sync-bf16-off/latest.safetensors, 3 val images")
    assert "delta +0.0000" in rows[4].result and "max /SR difference/ 0.00e+00" in markdown_table(rows)  # TF32: GPU


@pytest.mark.slow
def test_a_bench_row_is_one_process_and_its_json_is_read_past_the_training_lines(pair_folder):
    from gpu_checks import _rows_bench, bench_command

    # The fp16 row's command; on a CPU, a tiny batch in float32 (a later option wins over the row's own).
    tiny = ("--batch-size", "1", "--patch-size", "8", "--threads", "2", "--mixed-precision", "no")
    command = bench_command("fp16", channels_last=True, compile_=False, data=str(pair_folder), more=tiny)
    result = run_tree([*command, "--steps", "5", "--warmup", "1"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = last_json_document(result.stdout)
    assert report["one_process"] and report["data_pipeline"] is None and "baseline" not in report
    assert report["ratios"]["data_headroom_per_worker"] is None and report["toolkit"]["intervals"] >= 1
    # The training ran in the bench's own process: its lines are on the bench's stderr, not in a child's pipe.
    assert "device store:" in result.stderr and "device store:" not in result.stdout
    (row,) = _rows_bench(CHECKS_RUN[4], report)
    assert row.verdict == "info" and row.result.startswith("toolkit ") and "% of bf16 matmul)" in row.result


def test_the_json_document_that_ends_stdout_is_read_past_other_lines():
    stdout = 'epoch 1 {"loss": 1}\n{\n  "a": {\n    "b": 1\n  },\n  "c": [\n    2\n  ]\n}\n'
    assert last_json_document(stdout) == {"a": {"b": 1}, "c": [2]}
    assert gpu_checks._run_json([sys.executable, "-c", "print('no json')"], 60, last_json_document) == {
        "error": "no result on its stdout: no json"
    }


def test_a_check_over_its_time_is_cut_off_with_its_children(tmp_path):
    marker = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])"
        f"; open({str(marker)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    assert gpu_checks._run_json([sys.executable, "-c", code], timeout=3) == {
        "error": "cut off after 3 s (its share of the time budget)"
    }
    pid = int(marker.read_text())
    time.sleep(1)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_check_is_declared_once_with_its_option():
    assert all(isinstance(check, Check) for check in CHECKS_RUN)
    assert len({(check.name, check.setting) for check in CHECKS_RUN}) == len(CHECKS_RUN)
    assert {check.option for check in CHECKS_RUN} == {None, "--compile", "--extra"}
