"""Streaming training data (data/shards.py, data/stream.py): every kind of source read lazily, checks on the fly,
unreadable shards, endless equal streams per rank, and an exact resume through a real 2-worker DataLoader."""

from __future__ import annotations

import dataclasses
import json
import os
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from bad_data import bomb_png
from insanesr_dist.data import http_files, shards, stream
from insanesr_dist.data.loaders import WindowBatch
from insanesr_dist.errors import UserError
from stream_data import ShardServer, make_pairs, up, write_jsonl, write_parquet, write_tar

SETTINGS = stream.StreamSettings(patch_size=8, batch_size=4, crops_per_decode=2, shuffle_crops=8, backoff_s=0.01)
SHARDS, ROWS = 5, 6  # images 0..29, 6 per shard


@pytest.fixture(scope="module")
def shard_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    for s in range(SHARDS):
        write_parquet(root / "data" / f"train-{s:05d}-of-{SHARDS:05d}.parquet", make_pairs(ROWS, first=s * ROWS))
    return root


@pytest.fixture
def server(shard_folder):
    with ShardServer(shard_folder / "data") as running:
        yield running


def take(loader: stream.StreamLoader, count: int) -> list[WindowBatch]:
    return list(islice(iter(loader), count))


def images_of(batch: WindowBatch) -> set[int]:
    return {int(n) for n in batch.lr[:, 0, 0, 0]}


def assert_true_windows(batches: list[WindowBatch], patch: int = SETTINGS.patch_size) -> None:
    """Each sample is an aligned window pair of one source image (HR = LR repeated, channel 0 its number)."""
    for batch in batches:
        assert batch.lr.dtype == np.uint8 and batch.lr.shape == (SETTINGS.batch_size, patch, patch, 3)
        assert np.array_equal(up(batch.lr), batch.hr)
        assert (batch.lr[..., 0] == batch.lr[:, :1, :1, 0]).all()
        assert batch.codes.dtype == np.int64 and ((batch.codes >= 0) & (batch.codes < 8)).all()


def same(a: list[WindowBatch], b: list[WindowBatch]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x.lr, y.lr) and np.array_equal(x.hr, y.hr) and np.array_equal(x.codes, y.codes)
        for x, y in zip(a, b)
    )


