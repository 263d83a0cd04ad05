"""Multi-node training for real, on this one machine: two `accelerate launch` "machines" on loopback, and the
sbatch scripts on a 2-node SLURM cluster (launch/local_slurm.sh: slurmctld + two slurmd, CPUs=1 each, gloo DDP),
including a preemption (SIGUSR1 to the job steps) that requeues the job, which then resumes and finishes.

The SLURM tests need root (the cluster script installs slurm-wlm/munge with apt-get and starts daemons); CI runs
as root, so they run there. Every wait is bounded; the cluster is always stopped at the end of the session.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY, free_port, kill_tree
from insanesr_dist.scoring.submission import read_submission

# One test cluster for the session: its tests all run in one pytest-xdist worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cluster")]

REPO = Path(__file__).resolve().parents[1]
LOCAL_SLURM = REPO / "launch" / "local_slurm.sh"
VENV_BIN = Path(sys.executable).parent
# One torch thread per process: every SLURM node of the test cluster has one CPU, and both share this machine.
SMALL_RUN = [*TINY, "--cpu-threads", "1"]
# The test cluster's KillWait (seconds from SIGTERM to SIGKILL, 30 by default): a cancelled or requeued job's
# steps linger that long at most, and the slow requeue below need only outlast this much.
KILL_WAIT = 3


@pytest.fixture
def data(pair_folder) -> Path:
    # conftest's shared folder, which no run writes into: 23 pairs -> 20 train (2 steps per epoch over
    # 2 processes), 3 validation, 3 test images.
    return pair_folder


def assert_complete_run(out: Path, data: Path, epochs: int) -> list[dict]:
    """Every file a finished run leaves, read back."""
    assert (out / "config.json").is_file()
    assert (out / "latest.safetensors").is_file() and (out / "best.safetensors").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
    test_ids = sorted(p.name for p in (data / "test" / "LR").iterdir())
    for epoch in range(1, epochs + 1):
        assert sorted(read_submission(out / "submissions" / f"epoch_{epoch:03d}.csv")) == test_ids
    assert list((out / "logs").rglob("events.out.tfevents.*"))
    return records


def read_log(log: Path) -> str:
    # Two nodes' progress bars interleave in one file and may split a multi-byte character.
    return log.read_text(errors="replace") if log.exists() else "(no log)"


# ---------------------------------------------------------------- two machines on loopback, no SLURM


def test_two_machines_on_loopback_without_slurm(data, tmp_path):
    out, port = tmp_path / "run", free_port()
    procs = []
    for rank in (0, 1):
        cmd = [
            str(VENV_BIN / "accelerate"),
            "launch",
            "--multi_gpu",
            "--num_machines",
            "2",
            "--machine_rank",
            str(rank),
            "--num_processes",
            "2",
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            str(port),
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "insanesr_dist.train",
            "--data",
            str(data),
            "--epochs",
            "2",
            "--max-steps",
            "6",
            "--output-dir",
            str(out),
            *SMALL_RUN,
        ]
        log = open(tmp_path / f"machine{rank}.log", "w")  # noqa: SIM115 (the process writes it until it ends)
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    try:
        codes = [p.wait(timeout=180) for p in procs]
    finally:
        for p in procs:  # on a timeout: the launcher and its workers (own session each)
            if p.poll() is None:
                kill_tree(p)
    logs = [read_log(tmp_path / f"machine{rank}.log") for rank in (0, 1)]
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    assert "2 process(es)" in logs[0]
    records = assert_complete_run(out, data, epochs=2)
    assert [r["step"] for r in records] == [2, 4]


# ---------------------------------------------------------------- SLURM


@pytest.fixture(scope="session")
def slurm():
    """A 2-node SLURM cluster on this machine for the session, always stopped afterwards."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (apt-get install slurm-wlm munge, /etc, daemons)")
    try:
        started = subprocess.run(
            [str(LOCAL_SLURM), "start"],
            env={**os.environ, "KILL_WAIT": str(KILL_WAIT)},
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert started.returncode == 0, f"launch/local_slurm.sh start failed:\n{started.stdout}\n{started.stderr}"
        yield
    finally:
        stopped = subprocess.run([str(LOCAL_SLURM), "stop"], capture_output=True, text=True, timeout=180)
        assert stopped.returncode == 0, f"launch/local_slurm.sh stop failed:\n{stopped.stdout}\n{stopped.stderr}"


def submit(script: str, log: Path, *args: str, cwd: Path = REPO, **knobs: str) -> str:
    """`sbatch` a launch/ script (from the repository root unless `cwd`), its knobs set in the environment and
    `args` after it; the job id."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", **knobs}
    if sys.prefix != sys.base_prefix:
        env["VENV"] = sys.prefix  # exercise the script's activation of a virtualenv
    result = subprocess.run(
        ["sbatch", "--parsable", f"--output={log}", str(REPO / "launch" / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def job_info(job: str) -> dict[str, str]:
    shown = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    return dict(re.findall(r"(\w+)=(\S*)", shown.stdout))


FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


def wait_for(job: str, log: Path, timeout: float, until=None) -> dict[str, str]:
    """Poll until the job reaches a final state (or `until()` holds); scancel it and fail on a timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = job_info(job)
        if info["JobState"] in FINAL_STATES or (until is not None and until()):
            return info
        time.sleep(0.2)
    subprocess.run(["scancel", job], timeout=30)
    pytest.fail(f"job {job} still {info['JobState']} after {timeout:.0f} s; log:\n" + read_log(log)[-4000:])


def knobs(data: Path, out: Path, epochs: int, *extra: str) -> dict[str, str]:
    # GPUS_PER_NODE=0: CPU training on purpose (this cluster has no GPU; without it the scripts refuse to start).
    return {
        "DATA": str(data),
        "OUTPUT_DIR": str(out),
        "EPOCHS": str(epochs),
        "GPUS_PER_NODE": "0",
        "TRAIN_ARGS": " ".join([*extra, *SMALL_RUN]),
    }


def test_sbatch_single_node_trains_by_steps_when_no_epochs_are_given(slurm, data, tmp_path):
    """CPU_PROCESSES training processes on a CPU node, and the scripts' default: MAX_STEPS with validation,
    submission and checkpoint every EVAL_EVERY_STEPS, whatever the epochs are (here 5 steps each, from
    --epoch-samples 40 over 2 processes of batch 4): steps 2 and 4 mid-epoch, the end of epoch 1 (step 5) neither
    validates nor saves, the last step does both."""
    out, log = tmp_path / "run", tmp_path / "slurm.out"
    knobs = {"DATA": str(data), "OUTPUT_DIR": str(out), "GPUS_PER_NODE": "0", "CPU_PROCESSES": "2"}
    steps = {"MAX_STEPS": "6", "EVAL_EVERY_STEPS": "2", "TRAIN_ARGS": " ".join(["--epoch-samples", "40", *SMALL_RUN])}
    job = submit("slurm_single_node.sbatch", log, **knobs, **steps)
    info = wait_for(job, log, timeout=150)
    text = read_log(log)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), text[-4000:]
    assert "2 process(es), 0 GPU(s)" in text and "2 process(es) on cpu" in text  # CPU_PROCESSES on a CPU node
    assert "2 epoch(s), 6 steps" in text
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], "jm" in r) for r in records] == [(5, False), (6, True)]
    assert sorted(p.name for p in (out / "submissions").iterdir()) == [
        "epoch_002.csv",
        "step_0000002.csv",
        "step_0000004.csv",
    ]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000004", "step_00000006"]
    assert "step 2 (epoch 1)  PSNR" in text and "step 4 (epoch 1)  PSNR" in text


