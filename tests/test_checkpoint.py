"""Full-state checkpoints: completeness, pruning, exact resume after kill -9, and preemption."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

from insanesr_dist import checkpoint as C
from insanesr_dist.errors import UserError

from conftest import TINY, run_cli

RUN = ["--epochs", "3", "--batch-size", "2", "--log-every", "1", "--checkpoint-every", "3"]


def fake_checkpoint(out: Path, step: int, *, complete: bool = True) -> Path:
    path = C.checkpoint_dir(out, step)
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"x" * 100)
    (path / C.STATE_FILE).write_text(json.dumps({"step": step}))
    if complete:
        (path / C.MARKER).write_text(json.dumps({"model.safetensors": 100, C.STATE_FILE: len(json.dumps({"step": step}))}))
    return path


def test_only_complete_checkpoints_count(tmp_path):
    warnings = []
    good = fake_checkpoint(tmp_path, 4)
    fake_checkpoint(tmp_path, 6, complete=False)  # interrupted before the marker
    truncated = fake_checkpoint(tmp_path, 8)
    (truncated / "model.safetensors").write_bytes(b"x" * 10)  # marker written, file cut short later
    assert C.find_resume("auto", tmp_path, warn=warnings.append) == good
    assert any("step_00000006" in w and "COMPLETE" in w for w in warnings)
    assert any("step_00000008" in w and "10 bytes, expected 100" in w for w in warnings)
    assert C.find_resume("none", tmp_path) is None
    assert C.find_resume(str(good), tmp_path) == good
    with pytest.raises(UserError, match="cannot resume"):
        C.find_resume(str(truncated), tmp_path)
    assert C.find_resume("auto", tmp_path / "empty") is None


def test_pruning_keeps_the_newest_complete_ones(tmp_path):
    for step in (1, 2, 3):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 0, complete=False)  # stale, older than a complete one
    fake_checkpoint(tmp_path, 9, complete=False)  # maybe being written right now: never touched
    C._prune(tmp_path, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000002", "step_00000003",
                                                                           "step_00000009"]


def test_a_real_signal_is_noticed_and_everything_is_restored_after():
    from accelerate import PartialState

    before = {s: signal.getsignal(s) for s in C.PreemptionFlag.SIGNALS}
    flag = C.PreemptionFlag()
    try:
        state = PartialState(cpu=True)

        class One:  # the flag's view of a single-process accelerator
            device, num_processes = state.device, 1

        def sees(signum) -> bool:
            # Threads started by earlier tests in this process may take the signal (training blocks it before
            # any thread exists); their handler call reaches the main thread a moment later.
            deadline = time.monotonic() + 5
            while not (flag.requested(One) and flag.agreed == signum) and time.monotonic() < deadline:
                time.sleep(0.01)
            return flag.agreed == signum

        assert not flag.requested(One)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert sees(signal.SIGUSR1) and flag.wants_requeue
        os.kill(os.getpid(), signal.SIGTERM)  # scancel after the warning: cancel, don't requeue
        assert sees(signal.SIGTERM) and not flag.wants_requeue
    finally:
        flag.close()
    assert {s: signal.getsignal(s) for s in C.PreemptionFlag.SIGNALS} == before
    assert not signal.pthread_sigmask(signal.SIG_BLOCK, []) & set(C.PreemptionFlag.SIGNALS)
    assert not signal.sigpending()


def test_a_signal_arriving_during_the_ranks_comparison_is_kept():
    """A handler can run between reading the local signal and storing the agreed one (it did, once in a few
    hundred rounds): the later SIGTERM must survive it, so the next comparison cancels instead of requeueing."""
    flag = C.PreemptionFlag()
    try:
        flag._handle(signal.SIGUSR1, None)

        class TwoRanks:
            device, num_processes = torch.device("cpu"), 2

            @staticmethod
            def reduce(tensor, reduction):
                flag._handle(signal.SIGTERM, None)  # `scancel` lands while the ranks compare
                return tensor

        assert flag.requested(TwoRanks) and flag.agreed == signal.SIGUSR1
        assert flag.requested(TwoRanks) and flag.agreed == signal.SIGTERM and not flag.wants_requeue
    finally:
        flag.close()


def step_losses(out: Path) -> dict[int, float]:
    """train/loss per step from every TensorBoard file of a run; a rerun's value for a step wins."""
    losses = {}
    files = sorted((out / "logs").glob("events.out.tfevents.*"), key=lambda p: float(p.name.split(".")[3]))
    for path in files:
        for event in LegacyEventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == "train/loss":
                    losses[event.step] = value.simple_value
    return losses


