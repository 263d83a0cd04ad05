"""Training crops: which window of a pair a sample takes and how it is flipped or rotated, and cutting them.

A sample's window and transform are a pure function of (seed, epoch, sample), so they depend on no worker
count, process count, batch or iteration order, and every way of cutting gives the same pixels:
  - on the host, one sample at a time (`pair_window`, in DataLoader workers): a plain copy of the window, as
    stored (HxWx3); the flip/rotation is left to `augment`, which applies a whole batch's on the device in one
    gather (rotating 3-byte pixels one sample at a time costs more than the crop itself);
  - on the device, a whole batch at once from a device-resident store (`DevicePairs`): index arithmetic and
    one gather per batch, no per-sample Python.
`random_pair_crop` is the reference both are tested against.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    """One step of the splitmix64 mixer (Steele et al.): 64 well-mixed bits of any 64-bit input."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _splitmix64_many(z: np.ndarray) -> np.ndarray:
    """`_splitmix64` of each uint64 (numpy's uint64 arithmetic wraps as the masks above do)."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def crop_draws(seed: int, epoch: int, key: int) -> tuple[int, int, int, int]:
    """The crop/augment randomness of one sample: four 64-bit draws. A hash, not a numpy Generator: seeding
    one costs ~30 us, a large part of a whole crop's budget."""
    base = _splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ (epoch & _MASK64)) ^ (key & _MASK64))
    return tuple(_splitmix64((base + i) & _MASK64) for i in range(4))


def crop_draws_many(seed: int, epoch: int, keys: np.ndarray) -> np.ndarray:
    """`crop_draws` of many samples at once: an (N, 4) uint64 array."""
    with np.errstate(over="ignore"):
        start = np.full(1, seed & _MASK64, np.uint64)
        start = _splitmix64_many(_splitmix64_many(start) ^ np.uint64(epoch & _MASK64))
        base = _splitmix64_many(start ^ np.asarray(keys).astype(np.uint64))
        return _splitmix64_many(base[:, None] + np.arange(4, dtype=np.uint64))


def transform_code(draws, height: int, width: int) -> int:
    """0..7: quarter turns * 2 + flip. A non-square output keeps its shape: half turns and flips only."""
    turns, flip = draws[2] % 4, draws[3] % 2
    if height != width:
        turns &= 2  # a quarter turn would swap height and width: whole non-square images keep their shape
    return int(turns * 2 + flip)