@pytest.mark.parametrize("script", ["slurm_multi_node.sbatch", "slurm_single_node.sbatch"])
def test_sbatch_job_that_sees_no_gpu_refuses_to_train(slurm, data, tmp_path, script):
    """Without GPUS_PER_NODE=0 a job on these GPU-less nodes stops before srun, with one line saying why."""
    out, log = tmp_path / "run", tmp_path / "slurm.out"
    job = submit(script, log, DATA=str(data), OUTPUT_DIR=str(out), EPOCHS="1", GPUS_PER_NODE="")
    info = wait_for(job, log, timeout=90)
    text = read_log(log)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("FAILED", "1:0", "0"), text[-4000:]
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"job {job} sees no GPU" in errors[0] and "GPUS_PER_NODE=0" in errors[0], text
    assert "Traceback" not in text and f"job {job} (restart 0)" not in text  # no start line, no srun
    assert "insanesr-dist:" not in text and not out.exists()  # the training never started


def test_sbatch_multi_node_from_another_directory_with_arguments_after_the_script(slurm, data, tmp_path):
    """`cd elsewhere && sbatch /path/to/launch/slurm_multi_node.sbatch --epochs 1 --data D ...`: one training
    process on each of the two nodes, the configs found (the job runs a spool copy of the script), the arguments
    reaching the training and beating the knobs."""
    elsewhere, log = tmp_path / "elsewhere", tmp_path / "slurm.out"
    elsewhere.mkdir()
    job = submit(
        "slurm_multi_node.sbatch",
        log,
        "--epochs",
        "1",
        "--data",
        str(data),
        "--max-steps",
        "2",
        *SMALL_RUN,
        cwd=elsewhere,
        GPUS_PER_NODE="0",
        EPOCHS="7",
    )
    info = wait_for(job, log, timeout=150)
    text = read_log(log)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), text[-4000:]
    assert f"job {job} (restart 0): 2 nodes [n[1-2]] x 1 process(es), head n1:" in text
    assert "2 process(es) on cpu" in text  # one training process per node, gloo DDP
    out = elsewhere / "runs" / f"slurm-{job}"  # the default OUTPUT_DIR, relative to the submit directory
    config = json.loads((out / "config.json").read_text())
    assert (config["epochs"], config["data"], config["max_steps"]) == (1, str(data), 2)
    assert (config["num_rrdb"], config["channels"], config["batch_size"]) == (1, 8, 4)  # TINY, not the defaults
    records = assert_complete_run(out, data, epochs=1)
    assert [r["step"] for r in records] == [2]


