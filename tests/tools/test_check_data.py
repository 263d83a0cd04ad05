"""`insanesr-dist check-data` on what only streaming reads (URLs, brace ranges, tars) and with --streaming: the
same rules, each cell named by its shard and row, an unreadable shard a finding of its own."""

from __future__ import annotations

from conftest import run_cli
from insanesr_dist.tools.check_data import only_streamed, run_check
from stream_data import ShardServer, make_pairs, write_parquet, write_tar


def test_only_what_streaming_alone_reads_is_streamed_by_default():
    assert only_streamed("https://host/train-{00000..00009}.parquet") and only_streamed("s3://b/train-0.parquet")
    assert only_streamed("shards/train-*.parquet") and only_streamed("train-0000.tar")
    assert not only_streamed("data/") and not only_streamed("user/hub-set") and not only_streamed(None)


def test_served_shards_are_checked_row_by_row_with_an_unreadable_shard(tmp_path):
    rows = make_pairs(6)
    rows[1]["lr"] = b"\x89PNG\r\n\x1a\nnot really"
    rows[4]["hr"] = rows[4]["lr"]  # HR not 4x; the 2 validation pairs count as pairs too, as in a folder
    write_parquet(tmp_path / "train-0.parquet", rows)
    write_parquet(tmp_path / "train-1.parquet", make_pairs(3, first=10))
    write_parquet(tmp_path / "validation-0.parquet", make_pairs(2, first=20))
    with ShardServer(tmp_path) as server:
        server.faults["train-1.parquet"] = "404"
        text = f"{server.url}/{{train-0,train-1,validation-0}}.parquet"
        lines = []
        assert not run_check(text, patch_size=8, on_bad_sample="error", echo=lines.append)
        skipped = []
        assert run_check(text, patch_size=8, on_bad_sample="skip", echo=skipped.append)
    assert lines[0].startswith("check-data: streamed ") and "train 2, validation 1" in lines[0]
    assert any("train-0.parquet row 1 lr: " in line and "training stops" in line for line in lines)
    assert any("train-0.parquet row 4 hr: " in line and "exactly 4x" in line for line in lines)
    assert any(line.startswith(f"{server.url}/train-1.parquet: cannot be read") for line in lines)
    assert "8 training pair(s), 6 usable" in lines[-1] and "3 bad" in lines[-1] and "would stop" in lines[-1]
    assert "would run" in skipped[-1]


def test_a_webdataset_tar_and_a_packed_folder_with_streaming(tmp_path):
    tar = write_tar(tmp_path / "tar" / "train-0000.tar", make_pairs(4))
    lines = []
    assert run_check(str(tar), patch_size=8, on_bad_sample="error", echo=lines.append)
    assert "4 training pair(s), 4 usable" in lines[-1]
    write_parquet(tmp_path / "packed" / "data" / "train-00000-of-00001.parquet", make_pairs(3))
    write_parquet(tmp_path / "packed" / "data" / "test-00000-of-00001.parquet", make_pairs(2, first=9))
    result = run_cli("insanesr-dist", "check-data", str(tmp_path / "packed"), "--streaming", "--patch-size", "8")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "check-data: streamed" in result.stdout and "3 training pair(s), 3 usable; 2 test image(s)" in result.stdout
