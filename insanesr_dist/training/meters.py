"""Speed meters of the training loop: the time spent waiting for batches, and samples/s between log lines."""

from __future__ import annotations

import time


class DataWait:
    """Seconds the loop spent waiting for its next batch: the data path is the bottleneck when their share of
    the step time is large (on a GPU, whose steps run asynchronously, the wait overlaps the device's work)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self, batches):
        batches = iter(batches)
        while True:
            started = time.perf_counter()
            batch = next(batches, None)
            self.seconds += time.perf_counter() - started
            if batch is None:
                return
            yield batch


class Interval:
    """The training speed since the previous reading (--log-every): samples/s and the share of the time spent
    waiting for batches."""

    def __init__(self, data_wait: DataWait, batches: int, *, samples_per_batch: int) -> None:
        self.data_wait, self.samples_per_batch = data_wait, samples_per_batch
        self.started, self.batches, self.waited = time.perf_counter(), batches, data_wait.seconds

    def rates(self, batches: int) -> tuple[float, float]:
        """Samples/s and the data-wait share since the last reading, `batches` the batch count now."""
        now = time.perf_counter()
        samples_per_s = (batches - self.batches) * self.samples_per_batch / (now - self.started)
        wait_share = (self.data_wait.seconds - self.waited) / (now - self.started)
        self.started, self.batches, self.waited = now, batches, self.data_wait.seconds
        return samples_per_s, wait_share

    def leave_out(self, seconds: float) -> None:
        """Time that was not training (a mid-epoch evaluation): not counted in the next reading."""
        self.started += seconds
