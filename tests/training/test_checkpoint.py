"""Full-state checkpoints: completeness, pruning, exact resume after kill -9, and preemption."""

import argparse
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

from conftest import NO_WORKERS, TINY, accelerate_launch, kill_tree, run_tree
from insanesr_dist.errors import UserError
from insanesr_dist.training import checkpoint, preemption
from insanesr_dist.training.state import TrainState

RUN = ["--epochs", "3", "--batch-size", "2", "--log-every", "1", "--checkpoint-every", "3"]


def fake_checkpoint(out: Path, step: int, *, complete: bool = True) -> Path:
    path = checkpoint.checkpoint_dir(out, step)
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"x" * 100)
    (path / checkpoint.STATE_FILE).write_text(json.dumps({"step": step}))
    if complete:
        (path / checkpoint.MARKER).write_text(
            json.dumps({"model.safetensors": 100, checkpoint.STATE_FILE: len(json.dumps({"step": step}))})
        )
    return path


def test_only_complete_checkpoints_count(tmp_path):
    warnings = []
    good = fake_checkpoint(tmp_path, 4)
    fake_checkpoint(tmp_path, 6, complete=False)  # interrupted before the marker
    truncated = fake_checkpoint(tmp_path, 8)
    (truncated / "model.safetensors").write_bytes(b"x" * 10)  # marker written, file cut short later
    assert checkpoint.find_resume("auto", tmp_path, warn=warnings.append) == good
    assert any("step_00000006" in w and "COMPLETE" in w for w in warnings)
    assert any("step_00000008" in w and "10 bytes, expected 100" in w for w in warnings)
    assert checkpoint.find_resume("none", tmp_path) is None
    assert checkpoint.find_resume(str(good), tmp_path) == good
    with pytest.raises(UserError, match="cannot resume"):
        checkpoint.find_resume(str(truncated), tmp_path)
    assert checkpoint.find_resume("auto", tmp_path / "empty") is None


def test_pruning_keeps_the_newest_complete_ones(tmp_path):
    for step in (1, 2, 3):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 0, complete=False)  # stale, older than a complete one
    fake_checkpoint(tmp_path, 9, complete=False)  # maybe being written right now: never touched
    checkpoint._prune(tmp_path, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_00000002",
        "step_00000003",
        "step_00000009",
    ]


def test_a_real_signal_is_noticed_and_everything_is_restored_after():
    from accelerate import PartialState

    before = {s: signal.getsignal(s) for s in preemption.PreemptionFlag.SIGNALS}
    flag = preemption.PreemptionFlag()
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
    assert {s: signal.getsignal(s) for s in preemption.PreemptionFlag.SIGNALS} == before
    assert not signal.pthread_sigmask(signal.SIG_BLOCK, []) & set(preemption.PreemptionFlag.SIGNALS)
    assert not signal.sigpending()