def max_relative_difference(a: Path, b: Path) -> float:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max() / wa[k].abs().max().clamp_min(1e-12)) for k in wa)


def launch(processes: int, *args: str) -> list[str]:
    exe = Path(sys.executable).parent
    multi = ["--multi_gpu", "--num_processes", "2"] if processes == 2 else ["--num_processes", "1"]
    return [str(exe / "accelerate"), "launch", *multi, "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "-m", "insanesr_dist.train", *args]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def kill_tree(job: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process under it (torchrun starts its workers in new sessions)."""
    processes = [psutil.Process(job.pid), *psutil.Process(job.pid).children(recursive=True)]
    for process in processes:
        process.kill()
    psutil.wait_procs(processes, timeout=30)
    job.wait()


def newest_complete(out: Path) -> Path | None:
    found = C.complete_checkpoints(out, warn=lambda _: None)
    return found[-1] if found else None


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_kill_9_and_rerun_equals_an_uninterrupted_run(pair_folder, tmp_path, processes):
    args = ["--data", str(pair_folder), *TINY, *RUN]
    reference = tmp_path / "reference"
    done = subprocess.run(launch(processes, *args, "--output-dir", str(reference)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "killed"
    job = subprocess.Popen(launch(processes, *args, "--output-dir", str(out)), start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill the whole process tree mid-epoch 2, right after a mid-epoch checkpoint completes.
    try:
        wait_for(lambda: (C.checkpoint_dir(out, 12) / C.MARKER).exists() or job.poll() is not None, 300, "step 12")
    finally:
        kill_tree(job)
    resumed_from = newest_complete(out)
    assert resumed_from is not None and not C.read_state(resumed_from).finished

    rerun = subprocess.run(launch(processes, *args, "--output-dir", str(out)), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {resumed_from}" in rerun.stdout
    assert max_relative_difference(reference / "latest.safetensors", out / "latest.safetensors") <= 1e-6
    expected, got = step_losses(reference), step_losses(out)
    assert sorted(got) == sorted(expected) == list(range(1, max(expected) + 1))
    assert all(got[s] == pytest.approx(expected[s], rel=1e-6) for s in expected)
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]  # records of epochs redone after the checkpoint are not duplicated
    # A third run of the same command has nothing left to do.
    again = run_cli("accelerate", "launch", "--num_processes", "1", "-m", "insanesr_dist.train", *args,
                    "--output-dir", str(out))
    assert again.returncode == 0 and "already finished" in again.stdout


@pytest.mark.slow
def test_sigterm_to_a_two_process_job_saves_and_stops_then_the_rerun_finishes(pair_folder, tmp_path):
    args = ["--data", str(pair_folder), *TINY, "--epochs", "30", "--batch-size", "2", "--checkpoint-every", "0"]
    out, log_path = tmp_path / "preempted", tmp_path / "preempted.log"
    # Output to a file, not a pipe: nobody reads a pipe while we wait, and a full one would stall the ranks.
    with open(log_path, "w") as log:
        job = subprocess.Popen(launch(2, *args, "--output-dir", str(out)), start_new_session=True,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: newest_complete(out) is not None or job.poll() is not None, 300, "the first epoch")
        signalled = time.monotonic()
        job.send_signal(signal.SIGTERM)  # to the launcher, which passes SIGTERM on to both ranks
        job.wait(timeout=60)
        assert time.monotonic() - signalled < 30, "the save must finish before the launcher's SIGKILL"
    finally:
        if job.poll() is None:
            kill_tree(job)
    output = log_path.read_text(errors="replace")
    assert job.returncode != 0, output[-3000:]
    assert "preempted: checkpoint saved at step" in output and "Exception ignored" not in output, output[-3000:]
    saved = newest_complete(out)
    state = C.read_state(saved)
    assert not state.finished and state.step > 0
    assert all((saved / f"random_states_{rank}.pkl").is_file() for rank in range(2))

    short = [a if a != "30" else str(state.epoch) for a in args]  # finish soon: same run, fewer epochs
    rerun = subprocess.run(launch(2, *short, "--output-dir", str(out)), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {saved}" in rerun.stdout
    assert C.read_state(newest_complete(out)).finished
