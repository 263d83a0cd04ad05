"""The DataLoaders over the split tables (splits.py): training windows (map-style; streams are stream.py's), whole
images for validation and prediction, and the batch object training moves to its device.

Every table has the same columns: `id` (string), `lr` and `hr` (`datasets.Image(decode=False)` cells: a local
file's path, or the encoded bytes of a saved or hub dataset). DataLoader workers (started as workers.py says) cut
windows from the decoded store (store.py) or, above its budget, decode pairs themselves; the training step
flips/rotates whole batches on its device (crops.py).
"""

from __future__ import annotations

import dataclasses
import multiprocessing.context
import signal
from collections.abc import Collection
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader

from insanesr_dist.data import pairs, store, workers
from insanesr_dist.data.crops import crop_draws, pair_window
from insanesr_dist.data.images import decode_rgb
from insanesr_dist.data.pairs import cell_name
from insanesr_dist.data.tensors import to_chw

# ---------------------------------------------------------------------------------------------
# Samples


def store_rows(table: datasets.Dataset) -> np.ndarray:
    """Each table row's row in the decoded store."""
    return np.asarray(table["store_row"], dtype=np.int64)


# crops_per_decode 0 here: consecutive samples of a batch share a pair, so a batch of 16 mixes 4 images.
AUTO_CROPS_PER_DECODE = 4