def test_a_signal_arriving_during_the_ranks_comparison_is_kept():
    """A handler can run between reading the local signal and storing the agreed one (it did, once in a few
    hundred rounds): the later SIGTERM must survive it, so the next comparison cancels instead of requeueing."""
    flag = preemption.PreemptionFlag()
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


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def newest_complete(out: Path) -> Path | None:
    found = checkpoint.complete_checkpoints(out, warn=lambda _: None)
    return found[-1] if found else None


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_kill_9_and_rerun_equals_an_uninterrupted_run(pair_folder, tmp_path, processes):
    # One process: the killed run and its rerun cut their batches in a DataLoader worker, the reference in the
    # training process; a worker count must not change a result (a resume may change it), so they still agree.
    # Two: no workers at all, the sharding over ranks is what this case adds.
    args = ["--data", str(pair_folder), *TINY, *RUN, *(NO_WORKERS if processes == 2 else [])]
    reference = tmp_path / "reference"
    done = run_tree(accelerate_launch(processes, *args, *NO_WORKERS, "--output-dir", str(reference)), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "killed"
    job = subprocess.Popen(
        accelerate_launch(processes, *args, "--output-dir", str(out)),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Kill the whole process tree mid-epoch 2, right after a mid-epoch checkpoint completes.
    try:
        wait_for(
            lambda: (checkpoint.checkpoint_dir(out, 12) / checkpoint.MARKER).exists() or job.poll() is not None,
            300,
            "step 12",
        )
    finally:
        kill_tree(job)
    resumed_from = newest_complete(out)
    assert resumed_from is not None and not checkpoint.read_state(resumed_from).finished

    rerun = run_tree(accelerate_launch(processes, *args, "--output-dir", str(out)), timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {resumed_from}" in rerun.stdout
    assert max_relative_difference(reference / "latest.safetensors", out / "latest.safetensors") <= 1e-6
    expected, got = step_losses(reference), step_losses(out)
    assert sorted(got) == sorted(expected) == list(range(1, max(expected) + 1))
    assert all(got[s] == pytest.approx(expected[s], rel=1e-6) for s in expected)
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]  # records of epochs redone after the checkpoint are not duplicated
    # Its last checkpoint is a finished run's: the same command again has nothing left to do (test_train.py runs
    # that command on a finished run).
    assert checkpoint.read_state(newest_complete(out)).finished


@pytest.mark.slow
def test_sigterm_to_a_two_process_job_saves_and_stops_then_the_rerun_finishes(pair_folder, tmp_path):
    args = ["--data", str(pair_folder), *TINY, "--epochs", "30", "--batch-size", "2", "--checkpoint-every", "0"]
    out, log_path = tmp_path / "preempted", tmp_path / "preempted.log"
    # Output to a file, not a pipe: nobody reads a pipe while we wait, and a full one would stall the ranks.
    with open(log_path, "w") as log:
        job = subprocess.Popen(
            accelerate_launch(2, *args, "--output-dir", str(out)),
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
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
    state = checkpoint.read_state(saved)
    assert not state.finished and state.step > 0
    assert all((saved / f"random_states_{rank}.pkl").is_file() for rank in range(2))

    short = [a if a != "30" else str(state.epoch) for a in args]  # finish soon: same run, fewer epochs
    rerun = run_tree(accelerate_launch(2, *short, "--output-dir", str(out)), timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {saved}" in rerun.stdout
    assert checkpoint.read_state(newest_complete(out)).finished


def test_the_multi_tensor_ema_update_equals_the_per_tensor_lerp_bit_for_bit():
    from bench_stages import per_tensor_ema_update  # benchmarks/: the update as it was
    from insanesr_dist.model.architecture import InsaneSRNet
    from insanesr_dist.training.ema import WeightEMA

    torch.manual_seed(0)
    live = InsaneSRNet().to(memory_format=torch.channels_last)  # the default model, laid out as trained
    ema = WeightEMA(live, decay=0.999)
    reference = WeightEMA(live, decay=0.999).module  # updated by the old formula
    for updates in range(1, 5):
        with torch.no_grad():
            for p in live.parameters():
                p.add_(torch.randn_like(p), alpha=0.01)  # as an optimizer step would move them
        ema.update(live)
        per_tensor_ema_update(reference, live, min(0.999, (1 + updates) / (10 + updates)))
        got, expected = ema.module.state_dict(), reference.state_dict()
        assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert ema.updates == 4
    # `.to()` keeps the Parameter objects (it swaps their data); test_ema.py covers moves that replace tensors.
    ema.module.to("cpu")
    ema.update(live)
    assert ema.updates == 5


def tiny_accelerator_state(tmp_path: Path):
    """A saved accelerate state of a small model and Adam (no fp16, so no scaler.pt) and the Accelerator
    that wrote it; the caller resets accelerate's process-wide state afterwards."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    _model, _optimizer = accelerator.prepare(
        torch.nn.Linear(2, 1), torch.optim.Adam(torch.nn.Linear(2, 1).parameters())
    )
    path = tmp_path / "step_00000001"
    accelerator.save_state(str(path))
    return accelerator, path


def test_a_checkpoint_without_scaler_state_resumes_under_fp16_with_a_fresh_scaler(tmp_path, capsys):
    """fp16 needs a CUDA GPU, so its situation is built here: an Accelerator holding a GradScaler (as under
    fp16) meets a checkpoint written without one (bf16 or fp32)."""
    from accelerate.state import AcceleratorState

    try:
        accelerator, path = tiny_accelerator_state(tmp_path)
        assert not (path / checkpoint.SCALER_FILE).exists()
        accelerator.scaler = scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
        with pytest.raises(FileNotFoundError, match=r"scaler\.pt"):  # accelerate's own load_state: every rerun alike
            accelerator.load_state(str(path))
        said = []
        checkpoint.load_checkpoint(accelerator, path, say=said.append)
        assert accelerator.scaler is scaler and scaler.get_scale() == 4.0  # the fresh one, as a new run has
        assert len(said) == 1 and "fresh gradient scaler" in said[0]
        # Random states that the weights_only loader refuses (accelerate would skip them silently) are said.
        torch.save({"random_state": argparse.Namespace()}, path / "random_states_0.pkl")
        checkpoint.load_checkpoint(accelerator, path, say=said.append)
        assert "cannot load this rank's random states" in capsys.readouterr().out
        # A checkpoint from an older version with the pickled EMA is refused, never unpickled.
        (path / "custom_checkpoint_0.pkl").write_bytes(b"not loaded")
        with pytest.raises(UserError, match=r"custom_checkpoint_0\.pkl.*not loaded"):
            checkpoint.load_checkpoint(accelerator, path, say=said.append)
    finally:
        AcceleratorState._reset_state(True)


def test_a_state_continued_by_another_process_count_skips_the_same_global_batches():
    two = TrainState(epoch=2, batches_done=3, step=9, loss_sum=6.0, loss_batches=3, processes=2)
    one = checkpoint.for_processes(two, 1)
    assert (one.batches_done, one.loss_batches, one.processes) == (6, 6, 1)
    # The epoch's mean loss is kept: the sum over ranks shared out again, over each rank's batches.
    assert two.loss_sum / two.processes / two.loss_batches == one.loss_sum / 1 / one.loss_batches
    assert checkpoint.for_processes(one, 2) == two
    assert checkpoint.for_processes(TrainState(batches_done=5), 2).batches_done == 5  # count unknown: as it was


def run_logged(command: list[str], log_path: Path, timeout: float) -> tuple[int, str]:
    """Run to the end with output in a file (a full pipe nobody reads would stall the ranks)."""
    with open(log_path, "w") as log:
        job = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = job.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(job)
        pytest.fail(f"timed out after {timeout} s: {log_path.read_text(errors='replace')[-3000:]}")
    return code, log_path.read_text(errors="replace")


def killed_after_a_checkpoint(command: list[str], out: Path) -> Path:
    """Start a long run, SIGKILL it once its first mid-epoch checkpoint is complete; that checkpoint."""
    job = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: newest_complete(out) is not None or job.poll() is not None, 300, "a checkpoint")
    finally:
        kill_tree(job)
    saved = newest_complete(out)
    assert saved is not None and not checkpoint.read_state(saved).finished
    return saved


@pytest.mark.slow
@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_resuming_with_another_process_count_says_so_and_finishes(pair_folder, tmp_path, before, after):
    args = ["--data", str(pair_folder), *TINY, *NO_WORKERS, "--batch-size", "2", "--checkpoint-every", "2"]
    out = tmp_path / "out"
    saved = killed_after_a_checkpoint(accelerate_launch(before, *args, "--epochs", "30", "--output-dir", str(out)), out)
    state = checkpoint.read_state(saved)
    assert state.processes == before and state.precision == "no" and state.batches_done % 2 == 0
    # The EMA (on in the default preset) is in the checkpoint as safetensors, listed in COMPLETE; no pickle of it.
    listed = json.loads((saved / checkpoint.MARKER).read_text())
    assert (
        checkpoint.EMA_WEIGHTS in listed
        and checkpoint.EMA_COUNTERS in listed
        and not list(saved.glob("custom_checkpoint_*"))
    )

    code, output = run_logged(
        accelerate_launch(after, *args, "--epochs", str(state.epoch), "--output-dir", str(out)),
        tmp_path / "rerun.log",
        timeout=600,
    )
    assert code == 0, output[-3000:]
    note = next(line for line in output.splitlines() if line.startswith("warning: resuming with"))
    assert note.startswith(
        f"warning: resuming with {after} process(es); the checkpoint was written by {before}: "
        f"steps per epoch {state.steps_per_epoch} -> "
    ), note
    assert f"resuming from {saved}" in output
    # The epoch went on after the global batches already trained on, to its end: the step budget followed.
    steps_per_epoch = int(note.split(" -> ")[1].split(",")[0])
    final = checkpoint.read_state(newest_complete(out))
    assert final.finished and final.processes == after
    assert final.step == state.step + steps_per_epoch - state.batches_done * before // after


@pytest.mark.slow
def test_a_rank_that_cannot_read_rank_0s_checkpoint_fails_in_one_line_and_no_rank_hangs(pair_folder, tmp_path):
    args = ["--data", str(pair_folder), *TINY, "--batch-size", "2", "--checkpoint-every", "2"]
    out = tmp_path / "out"
    saved = killed_after_a_checkpoint(accelerate_launch(1, *args, "--epochs", "30", "--output-dir", str(out)), out)
    # Rank 1 sees another file system than rank 0's (a node-local or lagging mount): the optimizer state is
    # unreadable there. The script is the real train command with that one fault injected.
    script = tmp_path / "rank1_cannot_read.py"
    script.write_text(
        "import os, sys\n"
        "import insanesr_dist.training.checkpoint as C\n"
        "from insanesr_dist.train import main\n"
        "real = C._is_complete\n"
        "C._is_complete = lambda p: (real(p) if os.environ['RANK'] == '0'\n"
        "                            else 'optimizer.bin cannot be read (injected)')\n"
        "main(sys.argv[1:], prog_name='train')\n"
    )
    command = accelerate_launch(2, *args, "--output-dir", str(out), target=(str(script),))
    code, output = run_logged(command, tmp_path / "rerun.log", timeout=300)
    assert code != 0, output[-3000:]
    # Each rank says it in one line; the only traceback is the launcher's report of the ranks' exit codes.
    lines = output.splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    assert len(errors) == 2 and all("bin/accelerate" in lines[i + 1] for i in tracebacks), output[-3000:]
    assert set(errors) == {
        (
            f"Error: {saved}: rank 1 cannot read this checkpoint, which rank 0 chose to resume "
            "from: optimizer.bin cannot be read (injected); every rank must see the run directory's "
            "files (a shared file system)"
        )
    }, output[-3000:]


@pytest.mark.slow
def test_kill_9_mid_stream_and_rerun_equals_an_uninterrupted_run(tmp_path):
    """--streaming from parquet shards: the checkpoint holds the stream's position, and the rerun goes on at the
    next batch (no sample read again, none left out): its losses and weights are the uninterrupted run's."""
    from stream_data import make_pairs, write_parquet

    data = tmp_path / "shards"
    for shard in range(3):
        write_parquet(data / f"train-{shard:05d}.parquet", make_pairs(12, first=12 * shard))
    args = ["--data", str(data), "--streaming", "--val-size", "4", "--patch-size", "8", "--num-workers", "1"]
    args += [*TINY, *RUN, "--max-steps", "24", "--shuffle-crops", "16"]
    reference = tmp_path / "reference"
    done = run_tree(accelerate_launch(1, *args, "--output-dir", str(reference)), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "killed"
    job = subprocess.Popen(
        accelerate_launch(1, *args, "--output-dir", str(out)),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:  # killed mid-epoch 2 (8 steps an epoch), right after a mid-epoch checkpoint
        wait_for(
            lambda: (checkpoint.checkpoint_dir(out, 12) / checkpoint.MARKER).exists() or job.poll() is not None,
            300,
            "step 12",
        )
    finally:
        kill_tree(job)
    resumed_from = newest_complete(out)
    state = checkpoint.read_state(resumed_from)
    assert not state.finished and state.stream["batches"] == state.step * 1  # one process, no accumulation

    rerun = run_tree(accelerate_launch(1, *args, "--output-dir", str(out)), timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {resumed_from}" in rerun.stdout
    assert "not continued exactly" not in rerun.stdout + rerun.stderr
    expected, got = step_losses(reference), step_losses(out)
    assert sorted(got) == sorted(expected) == list(range(1, 25))
    assert all(got[s] == expected[s] for s in expected)
    assert max_relative_difference(reference / "latest.safetensors", out / "latest.safetensors") == 0