def quiet(line: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# Sources


def test_braces_expand_as_webdataset_writes_them():
    assert shards.expand_braces("s/train-{0008..0011}.tar") == [f"s/train-{n:04d}.tar" for n in range(8, 12)]
    assert shards.expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert shards.expand_braces("plain.parquet") == ["plain.parquet"]
    with pytest.raises(UserError, match="neither a range"):
        shards.expand_braces("x{1-3}")


def test_a_folder_of_shards_is_split_by_file_name(tmp_path, shard_folder):
    source = shards.resolve(str(shard_folder))
    assert source.kind == "files" and source.builder == "parquet"
    assert [Path(s).name for s in source.shards()] == [f"train-{s:05d}-of-00005.parquet" for s in range(SHARDS)]
    write_parquet(tmp_path / "train-00000.parquet", make_pairs(2))
    write_parquet(tmp_path / "validation-00000.parquet", make_pairs(2, first=50))
    assert set(shards.resolve(str(tmp_path)).splits) == {"train", "validation"}


def test_every_kind_of_source_streams_true_windows(tmp_path, server, pair_folder):
    rows = make_pairs(12)
    sources = {
        "url range": f"{server.url}/train-{{00000..00004}}-of-00005.parquet",
        "tar": str(write_tar(tmp_path / "tar" / "train-0000.tar", rows)),
        "jsonl of paths": str(write_jsonl(tmp_path / "json" / "train.jsonl", rows)),
        "local glob": str(tmp_path / "tar" / "*.tar"),
    }
    for kind, text in sources.items():
        batches = take(stream.StreamLoader(shards.resolve(text), SETTINGS, say=quiet), 6)
        assert_true_windows(batches)
        assert len({n for b in batches for n in images_of(b)}) > 2, kind
    folder = shards.resolve(str(pair_folder))  # LR 16x20 resized pairs: not traceable, but 4x and cropped
    assert folder.kind == "folder" and len(folder.shards("test")) == 1
    batch = take(stream.StreamLoader(folder, SETTINGS, say=quiet), 1)[0]
    assert batch.lr.shape == (4, 8, 8, 3) and batch.hr.shape == (4, 32, 32, 3)


def test_a_source_that_cannot_be_read_here_is_one_line(server):
    with pytest.raises(UserError, match="lists no folders"):
        shards.resolve(f"{server.url}/train-*.parquet")
    with pytest.raises(UserError, match="s3://"):
        shards.resolve("s3://bucket/train-{0..3}.parquet")
    with pytest.raises(UserError, match="no such file"):
        shards.resolve("./nothing-here/")


def test_streaming_reads_what_it_uses_and_caches_nothing(tmp_path, server, shard_folder):
    cache = Path(os.environ["HF_HOME"])
    before = {p: p.stat().st_size for p in cache.rglob("*") if p.is_file()}
    source = shards.resolve(f"{server.url}/train-{{00000..00004}}-of-00005.parquet")
    take(stream.StreamLoader(source, SETTINGS, lanes=1, say=quiet), 1)
    total = sum(p.stat().st_size for p in (shard_folder / "data").iterdir())
    assert sum(server.bytes_sent.values()) < total  # the first batch needs 8 crops: 4 pairs of one shard
    grown = {p for p in cache.rglob("*") if p.is_file() and p.stat().st_size != before.get(p)}
    assert sum(p.stat().st_size for p in grown) < 64 * 1024, grown


def test_a_parquet_shard_resumed_mid_file_skips_its_row_groups(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    monkeypatch.setattr(http_files, "BLOCK_SIZE", 16 * 1024)  # reads of the size of this small file's row groups
    path = write_parquet(tmp_path / "train-0.parquet", make_pairs(16), group_rows=2)
    group = pq.read_metadata(path).row_group(6)  # rows 12 and 13
    first_byte = min(group.column(c).file_offset - group.column(c).total_compressed_size for c in range(3))
    with ShardServer(tmp_path) as served:
        source = shards.resolve(f"{served.url}/train-0.parquet")
        served.ranges.clear()
        rows = list(source.rows("train", 0, start=13))
        assert [(n, row["id"]) for n, row in rows] == [(n, f"img{n:04d}.png") for n in (13, 14, 15)]
        assert min(start for start, _ in served.ranges["train-0.parquet"]) >= first_byte


# ---------------------------------------------------------------------------------------------
# Checks on the fly and unreadable shards


@pytest.fixture(scope="module")
def bad_rows_folder(tmp_path_factory) -> Path:
    """2 shards; 12 bad rows in the first among good ones: corrupt, HR not 4x, a header over the pixel limit."""
    root = tmp_path_factory.mktemp("bad")
    rows = make_pairs(20)
    for i in range(0, 12, 3):
        rows[i]["lr"] = b"\x89PNG\r\n\x1a\nnot really"
        rows[i + 1]["hr"] = rows[i + 1]["lr"]
        rows[i + 2]["lr"] = bomb_png()
    write_parquet(root / "train-00000.parquet", rows)
    write_parquet(root / "train-00001.parquet", make_pairs(6, first=100))
    return root


def test_bad_rows_are_skipped_named_up_to_ten_and_counted(bad_rows_folder):
    lines = []
    loader = stream.StreamLoader(shards.resolve(str(bad_rows_folder)), dataclasses_replace(on="skip"), say=lines.append)
    batches = take(loader, 12)
    assert_true_windows(batches)
    named = [line for line in lines if line.startswith("skipping")]
    assert len(named) == 10 and all("train-00000.parquet row " in line for line in named)
    assert any("HR must be exactly 4x" in line for line in named) and any("above the limit" in line for line in named)
    assert any("counted without being named" in line for line in lines)
    assert loader.problems == {"bad": 12, "unreadable": 0}


def dataclasses_replace(on: str = "error", **more) -> stream.StreamSettings:
    return dataclasses.replace(SETTINGS, on_bad_sample=on, **more)


def test_a_bad_row_under_error_stops_with_one_line_naming_shard_and_row(bad_rows_folder):
    loader = stream.StreamLoader(shards.resolve(str(bad_rows_folder)), dataclasses_replace(), lanes=1, say=quiet)
    with pytest.raises(UserError) as caught:
        take(loader, 20)
    assert "train-00000.parquet row 0" in caught.value.message and "\n" not in caught.value.message


@pytest.mark.parametrize("fault", ["404", "truncate", "reset"])
def test_an_unreadable_shard_is_retried_then_skipped_or_fatal(server, fault):
    text = f"{server.url}/train-{{00000..00004}}-of-00005.parquet"
    broken = "train-00002-of-00005.parquet"
    server.faults[broken] = fault
    lines = []
    loader = stream.StreamLoader(shards.resolve(text), dataclasses_replace(on="skip"), lanes=1, say=lines.append)
    batches = take(loader, 40)  # more than one pass: every shard was due
    assert_true_windows(batches)
    assert 2 * ROWS not in {n for b in batches for n in images_of(b)}
    assert loader.problems["unreadable"] >= 1 and any(broken in line for line in lines)
    assert server.requests[broken] >= 1 + SETTINGS.retries
    loader = stream.StreamLoader(shards.resolve(text), dataclasses_replace(), lanes=1, say=quiet)
    with pytest.raises(UserError, match=f"{broken}: cannot be read"):
        take(loader, 40)


def test_a_truncated_local_shard_and_a_passing_outage(tmp_path, server):
    write_parquet(tmp_path / "train-0.parquet", make_pairs(4))
    cut = write_parquet(tmp_path / "train-1.parquet", make_pairs(4, first=10))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    loader = stream.StreamLoader(shards.resolve(str(tmp_path)), dataclasses_replace(on="skip"), lanes=1, say=quiet)
    assert_true_windows(take(loader, 8))
    assert loader.problems["unreadable"] >= 1
    server.faults["train-00001-of-00005.parquet"] = ("fail", 2)  # two 503s, then it answers
    text = f"{server.url}/train-{{00000..00004}}-of-00005.parquet"
    loader = stream.StreamLoader(shards.resolve(text), dataclasses_replace(), lanes=1, say=quiet)
    take(loader, 20)
    assert loader.problems == {"bad": 0, "unreadable": 0}


# ---------------------------------------------------------------------------------------------
# Order, ranks, resume


def test_each_batch_mixes_images(shard_folder):
    batches = take(stream.StreamLoader(shards.resolve(str(shard_folder)), SETTINGS, say=quiet), 20)
    assert sum(len(images_of(b)) > 1 for b in batches) >= 15


def test_two_ranks_over_three_shards_are_endless_and_one_global_sequence(tmp_path):
    for s in range(3):
        write_parquet(tmp_path / f"train-{s}.parquet", make_pairs(4, first=4 * s))
    source = shards.resolve(str(tmp_path))
    ranks = [stream.StreamLoader(source, SETTINGS, rank=r, world_size=2, say=quiet) for r in (0, 1)]
    per_rank = [take(loader, 30) for loader in ranks]  # 240 crops from 12 pairs x 2 crops: 10 passes
    assert [len(b) for b in per_rank] == [30, 30]
    for batches in per_rank:
        assert_true_windows(batches)
        assert {n for b in batches for n in images_of(b)} == set(range(12))  # every shard, over the passes
    one = take(stream.StreamLoader(source, SETTINGS, lanes=2, say=quiet), 60)
    assert same(one[0::2], per_rank[0]) and same(one[1::2], per_rank[1])  # the layout does not change the order


def test_fewer_shards_than_lanes_are_read_in_parts(tmp_path):
    write_parquet(tmp_path / "train-0.parquet", make_pairs(8))
    lines = []
    source = shards.resolve(str(tmp_path))
    settings = dataclasses_replace(shuffle_crops=4)  # a first batch from 8 crops: the 4 pairs of one part
    ranks = [stream.StreamLoader(source, settings, rank=r, world_size=2, say=lines.append) for r in (0, 1)]
    assert "read as 2 parts split by row index" in lines[0]
    parities = [{n % 2 for n in images_of(take(loader, 1)[0])} for loader in ranks]
    assert sorted(parities, key=min) == [{0}, {1}]
    assert_true_windows(take(ranks[0], 10))  # and on, through later passes


def test_crops_per_pair_follow_the_pairs_size_unless_given():
    auto = stream.StreamSettings(patch_size=32, batch_size=16)
    assert stream.crops_per_pair(auto, (1344, 2040, 3)) == stream.MAX_AUTO_CROPS  # a 2K image: 42, capped
    assert stream.crops_per_pair(auto, (480, 480, 3)) == 4  # a packed tile: 3.5 crop areas of 4
    assert stream.crops_per_pair(auto, (128, 128, 3)) == 1
    assert stream.crops_per_pair(dataclasses.replace(auto, crops_per_decode=3), (1344, 2040, 3)) == 3


@pytest.mark.parametrize("crops", [{}, {"crops_per_decode": 0, "patch_size": 4}], ids=["given", "by-size"])
def test_resume_through_a_two_worker_loader_is_exact(shard_folder, crops):
    source = shards.resolve(str(shard_folder))
    settings = dataclasses_replace(on="skip", **crops)
    loader = stream.StreamLoader(source, settings, num_workers=2, lanes=4, say=quiet)
    run = iter(loader)
    first = list(islice(run, 7))
    state = json.loads(json.dumps(loader.state_dict()))
    rest = list(islice(run, 9))
    assert_true_windows(first + rest, settings.patch_size)
    assert len(images_of(first[0])) > 1

    resumed = stream.StreamLoader(source, settings, num_workers=2, state=state, say=quiet)
    assert same(take(resumed, 9), rest)
    # another layout whose ranks x workers divide the 4 lanes: 2 ranks, in-process
    ranks = [stream.StreamLoader(source, settings, rank=r, world_size=2, state=state, say=quiet) for r in (0, 1)]
    rank0, rank1 = take(ranks[0], 5), take(ranks[1], 4)
    assert same(rank0, rest[0::2]) and same(rank1, rest[1::2])


def test_the_pool_holds_few_recent_pairs_so_a_resume_rereads_few(shard_folder):
    """A resume re-reads every pair of the pool: it holds shuffle_crops / crops-per-pair pairs, the ones read
    last, as a fresh start reads to fill it (a pool refilled crop by crop kept a pair's last crop for many
    pool-fulls: at 2K pairs, ~4x the rows to re-read)."""
    settings = dataclasses_replace(crops_per_decode=8, shuffle_crops=16)  # 2 pairs: each crop a 1/2 draw
    loader = stream.StreamLoader(shards.resolve(str(shard_folder)), settings, say=quiet)
    sizes, ages = set(), []
    for _ in islice(iter(loader), 60):  # 240 crops: 30 pairs, a whole pass
        lane = loader.state_dict()["lane_states"]["0"]
        k, row = lane["cursor"]
        sizes.add(len(lane["pool"]))
        ages += [(k * ROWS + row) - (k_ * ROWS + row_) for k_, row_, _ in lane["pool"]]
    assert sizes <= {1, 2}  # a pair used up leaves a gap until the next draw refills
    assert max(ages) <= 6, ages  # at most a few pairs since it was read


def test_ranks_states_merge_and_an_incompatible_layout_starts_a_new_pass(shard_folder):
    source = shards.resolve(str(shard_folder))
    ranks = [stream.StreamLoader(source, SETTINGS, rank=r, world_size=2, say=quiet) for r in (0, 1)]
    for loader in ranks:
        take(loader, 3)
    state = stream.merge_states([loader.state_dict() for loader in ranks])
    assert state["batches"] == 6 and sorted(state["lane_states"]) == ["0", "1"]
    single = stream.StreamLoader(source, SETTINGS, state=state, say=quiet)
    uninterrupted = take(stream.StreamLoader(source, SETTINGS, lanes=2, say=quiet), 10)
    assert same(take(single, 4), uninterrupted[6:10])
    lines = []
    three = stream.StreamLoader(source, SETTINGS, world_size=3, state=state, say=lines.append)
    assert_true_windows(take(three, 3))
    assert any("starting pass" in line for line in lines)
    # a position an earlier version saved (format 1: a buffer of crops) also starts a new pass, saying why
    older = stream.StreamLoader(source, SETTINGS, state={**state, "format": 1}, say=lines.append)
    assert_true_windows(take(older, 1))
    assert any("format 1, not 2): starting pass" in line for line in lines)


# ---------------------------------------------------------------------------------------------
# Validation and test sets


def test_validation_is_held_out_of_the_stream_head(shard_folder, tmp_path):
    source = shards.resolve(str(shard_folder))
    held = stream.eval_sets(source, val_size=8, say=quiet)
    assert held.val["id"] == [f"img{n:04d}.png" for n in range(8)] and held.start == (1, 2)
    batches = take(stream.StreamLoader(source, SETTINGS, start=held.start, say=quiet), 40)
    assert min(n for b in batches for n in images_of(b)) == 8
    assert held.test is None

    write_parquet(tmp_path / "train-0.parquet", make_pairs(4))
    write_parquet(tmp_path / "validation-0.parquet", make_pairs(3, first=40))
    test = tmp_path / "test-0.parquet"
    write_parquet(test, make_pairs(2, first=60))
    given = stream.eval_sets(shards.resolve(str(tmp_path)), val_size=0, say=quiet)
    assert given.start == (0, 0) and len(given.val) == 3 and given.test["id"] == ["img0060.png", "img0061.png"]


# ---------------------------------------------------------------------------------------------
# What a trainer opens: open_streaming


def opened(data, **options) -> stream.StreamingData:
    knobs = dict(patch_size=8, batch_size=4, crops_per_decode=2, shuffle_crops=8, on_bad_sample="skip", say=quiet)
    return stream.open_streaming(data, **{**knobs, **options})


def eval_images(table, with_hr: bool = True) -> list[tuple]:
    from insanesr_dist.data.loaders import eval_loader

    return [tuple(t[0].numpy() for t in item[1:]) for item in eval_loader(table, with_hr=with_hr, num_workers=0)]


def test_open_streaming_over_http_holds_out_validation_and_resumes_from_merged_ranks(server):
    data = opened(f"{server.url}/train-{{00000..00004}}-of-00005.parquet", val_size=8, lanes=2)
    assert data.splits.train is None and data.splits.pixels is None and data.splits.test is None
    assert data.splits.val["id"] == [f"img{n:04d}.png" for n in range(8)]
    for lr, hr in eval_images(data.splits.val):  # as validation reads a map-style run's: CHW uint8, whole
        assert lr.shape == (3, 16, 16) and np.array_equal(up(lr.transpose(1, 2, 0)), hr.transpose(1, 2, 0))

    ranks = [data.train_loader(rank=r, world_size=2) for r in (0, 1)]
    trained = [take(loader, 3) for loader in ranks]
    state = json.loads(json.dumps(stream.merge_states([loader.state_dict() for loader in ranks])))
    uninterrupted = take(data.train_loader(), 10)
    assert same(trained[0], uninterrupted[0:6:2]) and same(trained[1], uninterrupted[1:6:2])
    assert same(take(data.train_loader(num_workers=2, state=state), 4), uninterrupted[6:10])
    assert min(n for b in uninterrupted for n in images_of(b)) >= 8  # validation is never trained on


def test_open_streaming_a_local_folder_with_given_validation_and_test_folders(shard_folder, pair_folder):
    given = {
        "val_hr": str(pair_folder / "train" / "HR"),
        "val_lr": str(pair_folder / "train" / "LR"),
        "test_lr": str(pair_folder / "test" / "LR"),
    }
    data = opened(str(shard_folder), val_size=3, folders=given)
    assert data.start == (0, 0) and data.splits.val["id"] == ["img_000.png", "img_001.png", "img_002.png"]
    assert [lr.shape for lr, _ in eval_images(data.splits.val)] == [(3, 16, 20)] * 3
    assert data.splits.test["id"] == ["img_023.png", "img_024.png", "img_025.png"]
    assert [lr.shape for (lr,) in eval_images(data.splits.test, with_hr=False)] == [(3, 16, 20)] * 3
    batches = take(data.train_loader(num_workers=2), 20)
    assert_true_windows(batches)
    assert 0 in {n for b in batches for n in images_of(b)}  # nothing held out of the stream

    with pytest.raises(UserError, match="has no validation split"):
        opened(str(shard_folder))
    with pytest.raises(UserError, match="--hr-dir need a folder of images"):
        opened(str(shard_folder), folders={"train_hr": str(pair_folder / "train" / "HR")})
    with pytest.raises(UserError, match="--val-lr-dir needs --val-hr-dir"):
        opened(str(shard_folder), folders={"val_lr": given["val_lr"]})
    with pytest.raises(UserError, match="--patch-size > 0"):
        opened(str(shard_folder), val_size=2, patch_size=0)


def test_training_defaults_are_the_streams():
    from insanesr_dist.config import TrainConfig

    train, defaults = TrainConfig(), stream.StreamSettings(patch_size=1, batch_size=1)
    assert (train.crops_per_decode, train.shuffle_crops) == (defaults.crops_per_decode, defaults.shuffle_crops)
    assert train.shard_retries == defaults.retries
