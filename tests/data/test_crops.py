"""Crops (crops.py): every way of cutting them gives the reference's pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from insanesr_dist.data import crops as C
from insanesr_dist.data import loaders
from insanesr_dist.data.splits import load_splits


def test_the_vectorised_draws_equal_the_scalar_ones():
    keys = np.array([0, 1, 7, 2**40 + 3, 123456789])
    many = C.crop_draws_many(2**63 + 5, 9, keys)
    assert [tuple(int(v) for v in row) for row in many] == [C.crop_draws(2**63 + 5, 9, int(k)) for k in keys]
    assert len({C.crop_draws(0, e, k) for e in range(4) for k in range(64)}) == 256


@pytest.mark.parametrize("patch", [5, 0])
@pytest.mark.parametrize("tables", [True, False])  # index tables for crops; per-image rot90/flip for whole images
def test_windows_augmented_as_a_batch_equal_the_reference(patch, tables, monkeypatch):
    if not tables:
        monkeypatch.setattr(C, "_TABLE_PIXELS", 0)
    rng = np.random.default_rng(0)
    lr = rng.integers(0, 256, (12, 17, 3), np.uint8)
    hr = rng.integers(0, 256, (48, 68, 3), np.uint8)
    draws = [C.crop_draws(1, 2, k) for k in range(48)]
    windows = [C.pair_window(lr, hr, patch, 4, d) for d in draws]
    assert len({w[2] for w in windows}) == (8 if patch else 4)  # non-square whole images: half turns, flips
    got_lr, got_hr = C.augment(
        *(torch.stack([torch.from_numpy(w[i]) for w in windows]) for i in (0, 1)), torch.tensor([w[2] for w in windows])
    )
    for k, d in enumerate(draws):
        want_lr, want_hr = C.random_pair_crop(lr, hr, patch, 4, d)
        assert torch.equal(got_lr[k], torch.from_numpy(want_lr.transpose(2, 0, 1).copy()))
        assert torch.equal(got_hr[k], torch.from_numpy(want_hr.transpose(2, 0, 1).copy()))
    assert got_lr.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("lr_size", [(130, 130), (100, 175)])  # HR over the tables' 512x512: square, non-square
def test_whole_images_above_the_table_size_are_augmented_as_the_reference(lr_size):
    rng = np.random.default_rng(1)
    lr = rng.integers(0, 256, (8, *lr_size, 3), np.uint8)
    hr = rng.integers(0, 256, (8, lr_size[0] * 4, lr_size[1] * 4, 3), np.uint8)
    assert hr.shape[1] * hr.shape[2] > C._TABLE_PIXELS
    codes = torch.arange(8)  # each code once (a non-square image's codes draw no quarter turn)
    got_lr, got_hr = C.augment(torch.from_numpy(lr), torch.from_numpy(hr), codes)
    for k in range(8):
        want_lr, want_hr = C.random_pair_crop(lr[k], hr[k], 0, 4, (0, 0, k // 2, k % 2))
        assert torch.equal(got_lr[k], torch.from_numpy(want_lr.transpose(2, 0, 1).copy()))
        assert torch.equal(got_hr[k], torch.from_numpy(want_hr.transpose(2, 0, 1).copy()))
    assert got_hr.is_contiguous(memory_format=torch.channels_last)


def test_whole_images_are_augmented_without_reading_the_codes_on_the_host():
    """On a GPU a host read of the codes (.tolist(), .item()) waits for the device; on `meta` it raises."""
    lr = torch.empty(4, 130, 130, 3, dtype=torch.uint8, device="meta")
    hr = torch.empty(4, 520, 520, 3, dtype=torch.uint8, device="meta")
    got_lr, got_hr = C.augment(lr, hr, torch.empty(4, dtype=torch.int64, device="meta"))
    assert (got_hr.device.type, got_hr.dtype, got_hr.shape) == ("meta", torch.uint8, (4, 3, 520, 520))
    assert got_lr.shape == (4, 3, 130, 130)


@pytest.mark.parametrize("length", [0, 23])  # one sample per pair; pairs repeated (--epoch-samples)
def test_a_device_store_cuts_the_same_batches_as_the_workers(tmp_path, length):
    from conftest import make_pair_folder

    folder = make_pair_folder(tmp_path / "d", num_train=10, num_test=0, lr_size=(14, 22))
    splits = load_splits(folder, val_fraction=0.2, seed=0, store_dir=str(tmp_path / "s"), say=lambda line: None)
    pairs = C.DevicePairs(
        splits.pixels.pair, loaders.store_rows(splits.train), patch=6, scale=4, seed=5, device=torch.device("cpu")
    )
    assert pairs.nbytes == splits.pixels.decoded_bytes * len(splits.train) // 10
    plans, samples = (
        C.DevicePlans(pairs, length=length),
        loaders.TrainPairs(splits.train, patch_size=6, scale=4, seed=5, pixels=splits.pixels, length=length),
    )
    assert len(plans) == len(samples) == (length or len(splits.train))
    for epoch in (0, 3):
        plans.set_epoch(epoch)
        samples.set_epoch(epoch)
        order = torch.randperm(len(samples)).tolist()
        plan = next(iter(DataLoader(plans, batch_size=len(order), sampler=order)))
        cut_lr, cut_hr = pairs.cut(plan)
        batch = next(
            iter(
                DataLoader(
                    samples, batch_size=len(order), sampler=order, num_workers=1, collate_fn=loaders.collate_windows
                )
            )
        )
        want_lr, want_hr = C.augment(*map(torch.from_numpy, (batch.lr, batch.hr, batch.codes)))
        assert torch.equal(cut_lr, want_lr) and torch.equal(cut_hr, want_hr)


@pytest.mark.slow
def test_training_from_a_device_store_equals_training_from_workers(pair_folder, tmp_path):
    """--device-store on (here the CPU is the device) cuts the same batches, so the weights come out equal."""
    from safetensors.torch import load_file

    from conftest import TINY, run_cli

    runs = {}
    for mode in ("on", "off"):
        out = tmp_path / mode
        result = run_cli(
            "insanesr-dist",
            "train",
            "--data",
            str(pair_folder),
            *TINY,
            "--epochs",
            "1",
            "--max-steps",
            "4",
            "--panel-images",
            "0",
            "--mixed-precision",
            "no",
            "--device-store",
            mode,
            "--output-dir",
            str(out),
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert ("device store: 0.00 GB of decoded training pairs on cpu" in result.stdout) == (mode == "on")
        runs[mode] = load_file(out / "latest.safetensors")
    assert all(torch.equal(runs["on"][k], runs["off"][k]) for k in runs["off"])
