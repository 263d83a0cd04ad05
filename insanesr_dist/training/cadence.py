"""When the loop reads the decisions every rank must take at the same step: whether the job is preempted, and
whether a time-based checkpoint (--checkpoint-every-minutes) is due.

A read is one reduction across ranks plus a host sync. On a CPU it costs nothing (every op is synchronous
anyway), so it happens every step. On a GPU it stalls the queue of work the host keeps ahead of the device, so
there it happens about every `READ_SECONDS` of training: often enough to act on a cluster's preemption warning
(SLURM's USR1 comes a configured time ahead, typically a minute or two), whatever --log-every is. Ranks must read
at the same steps, so the gap to the next read is computed from values every rank received in the same
reduction: the slowest rank's seconds per step, measured between two reads (each read ends in a sync, so that
time is the device's, not how far ahead the host ran).
"""

from __future__ import annotations

import time

import torch
from accelerate import Accelerator

from insanesr_dist.training.preemption import PreemptionFlag

READ_SECONDS = 5.0


class StepChecks:
    """The reads of the preemption flag and the checkpoint timer, at steps every rank agrees on."""

    def __init__(self, *, every_step: bool, checkpoint_minutes: float, step: int) -> None:
        self.every_step = every_step
        self.checkpoint_seconds = 60 * checkpoint_minutes
        self.next_read = step + 1
        self._last_read = (step, time.monotonic())
        self._pace = 0.0  # this rank's seconds per step between its last two reads (0: not measured yet)
        self._last_save = time.monotonic()

    def due(self, step: int) -> bool:
        """Whether every rank reads at `step` (the same answer on every rank)."""
        return step >= self.next_read

    def read(self, accelerator: Accelerator, preemption: PreemptionFlag, step: int) -> tuple[bool, bool]:
        """(preempted, a checkpoint is due by time), agreed by every rank; every rank must call it at `step`."""
        expired = bool(self.checkpoint_seconds) and time.monotonic() - self._last_save >= self.checkpoint_seconds
        values = torch.tensor([preemption.pending(), self._pace, float(expired)], device=accelerator.device)
        if accelerator.num_processes > 1:
            values = accelerator.reduce(values, "max")
        signal, pace, expired = values.tolist()  # the sync
        now = time.monotonic()
        last_step, last_time = self._last_read
        self._pace, self._last_read = (now - last_time) / max(1, step - last_step), (step, now)
        gap = 1 if self.every_step or pace <= 0 else max(1, int(READ_SECONDS / pace))
        self.next_read = step + gap
        return preemption.agree(int(signal)), bool(expired)

    def saved(self) -> None:
        """A checkpoint was written: the timer starts again."""
        self._last_save = time.monotonic()


def due(step: int, every_steps: int) -> bool:
    """Whether a step form (--val-every-steps, --submit-every-steps, --checkpoint-every) is due at `step`."""
    return bool(every_steps) and step % every_steps == 0


def evaluates_at(epoch: int, every: int, last: int) -> bool:
    """Whether an epoch validates (--val-every) or writes its submission (--submit-every): every `every`-th
    epoch, and always the last one, so a run ends with scored best/latest weights and a CSV."""
    return epoch % every == 0 or epoch == last
