"""Stopping cleanly when the job is told to: SIGTERM or SIGUSR1 (a cluster's preemption notice) raises a flag that
every rank reads at the same step, the loop saves a checkpoint and exits with PREEMPTED_EXIT_CODE, and under
SLURM rank 0 requeues the job, which resumes from that checkpoint."""

from __future__ import annotations

import signal
import subprocess

import torch
from accelerate import Accelerator

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later", which is what a requeue does


class PreemptionFlag:
    """Notices SIGUSR1 (SLURM's advance warning) or SIGTERM (the launcher's stop) on any rank.

    The signals are blocked in this process, so DataLoader workers forked from it inherit the
    block: torchrun and SLURM signal a rank's whole process group, and torch's own SIGTERM handler
    in a worker would kill it while the rank still needs it. A handler also records the signal in
    case another thread takes it. The loop asks `requested()` at step boundaries, where every rank
    joins one reduction so that all of them stop at the same step. `close()` restores everything.
    """

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None  # the strongest signal this process has seen
        self.agreed: int | None = None  # the strongest any rank had seen when they last compared
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)

    def _handle(self, signum, frame) -> None:
        # Only ever upgrades, so a handler running in the middle of `requested()` loses nothing.
        if self.received is None or self.SIGNALS.index(signum) > self.SIGNALS.index(self.received):
            self.received = signum

    def _pending(self) -> int:
        for signum in signal.sigpending() & set(self.SIGNALS):  # blocked, so still pending: seen once more
            self._handle(signum, None)
        return self.SIGNALS.index(self.received) + 1 if self.received is not None else 0

    def requested(self, accelerator: Accelerator) -> bool:
        """True on every rank once any rank has a signal; `self.agreed` then holds the one all ranks agree on
        (SIGTERM over SIGUSR1: a cancel beats a warning)."""
        flag = torch.tensor(float(self.pending()), device=accelerator.device)
        if accelerator.num_processes > 1:
            flag = accelerator.reduce(flag, "max")
        return self.agree(int(flag.item()))

    def pending(self) -> int:
        """This rank's signal as a number to reduce with "max" across ranks (0: none)."""
        return self._pending()

    def agree(self, reduced: int) -> bool:
        """Take the maximum of every rank's `pending()`; returns whether the job is to stop."""
        if reduced:
            self.agreed = self.SIGNALS[reduced - 1]
        return bool(reduced)

    @property
    def wants_requeue(self) -> bool:
        """SLURM's advance warning (`--signal=USR1@...`, a preemption) asks for a requeue; SIGTERM, as
        `scancel JOBID` or a launcher's stop sends, means the user wants the job gone."""
        return self.agreed == signal.SIGUSR1

    def close(self) -> None:
        """Unblock the signals (a pending one is absorbed by our handler) and restore the old handlers."""
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.SIGNALS)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def requeue_if_slurm(job_id: str | None, say=print) -> None:
    """Put the SLURM job back in the queue; the rerun resumes from the checkpoint just written."""
    if not job_id:
        return
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode == 0:
        say(f"requeued SLURM job {job_id}")
    else:
        say(f"warning: scontrol requeue {job_id} failed: {result.stderr.strip()}")