def start_training_job(data: Path, out: Path, log: Path, epochs: int, **more: str) -> str:
    """Submit the multi-node sbatch script (`more`: knobs added) and return its job id once it is training (an
    epoch recorded)."""
    job = submit("slurm_multi_node.sbatch", log, **knobs(data, out, epochs), **more)
    metrics = out / "metrics.jsonl"
    info = wait_for(job, log, timeout=120, until=lambda: metrics.is_file() and metrics.read_text().strip())
    assert info["JobState"] == "RUNNING", read_log(log)[-4000:]
    return job


SLOW_REQUEUE = """#!/bin/bash
# scontrol, but `scontrol requeue` first waits (as on a busy controller) and leaves a mark that it was asked:
# {seconds} s, three times a killed step's grace before SIGKILL (the test cluster's KillWait; torchrun's own
# shutdown allows 30 s, but the step's SIGKILL comes first).
if [[ "$1" == requeue ]]; then touch "$(dirname "$0")/asked"; sleep {seconds}; fi
exec {scontrol} "$@"
"""


def test_sbatch_preempted_job_requeues_resumes_and_finishes_even_when_the_requeue_is_slow(slurm, data, tmp_path):
    """What `#SBATCH --signal=USR1@120` does before the time limit, now: SIGUSR1 to the job steps. The training
    saves a checkpoint, rank 0 requeues the job, and the requeued job resumes from it and finishes.

    Every rank waits for rank 0's `scontrol requeue` before it exits. A rank that left first would end its node's
    launcher with an error, and `srun --kill-on-bad-exit=1` would end the step, rank 0 and its unfinished requeue
    included: the job would fail instead of coming back. A requeue slower than the step's grace period before
    SIGKILL makes that race likely: with the old order (a 15 s requeue, KillWait 5 s) this job ended FAILED,
    status 137."""
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True, timeout=30)
    kill_wait = re.search(r"^KillWait\s*=\s*(\d+) sec", config.stdout, re.MULTILINE)
    assert kill_wait and int(kill_wait[1]) == KILL_WAIT, "the requeue below must outlast the cluster's KillWait"
    out, log, bin_dir = tmp_path / "run", tmp_path / "slurm.out", tmp_path / "bin"
    bin_dir.mkdir()
    real = subprocess.run(["which", "scontrol"], capture_output=True, text=True, check=True).stdout.strip()
    (bin_dir / "scontrol").write_text(SLOW_REQUEUE.format(scontrol=real, seconds=3 * KILL_WAIT))
    (bin_dir / "scontrol").chmod(0o755)
    # 24 steps: still training when the signal lands (a second or two after epoch 1's record), 11 epochs on
    epochs = 12
    path = f"{bin_dir}{os.pathsep}{VENV_BIN}{os.pathsep}{os.environ['PATH']}"
    job = start_training_job(data, out, log, epochs, PATH=path)
    # Without --full/--batch, scancel signals the job steps only, not the batch shell: as --signal=USR1@120.
    subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)

    info = wait_for(job, log, timeout=180)
    text = read_log(log)
    assert (bin_dir / "asked").exists(), text[-6000:]  # the slow requeue ran
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), text[-6000:]
    first, _, second = text.partition(f"job {job} (restart 1)")
    assert f"job {job} (restart 0)" in first and second, text[-6000:]
    assert "preempted" in first  # the training saved a checkpoint and requeued the job
    assert "resuming from" in second  # the requeued job continued from it, not from scratch
    records = assert_complete_run(out, data, epochs=epochs)
    assert records[-1]["step"] == 2 * epochs
    assert list((out / "checkpoints").glob("step_*"))


def test_scancel_cancels_a_running_job_for_good(slurm, data, tmp_path):
    """`scancel JOBID` (SIGTERM to the steps, then SIGKILL) must end the job, not requeue it."""
    out, log = tmp_path / "run", tmp_path / "slurm.out"
    job = start_training_job(data, out, log, 30)
    subprocess.run(["scancel", job], check=True, timeout=30)
    try:
        info = wait_for(job, log, timeout=90, until=lambda: job_info(job)["Restarts"] != "0")
    finally:
        subprocess.run(["scancel", job], timeout=30)  # a requeued job waits (BeginTime): cancel it for good
    assert (info["JobState"], info["Restarts"]) == ("CANCELLED", "0"), read_log(log)[-4000:]