class TrainPairs(torch.utils.data.Dataset):
    """Map-style training samples: one pair's window per index.

    With the decoded store (`pixels`, store.py) a window is a slice of its memory-mapped arrays. Without it
    (above --store-gb) each worker decodes pairs, keeping them up to `cache_mb` (with persistent workers,
    later epochs then decode nothing), and `crops_per_decode` K > 1 (0: AUTO_CROPS_PER_DECODE) makes every K
    consecutive samples share one pair (a seeded choice per epoch): an epoch decodes 1/K of the pairs, K crops
    each. Consecutive samples fall in one batch, so the loader must not shuffle then (`shuffles`).

    `length` (--epoch-samples) sets the samples of an epoch: index i takes pair i mod the pair count, with the
    crop of sample i, so each repeat of a pair gets its own window (0: one sample per pair).
    """

    def __init__(
        self,
        table: datasets.Dataset,
        *,
        patch_size: int,
        scale: int,
        seed: int,
        cache_mb: int = 0,
        pixels: store.Store | None = None,
        crops_per_decode: int = 1,
        length: int = 0,
    ) -> None:
        self.table, self.patch_size, self.scale, self.seed = table, patch_size, scale, seed
        self.pixels, self.rows = pixels, store_rows(table) if pixels is not None else None
        self.length = length or len(table)
        self.crops_per_decode = (crops_per_decode or AUTO_CROPS_PER_DECODE) if pixels is None else 1
        self.shuffles = self.crops_per_decode == 1  # else the pairs' order is drawn here, per epoch
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, pair order), per worker process
        self._last: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None  # the pair decoded last
        # In shared memory: persistent workers, started once, must see each new epoch's value.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # per worker process
        self._cache_room = cache_mb * 2**20

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return self.length

    def _decoded(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self.pixels is not None:
            return self.pixels.pair(self.rows[index])
        pair = self._cache.get(index)
        if pair is None:
            pair = pairs.decode_pair(self.table[index], self.scale)
            size = pair[0].nbytes + pair[1].nbytes
            if size <= self._cache_room:
                self._cache[index], self._cache_room = pair, self._cache_room - size
        return pair

    def _pair_of(self, index: int) -> int:
        if self.crops_per_decode == 1:
            return index % len(self.table)
        epoch = self.epoch
        if self._order is None or self._order[0] != epoch:
            self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.table))
        return int(self._order[1][index // self.crops_per_decode % len(self.table)])

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """The sample's LR and HR windows (HxWx3 uint8, as stored) and its flip/rotation code, which the
        training step applies to the whole batch on its device (crops.augment)."""
        pair = self._pair_of(index)
        if self._last is None or self._last[0] != pair:
            self._last = pair, self._decoded(pair)
        return pair_window(*self._last[1], self.patch_size, self.scale, crop_draws(self.seed, self.epoch, index))


class EvalImages(torch.utils.data.Dataset):
    """Whole images for validation or prediction: (index, LR) or (index, LR, HR), uint8 CHW."""

    def __init__(
        self, table: datasets.Dataset, *, with_hr: bool, pixels: store.Store | None = None, scale: int = 4
    ) -> None:
        self.table, self.with_hr, self.scale = table, with_hr, scale
        self.pixels, self.rows = pixels, store_rows(table) if pixels is not None else None

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int):
        if self.pixels is not None:  # validation pairs come from the store too
            lr, hr = self.pixels.pair(self.rows[index])
            return (index, to_chw(lr), to_chw(hr)) if self.with_hr else (index, to_chw(lr))
        row = self.table[index]
        if not self.with_hr:
            return index, to_chw(decode_rgb(row["lr"], cell_name(row, "lr")))
        lr, hr = pairs.decode_pair(row, self.scale)
        return index, to_chw(lr), to_chw(hr)


def worker_context() -> multiprocessing.context.BaseContext:
    """The context DataLoader workers start with (workers.py): a fork server that has imported this module."""
    return workers.worker_context(__name__)


def start_worker_server(blocking: Collection[signal.Signals] = ()) -> None:
    """Start the DataLoader workers' fork server now (workers.start_worker_server): before blocking signals."""
    workers.start_worker_server(__name__, blocking=blocking)


def loader_kwargs(num_workers: int, persistent: bool = True, timeout: float = 0) -> dict[str, Any]:
    """Persistent workers start once per run, not once per epoch (seconds each on a small CPU), and keep
    their decoded-image caches; a streaming dataset's workers must restart to see its new epoch.
    `timeout`: seconds to wait for a worker's next batch before failing (0: forever)."""
    started = (
        {"multiprocessing_context": worker_context(), "timeout": timeout, "worker_init_fn": workers.keep_signal_mask()}
        if num_workers
        else {}
    )
    return {
        "num_workers": num_workers,
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": persistent and num_workers > 0,
        **started,
    }


@dataclasses.dataclass(frozen=True)
class WindowBatch:
    """A batch of training windows: (B, h, w, 3) LR and (B, sh, sw, 3) HR uint8, (B,) int64 transform codes.
    Numpy arrays as a worker hands them over (collate_windows); tensors once pinned or moved.

    Not a tuple: the DataLoader's pin step and accelerate's `send_to_device` walk a tuple and pass numpy arrays
    through untouched, so the copies to the GPU would read pageable memory and block the step. Both call an
    object's own `pin_memory()` and `to()` instead.
    """

    lr: np.ndarray | torch.Tensor
    hr: np.ndarray | torch.Tensor
    codes: np.ndarray | torch.Tensor

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(torch.as_tensor(a) for a in (self.lr, self.hr, self.codes))  # numpy: no copy

    def pin_memory(self, device: Any = None) -> WindowBatch:
        """Page-locked copies (the DataLoader's pin thread calls this), which a GPU copies from asynchronously.
        `device` is ignored, as by `Tensor.pin_memory`: pinned memory serves every GPU."""
        return WindowBatch(*(t.pin_memory() for t in self._tensors()))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> WindowBatch:
        """The batch as tensors on `device` (accelerate's `send_to_device` calls this for a prepared loader)."""
        return WindowBatch(*(t.to(device, non_blocking=non_blocking) for t in self._tensors()))


def collate_windows(samples: list[tuple[np.ndarray, np.ndarray, int]]) -> WindowBatch:
    """A batch of training windows, as numpy arrays.

    Numpy, not tensors, because a worker pickles arrays by value through its pipe in one write, while a tensor
    is handed over in shared memory through a file descriptor passed over a socket: a round trip per tensor and
    batch, which for crops this small costs more than copying their bytes.
    """
    lr, hr, codes = zip(*samples)
    return WindowBatch(np.stack(lr), np.stack(hr), np.array(codes, np.int64))


def train_loader(
    table: datasets.Dataset,
    *,
    batch_size: int,
    patch_size: int,
    scale: int,
    seed: int,
    num_workers: int,
    cache_mb: int = 0,
    timeout: float = 0,
    pixels: store.Store | None = None,
    crops_per_decode: int = 1,
    epoch_samples: int = 0,
) -> DataLoader:
    samples = TrainPairs(
        table,
        patch_size=patch_size,
        scale=scale,
        seed=seed,
        cache_mb=cache_mb,
        pixels=pixels,
        crops_per_decode=crops_per_decode,
        length=epoch_samples,
    )
    # drop_last: every step sees a full batch, so the loss scale does not change at epoch ends.
    return DataLoader(
        samples,
        batch_size=batch_size,
        shuffle=samples.shuffles,
        drop_last=len(samples) >= batch_size,
        collate_fn=collate_windows,
        **loader_kwargs(num_workers, timeout=timeout),
    )


def eval_loader(
    table: datasets.Dataset, *, with_hr: bool, num_workers: int, timeout: float = 0, pixels: store.Store | None = None
) -> DataLoader:
    # Batch of one: validation and test images may all differ in size.
    return DataLoader(
        EvalImages(table, with_hr=with_hr, pixels=pixels),
        batch_size=1,
        shuffle=False,
        **loader_kwargs(num_workers, timeout=timeout),
    )
