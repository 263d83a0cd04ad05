"""Where the training loop's batches come from, epoch by epoch: a map-style loader's seeded epochs or a stream's
endless passes; the device store (--device-store); and a batch as the model's float inputs."""

from __future__ import annotations

import itertools
import math

import torch
from torch.utils.data import DataLoader

from insanesr_dist.data.crops import DevicePairs, augment
from insanesr_dist.data.loaders import store_rows


class EpochBatches:
    """A map-style loader's epochs: one pass over the training set (or --epoch-samples samples), in an order
    (and with crops) seeded by the epoch. `skip_first_batches` is accelerate's, which resumes a prepared loader
    mid-epoch without reading the batches it skips."""

    def __init__(self, loader: DataLoader, *, grad_accum: int, skip_first_batches) -> None:
        self.loader, self.skip_first_batches = loader, skip_first_batches
        self.steps_per_epoch = math.ceil(len(loader) / grad_accum)

    def of_epoch(self, epoch: int, skip: int, steps: int):
        """The epoch's batches after the first `skip` (trained on before an interruption), and how many
        batches the whole epoch has."""
        return epoch_batches(self.loader, epoch, skip, self.skip_first_batches), len(self.loader)


class StreamBatches:
    """A stream's epochs: a stream has no length, so an epoch is a number of optimizer steps, taken from the
    endless stream (`loader`, a data/stream.StreamLoader), which holds its own position: a resumed epoch goes on
    at the next batch without reading the consumed ones again."""

    def __init__(self, loader, *, grad_accum: int, steps_per_epoch: int) -> None:
        self.loader, self.grad_accum, self.steps_per_epoch = loader, grad_accum, steps_per_epoch
        self._batches = None  # one iteration for the whole run: its workers are not restarted each epoch

    def of_epoch(self, epoch: int, skip: int, steps: int):
        """Batches `skip`.. of the epoch's `steps` optimizer steps, and how many batches that is."""
        limit = steps * self.grad_accum
        if self._batches is None:
            self._batches = iter(self.loader)
        return itertools.islice(self._batches, limit - skip), limit

    def close(self) -> None:
        """Stop the stream's DataLoader workers now. Left to the interpreter's exit, they would be sent SIGTERM,
        which training's workers block (training/preemption.py), and the exit would wait for them forever."""
        if self._batches is not None:
            self._batches.close()
            self._batches = None


def epoch_batches(loader: DataLoader, epoch: int, skip: int, skip_first_batches=None):
    """The epoch's batches in its seeded order (sampler and crops follow `epoch`), minus the first
    `skip` ones already trained on before an interruption."""
    loader.set_epoch(epoch)  # accelerate's loader passes the epoch to its sampler...
    # ...but, with several processes (a sharded batch sampler), not to the dataset (accelerate's
    # DataLoaderShard.set_epoch): without this, every epoch would cut the same crops.
    loader.dataset.set_epoch(epoch)
    return skip_first_batches(loader, skip) if skip else loader


def device_pairs(
    mode: str, train, pixels, *, streaming: bool, patch: int, scale: int, seed: int, device: torch.device
) -> tuple[DevicePairs | None, str]:
    """The training pairs on the device (--device-store `mode`: on, off, auto), or None, and a line saying which
    and why. `pixels` is the decoded store of the `train` table (None without one)."""
    why_not = (
        "--device-store off"
        if mode == "off"
        else "streaming"
        if streaming
        else "no decoded store"
        if pixels is None
        else "--patch-size 0"
        if not patch
        else None
    )
    rows = store_rows(train) if why_not is None else None
    size = pixels.nbytes(rows) if why_not is None else 0
    if why_not is None and mode == "auto":
        room = torch.cuda.get_device_properties(device).total_memory // 4 if device.type == "cuda" else 0
        why_not = (
            "auto: not on a GPU"
            if device.type != "cuda"
            else f"auto: {size / 1e9:.2f} GB is above a quarter of the GPU's memory"
            if size > room
            else None
        )
    if why_not is not None:
        return None, f"device store: off ({why_not}); DataLoader workers cut the crops"
    pairs = DevicePairs(pixels.pair, rows, patch=patch, scale=scale, seed=seed, device=device)
    return pairs, f"device store: {pairs.nbytes / 1e9:.2f} GB of decoded training pairs on {device}; crops cut there"


def model_inputs(batch, device: torch.device, pairs: DevicePairs | None, channels_last: bool):
    """A training batch as float images in [0, 1] on the device, each sample flipped/rotated as drawn."""
    if pairs is not None:
        lr, hr = pairs.cut(batch)
    else:
        # A prepared loader's batch is on the device already (accelerate called its `to`); a stream's is not.
        batch = batch.to(device, non_blocking=True)
        lr, hr = augment(batch.lr, batch.hr, batch.codes)
    lr, hr = lr.float().div_(255), hr.float().div_(255)  # channels-last memory, as augment makes it
    return (lr, hr) if channels_last else (lr.contiguous(), hr.contiguous())
