"""When the loop reads the preemption flag and the checkpoint timer: every step on a CPU, every few seconds of
training on a GPU, at steps every rank computes alike."""

import signal
import time

import pytest
import torch

from insanesr_dist.training import cadence
from insanesr_dist.training.cadence import StepChecks
from insanesr_dist.training.preemption import PreemptionFlag


class Ranks:
    """The checks' view of an accelerator of `n` ranks whose reduction ("max") also sees `others`: what the
    other ranks send."""

    def __init__(self, n: int = 1, others=None) -> None:
        self.device, self.num_processes, self.others = torch.device("cpu"), n, others

    def reduce(self, tensor, reduction):
        assert reduction == "max"
        return torch.maximum(tensor, self.others) if self.others is not None else tensor


@pytest.fixture
def flag():
    flag = PreemptionFlag()
    yield flag
    flag.close()


def test_a_cpu_reads_every_step(flag):
    checks = StepChecks(every_step=True, checkpoint_minutes=0, step=7)
    for step in range(8, 12):
        assert checks.due(step)
        assert checks.read(Ranks(), flag, step) == (False, False)
        assert checks.next_read == step + 1


def test_a_gpu_reads_about_every_read_seconds_at_the_slowest_ranks_pace(flag, monkeypatch):
    monkeypatch.setattr(cadence, "READ_SECONDS", 1.0)
    checks = StepChecks(every_step=False, checkpoint_minutes=0, step=0)
    assert checks.due(1) and not checks.due(0)
    checks.read(Ranks(), flag, 1)  # no pace measured yet: read again at the next step
    assert checks.next_read == 2
    time.sleep(0.1)  # one step of at least 0.1 s between the two reads
    checks.read(Ranks(), flag, 2)
    time.sleep(0.05)
    checks.read(Ranks(), flag, 3)  # sends the pace measured between the reads at steps 1 and 2
    gap = checks.next_read - 3
    assert 1 <= gap <= 10 and not checks.due(3 + gap - 1) and checks.due(3 + gap)
    # Another rank 20x slower: every rank reads at that rank's pace, so the gap is the same everywhere.
    slow = torch.tensor([0.0, 2.0, 0.0])
    checks.read(Ranks(2, others=slow), flag, checks.next_read)
    assert checks.next_read - (3 + gap) == 1  # 1 s / 2 s per step: the next step


def test_a_signal_on_any_rank_stops_every_rank(flag):
    checks = StepChecks(every_step=True, checkpoint_minutes=0, step=0)
    usr1 = PreemptionFlag.SIGNALS.index(signal.SIGUSR1) + 1
    assert checks.read(Ranks(2, others=torch.tensor([float(usr1), 0, 0])), flag, 1) == (True, False)
    assert flag.agreed == signal.SIGUSR1 and flag.wants_requeue


def test_the_checkpoint_timer_expires_on_the_slowest_clock_and_restarts_when_saved(flag):
    checks = StepChecks(every_step=True, checkpoint_minutes=0.002, step=0)  # 0.12 s
    assert checks.read(Ranks(), flag, 1) == (False, False)
    assert checks.read(Ranks(2, others=torch.tensor([0.0, 0.0, 1.0])), flag, 2) == (False, True)  # another rank's
    time.sleep(0.15)
    assert checks.read(Ranks(), flag, 3) == (False, True)
    checks.saved()
    assert checks.read(Ranks(), flag, 4) == (False, False)
