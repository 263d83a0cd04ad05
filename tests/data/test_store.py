"""The decoded-pair store (store.py): same crops as decoding, reuse, invalidation, budgets, a full disk."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, make_pair_folder, run_tree, write_png
from insanesr_dist.data import loaders, sources, store
from insanesr_dist.data.splits import load_splits
from insanesr_dist.errors import UserError


@pytest.fixture
def folder(tmp_path):
    return make_pair_folder(tmp_path / "d", num_train=12, num_test=0, lr_size=(20, 28))


def _load(folder, tmp_path, lines=None, **options):
    say = lines.append if lines is not None else lambda line: None
    return load_splits(folder, val_fraction=0.25, seed=0, store_dir=str(tmp_path / "store"), say=say, **options)


def _only_store(tmp_path):
    (root,) = [p for p in (tmp_path / "store").iterdir() if not p.name.startswith(".")]
    return root


def test_crops_and_validation_images_from_the_store_equal_decoded_ones(folder, tmp_path):
    splits = _load(folder, tmp_path)
    assert splits.pixels is not None
    crops = dict(patch_size=8, scale=4, seed=3)
    stored, decoded = (loaders.TrainPairs(splits.train, pixels=p, **crops) for p in (splits.pixels, None))
    for epoch in (0, 1):
        stored.set_epoch(epoch)
        decoded.set_epoch(epoch)
        for i in range(len(stored)):
            (lr, hr, code), (lr_d, hr_d, code_d) = stored[i], decoded[i]
            assert lr.dtype == np.uint8 and np.array_equal(lr, lr_d) and np.array_equal(hr, hr_d) and code == code_d
    val_stored, val_decoded = (loaders.EvalImages(splits.val, with_hr=True, pixels=p) for p in (splits.pixels, None))
    for i in range(len(val_stored)):
        for a, b in zip(val_stored[i][1:], val_decoded[i][1:]):
            assert torch.equal(a, b)


def test_a_second_run_decodes_nothing_and_a_changed_file_is_decoded_again(folder, tmp_path):
    lines = []
    _load(folder, tmp_path, lines)
    root = _only_store(tmp_path)
    parts = {p.name: p.stat().st_mtime_ns for p in root.glob("part-*.u8")}
    lines.clear()
    _load(folder, tmp_path, lines)
    assert any("reused (nothing decoded)" in line for line in lines), lines
    assert {p.name: p.stat().st_mtime_ns for p in root.glob("part-*.u8")} == parts

    changed = folder / "train" / "HR" / "img_004.png"
    new_hr = np.full((80, 112, 3), 77, np.uint8)
    write_png(changed, new_hr)
    lines.clear()
    splits = _load(folder, tmp_path, lines)
    named = [line for line in lines if str(changed) in line]
    assert len(named) == 1 and "decoding the pair again" in named[0], lines
    (row,) = [r for t in (splits.train, splits.val) for i, r in zip(t["id"], t["store_row"]) if i == "img_004.png"]
    assert np.array_equal(splits.pixels.pair(row)[1], new_hr)


def test_a_store_whose_part_file_lost_its_end_is_built_again(folder, tmp_path, capsys):
    _load(folder, tmp_path)
    (part, *_) = _only_store(tmp_path).glob("part-*.u8")
    with open(part, "r+b") as f:  # as an operating-system crash can leave a file that was not fsynced
        f.truncate(part.stat().st_size - 1)
    capsys.readouterr()
    splits = _load(folder, tmp_path)
    assert "pairs checked: decoded in" in capsys.readouterr().out
    for row in range(12):
        assert splits.pixels.pair(row)[1].shape == (80, 112, 3)


def test_a_truncated_file_is_named_in_one_line(folder, tmp_path):
    _load(folder, tmp_path)
    broken = folder / "train" / "LR" / "img_002.png"
    broken.write_bytes(broken.read_bytes()[:60])
    with pytest.raises(UserError, match=r"img_002\.png: cannot be decoded: truncated PNG"):
        _load(folder, tmp_path)
    splits = _load(folder, tmp_path, on_bad_sample="skip")
    assert "img_002.png" not in list(splits.train["id"]) + list(splits.val["id"])
    (folder / "train" / "HR" / "img_005.png").unlink()  # a file gone since the store was built
    with pytest.raises(UserError, match=r"img_005\.png: has no partner of the same name in the HR folder"):
        _load(folder, tmp_path)


def test_above_the_budget_only_the_checks_are_stored_and_workers_decode(folder, tmp_path, capsys):
    lines = []
    splits = _load(folder, tmp_path, lines, store_gb=1e-6)
    assert splits.pixels is None
    # A process that decodes says so itself (every rank would: a second build must show).
    assert "no decoded store (above --store-gb 1e-06" in capsys.readouterr().out
    assert not list(_only_store(tmp_path).glob("part-*.u8"))
    loader = loaders.train_loader(splits.train, batch_size=2, patch_size=8, scale=4, seed=0, num_workers=0)
    assert next(iter(loader)).hr.shape == (2, 32, 32, 3)  # HR windows, as stored
    lines.clear()  # a larger budget later: the pixels are added
    assert _load(folder, tmp_path, lines).pixels is not None
    assert _load(folder, tmp_path, store_gb=0).pixels is None  # --store-gb 0: never the pixels, even on disk


def _table(folder):
    return sources._table_from_files(
        [(p.name, str(p), str(folder / "train" / "HR" / p.name)) for p in sorted((folder / "train" / "LR").iterdir())]
    )


def test_the_datasets_cache_of_a_folder_holds_no_image_bytes(tmp_path):
    data = make_pair_folder(tmp_path / "d", num_train=40, num_test=0, lr_size=(64, 64))
    cached = sum(Path(f["filename"]).stat().st_size for f in _table(data).cache_files)
    assert 0 < cached <= 0.01 * sum(p.stat().st_size for p in data.rglob("*.png"))


BUILD = """
import resource, sys
from insanesr_dist.data import splits as D
from insanesr_dist.errors import UserError
if sys.argv[3] == "limit":
    resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))  # as a full disk: the OS refuses the write
try:
    # Two decoding processes, as a larger set gets: the write the OS refuses is theirs
    D.load_splits(sys.argv[1], val_fraction=0.25, seed=0, store_dir=sys.argv[2], store_workers=2)
except UserError as e:
    sys.exit(f"Error: {e.message}")
"""


def test_a_full_disk_while_building_gives_one_line_and_no_half_built_store(folder, tmp_path):
    command = [sys.executable, "-c", BUILD, str(folder), str(tmp_path / "store")]
    full = run_tree([*command, "limit"], timeout=300)
    assert_one_line_error(full, "cannot write the decoded store (File too large)")
    assert not [p for p in (tmp_path / "store").iterdir() if not p.name.startswith(".")]
    again = run_tree([*command, "no-limit"], timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    index = json.loads((_only_store(tmp_path) / "index.json").read_text())
    assert index["pixels"] and all(not row["problem"] for row in index["rows"])


def test_one_process_and_two_build_the_same_store(folder, tmp_path):
    table = _table(folder)
    stores = [
        store.open_or_build(table, scale=4, store_dir=tmp_path / f"s{n}", budget_gb=1, workers=n, say=lambda line: None)
        for n in (1, 2)
    ]
    for row in range(len(table)):
        for a, b in zip(stores[0].pair(row), stores[1].pair(row)):
            assert np.array_equal(a, b)
