"""How a training process runs: on which device, in which precision, and how long it waits for the others.

Each answer honours what the user asked for wherever they said it: the train flags, the accelerate config
file or `accelerate launch` flags (which reach us only as environment variables), or the sbatch knobs (which
become `accelerate launch` flags).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env


def wants_cpu() -> bool:
    """Train on the CPU: none of our GPUs is visible, or the accelerate config says `use_cpu: true`
    (`accelerate launch --cpu`). accelerate exports that as ACCELERATE_USE_CPU, but reads it only when it
    creates its state itself, so the process state we create first must be told."""
    return parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()


def start_processes(dist_timeout: float) -> PartialState:
    """This process's place among the launched ones (device, rank, process group). `dist_timeout` bounds
    every wait for the other processes: NCCL's own default (10 min) would abort a first run whose rank 0
    spends longer building the dataset caches, and no wait should last forever."""
    return PartialState(cpu=wants_cpu(), timeout=timedelta(seconds=dist_timeout))


def cores_per_local_process(num_processes: int) -> int:
    """The CPU threads each process on this machine should use: its share of the cores it may run on.
    `accelerate launch` sets OMP_NUM_THREADS=1 unless told otherwise, leaving most of a CPU idle."""
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", num_processes))
    return max(1, len(os.sched_getaffinity(0)) // max(1, local_processes))


def stall_message(error: BaseException, *, dist_timeout: float, worker_timeout: float) -> str | None:
    """One line for a wait that ran out (another process, or a DataLoader worker) or a lost peer; else None.

    gloo raises these as plain RuntimeErrors in the waiting process. (NCCL's watchdog aborts the process
    itself after its timeout, printing its own message.)
    """
    if not isinstance(error, RuntimeError):
        return None
    text, rank = str(error), os.environ.get("RANK", "0")
    if text.startswith("DataLoader timed out"):
        return (
            f"rank {rank}: a DataLoader worker produced no batch for {worker_timeout:g} s (--worker-timeout); "
            "it is stuck or far too slow (check the data files and the machine's load)"
        )
    if "Timed out waiting" in text:
        return (
            f"rank {rank}: waited longer than --dist-timeout {dist_timeout:g} s for the other processes of "
            "this run; on a first run over a large dataset rank 0 may still be preparing it: raise "
            "--dist-timeout, else a process is stuck"
        )
    if "Connection closed by peer" in text or "Connection reset by peer" in text:
        return f"rank {rank}: another process of this run stopped (its own output says why)"
    return None
