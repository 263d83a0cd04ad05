"""`insanesr-dist pack`: any source into parquet shards of sub-images that read back as exactly the source's tiles."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import assert_one_line_error, read_rgb, run_cli, write_png
from insanesr_dist.data import shards, stream
from insanesr_dist.tools.pack import pack, tile_positions
from stream_data import ShardServer, make_pairs, up, write_parquet


def decode(cell: dict) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(cell["bytes"], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def packed(out: Path, split: str = "train") -> list[dict]:
    files = sorted((out / "data").glob(f"{split}-*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def expected_tiles(lr: np.ndarray, hr: np.ndarray, lr_tile: int, lr_step: int) -> list[tuple[np.ndarray, np.ndarray]]:
    ys, xs = (tile_positions(n, lr_tile, lr_step) for n in lr.shape[:2])
    return [
        (lr[y : y + lr_tile, x : x + lr_tile], hr[4 * y : 4 * (y + lr_tile), 4 * x : 4 * (x + lr_tile)])
        for y in ys
        for x in xs
    ]


def test_tiles_cover_each_edge():
    assert tile_positions(20, 8, 4) == [0, 4, 8, 12]
    assert tile_positions(18, 8, 4) == [0, 4, 8, 10]  # one more, flush with the end
    assert tile_positions(6, 8, 4) == [0]  # shorter than a tile: itself


def test_a_pair_folder_packs_into_shards_that_read_back_as_its_tiles(tmp_path, pair_folder):
    out = tmp_path / "packed"
    result = run_cli("insanesr-dist", "pack", str(pair_folder), str(out), "--tile", "32", "--step", "16",
                     "--shard-mb", "0.1", timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (out / "data").iterdir())
    shards_written = [n for n in names if n.startswith("train-")]
    assert len(shards_written) > 1 and all(n.endswith(f"-of-{len(shards_written):05d}.parquet") for n in shards_written)
    assert not [n for n in names if n.startswith(".")]  # no temporary file left
    rows = packed(out)
    assert f"packed 23 pair(s) into {len(rows)} tile(s), 3 test" in result.stdout
    got = {row["id"]: (decode(row["lr"]), decode(row["hr"])) for row in rows}
    for hr_path in sorted((pair_folder / "train" / "HR").iterdir()):
        lr, hr = read_rgb(pair_folder / "train" / "LR" / hr_path.name), read_rgb(hr_path)
        want = expected_tiles(lr, hr, 8, 4)
        assert len(want) == 12  # LR 16x20: 3 x 4 tiles of 8 every 4
        for n, (lr_tile, hr_tile) in enumerate(want, 1):
            got_lr, got_hr = got.pop(f"{hr_path.stem}_s{n:03d}")
            assert np.array_equal(got_lr, lr_tile) and np.array_equal(got_hr, hr_tile)
    assert not got
    assert all(row[c]["bytes"][:2] == b"BM" for row in rows for c in ("lr", "hr"))  # BMP tiles by default
    assert len(packed(out, "test")) == 3

    as_png = tmp_path / "as-png"
    pack(str(pair_folder), as_png, tile=32, step=16, tile_format="png", say=print)
    png_rows = packed(as_png)
    assert all(row["hr"]["bytes"][:4] == b"\x89PNG" for row in png_rows)
    assert all(  # the same tiles, pixel for pixel
        a["id"] == b["id"] and np.array_equal(decode(a[c]), decode(b[c]))
        for a, b in zip(rows, png_rows, strict=True)
        for c in ("lr", "hr")
    )

    checked = run_cli("insanesr-dist", "check-data", str(out), "--patch-size", "8", timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    batches = stream.StreamLoader(
        shards.resolve(str(out)), stream.StreamSettings(patch_size=8, batch_size=4, shuffle_crops=8), say=print
    )
    batch = next(iter(batches))
    assert batch.lr.shape == (4, 8, 8, 3) and batch.hr.shape == (4, 32, 32, 3)


def test_bad_inputs_are_one_line_each_and_fail_the_pack(tmp_path):
    root = tmp_path / "src"
    rng = np.random.default_rng(0)
    for i in range(3):
        lr = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        write_png(root / "train" / "LR" / f"{i}.png", lr)
        write_png(root / "train" / "HR" / f"{i}.png", up(lr))
    (root / "train" / "LR" / "1.png").write_bytes(b"not a png")
    write_png(root / "train" / "HR" / "2.png", np.zeros((40, 48, 3), np.uint8))
    out = tmp_path / "out"
    result = run_cli("insanesr-dist", "pack", str(root), str(out), "--tile", "16", "--step", "8", timeout=300)
    assert_one_line_error(result, "2 bad input(s)")
    lines = [line for line in result.stdout.splitlines() if "row" in line]
    assert len(lines) == 2 and "1.png" in lines[0] and "HR must be exactly 4x" in lines[1]
    assert [row["id"] for row in packed(tmp_path / "out")] == [
        f"0_s{n:03d}" for n in range(1, 26)
    ]  # LR 12: tiles of 4 every 2, 5 x 5
    again = run_cli("insanesr-dist", "pack", str(root), str(tmp_path / "out"), timeout=300)
    assert_one_line_error(again, "not empty")


def test_a_stream_of_urls_packs_the_same_with_two_workers(tmp_path):
    rows = make_pairs(5) + make_pairs(4, first=5)
    write_parquet(tmp_path / "served" / "train-0.parquet", rows[:5])
    write_parquet(tmp_path / "served" / "train-1.parquet", rows[5:])
    with ShardServer(tmp_path / "served") as server:
        text = f"{server.url}/train-{{0..1}}.parquet"
        one, bad = pack(text, tmp_path / "one", tile=32, step=32, shard_mb=0.05, say=print)
        two, _ = pack(text, tmp_path / "two", tile=32, step=32, shard_mb=0.05, workers=2, say=print)
    assert bad == [] and one == two and one["pairs"] == 9 and one["tiles"] == 9 * 4
    first, second = packed(tmp_path / "one"), packed(tmp_path / "two")
    assert [r["id"] for r in first] == [r["id"] for r in second]
    assert all(r["lr"]["bytes"] == s["lr"]["bytes"] for r, s in zip(first, second))
    for row in first:
        lr, hr = decode(row["lr"]), decode(row["hr"])
        assert lr.shape == (8, 8, 3) and np.array_equal(up(lr), hr)


@pytest.mark.parametrize("tile", ["30"])
def test_tile_sizes_must_fit_the_scale(tmp_path, pair_folder, tile):
    result = run_cli("insanesr-dist", "pack", str(pair_folder), str(tmp_path / "o"), "--tile", tile, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