def random_pair_crop(
    lr: np.ndarray, hr: np.ndarray, patch: int, scale: int, draws: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The reference: aligned random crop (LR edge `patch`, HR edge `scale*patch`; 0 keeps the whole image),
    then one of the 8 flips/90-degree rotations (of the 4 that keep a non-square image's shape), applied
    identically to both; `draws` (crop_draws) choose them. Views, no copy."""
    lr, hr, code = pair_window(lr, hr, patch, scale, draws, copy=False)
    lr, hr = np.rot90(lr, code // 2), np.rot90(hr, code // 2)
    if code % 2:
        lr, hr = lr[:, ::-1], hr[:, ::-1]
    return lr, hr


def pair_window(
    lr: np.ndarray, hr: np.ndarray, patch: int, scale: int, draws, *, copy: bool = True
) -> tuple[np.ndarray, np.ndarray, int]:
    """The aligned window of a sample (HxWx3, as stored: a plain copy of rows) and its transform code,
    which `augment` applies."""
    if patch:
        y = draws[0] % (lr.shape[0] - patch + 1)
        x = draws[1] % (lr.shape[1] - patch + 1)
        lr = lr[y : y + patch, x : x + patch]
        hr = hr[y * scale : (y + patch) * scale, x * scale : (x + patch) * scale]
    code = transform_code(draws, *lr.shape[:2])
    return (np.array(lr), np.array(hr), code) if copy else (lr, hr, code)  # a copy: the store is read-only


_TABLE_PIXELS = 512 * 512  # up to HR crops of 512 (LR patch 128): 16 MB of int64 per table set


@functools.lru_cache(maxsize=16)
def _transform_tables(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(8, height*width): for each transform code, the source pixel of each output pixel (row-major). Built
    by applying random_pair_crop's own numpy operations to an array of pixel numbers, so they agree."""
    pixels = np.arange(height * width).reshape(height, width)
    tables = []
    for code in range(8):
        turns = code // 2 if height == width else code // 2 & 2
        moved = np.rot90(pixels, turns)
        tables.append((moved[:, ::-1] if code % 2 else moved).ravel())
    return torch.from_numpy(np.stack(tables)).to(device)


@functools.lru_cache(maxsize=4)
def _transform_steps(square: bool, device: torch.device) -> torch.Tensor:
    """(8, 3) bool: for each transform code, whether it transposes, then flips the rows, then the columns (any
    flip/rotation is one such sequence). Found by matching random_pair_crop itself on a small image of distinct
    pixels, so they agree; a non-square image's code never transposes (it keeps its shape)."""
    probe = np.arange(9 if square else 6).reshape(3 if square else 2, 3)
    steps = []
    for code in range(8):
        want = random_pair_crop(probe, probe, 0, 1, (0, 0, code // 2, code % 2))[0]
        for transpose, rows, cols in itertools.product((False, True), repeat=3):
            got = probe.T if transpose else probe
            got = got[::-1] if rows else got
            got = got[:, ::-1] if cols else got
            if got.shape == want.shape and np.array_equal(got, want):
                steps.append((transpose, rows, cols))
                break
    return torch.tensor(steps, device=device)


def _transformed(images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8, each flipped/rotated by its code -> (B, 3, H, W) (channels-last memory)."""
    batch, height, width, _ = images.shape
    if height * width > _TABLE_PIXELS:  # whole images (--patch-size 0): a table per size would cost too much
        # Each step applied to the whole batch and kept where a sample's code takes it: no per-sample Python,
        # and no read of the codes on the host (which would wait for the device).
        steps = _transform_steps(height == width, images.device)[codes.long()][:, :, None, None, None]  # (B, 3, ...)
        if height == width:
            images = torch.where(steps[:, 0], images.transpose(1, 2), images)
        images = torch.where(steps[:, 1], images.flip(1), images)
        images = torch.where(steps[:, 2], images.flip(2), images)
        return images.contiguous().permute(0, 3, 1, 2)
    sources = _transform_tables(height, width, images.device)[codes.long()]  # (B, H*W)
    pixels = images.reshape(batch, height * width, 3)[torch.arange(batch, device=images.device)[:, None], sources]
    return pixels.view(batch, height, width, 3).permute(0, 3, 1, 2)


def augment(lr: torch.Tensor, hr: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of windows (B, H, W, 3) uint8, as workers cut them, with each sample's flip/rotation applied:
    (B, 3, H, W) uint8 tensors (channels-last memory, the model's own format), on the windows' device."""
    return _transformed(lr, codes), _transformed(hr, codes)


class DevicePairs:
    """Decoded training pairs resident on a device (--device-store): each batch's windows and transforms are
    cut there by index arithmetic and one gather per image side; the host only sends the batch's row numbers.

    `rows[i]` is training sample i's row in the decoded store; `pairs(row)` gives its (LR, HR) arrays.
    """

    def __init__(self, pairs, rows: np.ndarray, *, patch: int, scale: int, seed: int, device: torch.device) -> None:
        if patch <= 0:
            raise ValueError("a device store cuts crops: it needs a patch size > 0")
        self.patch, self.scale, self.seed, self.device = patch, scale, seed, device
        sizes = [pairs(int(r))[0].shape[:2] for r in rows]
        self.heights = np.array([h for h, _ in sizes], np.int64)
        self.widths = np.array([w for _, w in sizes], np.int64)
        lr_bytes = self.heights * self.widths * 3
        self.lr_start = np.concatenate([[0], np.cumsum(lr_bytes)[:-1]])
        self.hr_start = self.lr_start * scale * scale
        self.lr = torch.empty(int(lr_bytes.sum()), dtype=torch.uint8, device=device)
        self.hr = torch.empty(int(lr_bytes.sum()) * scale * scale, dtype=torch.uint8, device=device)
        for i, row in enumerate(rows):  # one pair at a time: host memory stays at one pair
            lr, hr = pairs(int(row))
            n = lr_bytes[i]
            self.lr[self.lr_start[i] : self.lr_start[i] + n].copy_(torch.from_numpy(np.array(lr).ravel()))
            hr_at = self.hr_start[i]
            self.hr[hr_at : hr_at + n * scale * scale].copy_(torch.from_numpy(np.array(hr).ravel()))
        self.nbytes = self.lr.numel() + self.hr.numel()
        self._lr_start, self._hr_start, self._widths = (
            torch.as_tensor(a, device=device) for a in (self.lr_start, self.hr_start, self.widths)
        )

    def plan(self, indices: np.ndarray, epoch: int) -> torch.Tensor:
        """(B, 4) int64 [pair, y, x, code] of a batch of samples, vectorised on the host. Sample i is a window
        of pair i mod the pair count (an epoch may repeat the pairs, see DevicePlans) with sample i's draws."""
        indices = np.asarray(indices, np.int64)
        draws = crop_draws_many(self.seed, epoch, indices)
        indices = indices % len(self.heights)
        h, w = self.heights[indices], self.widths[indices]
        y = (draws[:, 0] % (h - self.patch + 1).astype(np.uint64)).astype(np.int64)
        x = (draws[:, 1] % (w - self.patch + 1).astype(np.uint64)).astype(np.int64)
        code = (draws[:, 2] % np.uint64(4)).astype(np.int64) * 2 + (draws[:, 3] % np.uint64(2)).astype(np.int64)
        return torch.from_numpy(np.stack([indices, y, x, code], 1))

    def cut(self, plan: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch `plan` describes: (B, 3, P, P) LR and (B, 3, sP, sP) HR uint8, transformed, on the device."""
        plan = plan.to(self.device, non_blocking=True)
        index, y, x, code = plan.unbind(1)
        lr = self._windows(self.lr, self._lr_start, index, y, x, self.patch)
        hr = self._windows(self.hr, self._hr_start, index, y * self.scale, x * self.scale, self.patch * self.scale)
        return augment(lr, hr, code)

    def _windows(self, flat: torch.Tensor, starts: torch.Tensor, index, y, x, size: int) -> torch.Tensor:
        """(B, size, size, 3): the windows at (y, x) of the batch's images in the flat pixel buffer."""
        starts, widths = starts[index], self._widths[index] * (size // self.patch)
        offsets = torch.arange(size, device=self.device)
        rows = (y[:, None] + offsets)[:, :, None] * widths[:, None, None]
        first = starts[:, None, None] + (rows + (x[:, None] + offsets)[:, None, :]) * 3  # (B, size, size)
        return flat[first[..., None] + torch.arange(3, device=self.device)]


class DevicePlans(torch.utils.data.Dataset):
    """What a DataLoader over a `DevicePairs` store yields: each sample's [index, y, x, code] (computed for a
    whole batch at once). The sampler, its sharding over ranks and resuming work as for `TrainPairs`, and so
    does `length` (--epoch-samples: samples per epoch; 0, one per pair)."""

    def __init__(self, pairs: DevicePairs, length: int = 0) -> None:
        self.pairs, self.length = pairs, length or len(pairs.heights)
        self._epoch = torch.zeros((), dtype=torch.int64)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        return list(self.pairs.plan(np.asarray(indices), int(self._epoch)))
