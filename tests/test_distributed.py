"""Real multi-process runs: `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo DDP)."""

import json

import pytest

from conftest import NO_WORKERS, TINY, accelerate_launch, independent_val_jm, run_cli
from insanesr_dist.scoring.submission import read_submission

pytestmark = pytest.mark.slow


def launch_two(*args: str):
    return run_cli(*accelerate_launch(2, *args))


def test_two_process_ddp_gathers_every_image_once(pair_folder, tmp_path):
    # 23 pairs -> 3 validation and 3 test images: uneven shards over 2 ranks.
    out = tmp_path / "ddp"
    result = launch_two(
        "--data",
        str(pair_folder),
        "--epochs",
        "2",
        "--output-dir",
        str(out),
        "--store-dir",
        str(tmp_path / "store"),
        *TINY,
        *NO_WORKERS,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "2 process(es)" in result.stdout
    # One decoded store, built once (a process that decodes says so, whichever rank it is) and used by both.
    assert result.stdout.count("pairs checked: decoded in") == 1, result.stdout
    assert len([p for p in (tmp_path / "store").iterdir() if not p.name.startswith(".")]) == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["images"] == 3 for r in records)
    # The gathered validation JM equals a single-process evaluation of the same weights.
    assert independent_val_jm(out / "latest.safetensors", pair_folder) == pytest.approx(records[-1]["jm"], abs=1e-9)
    test_ids = sorted(p.name for p in (pair_folder / "test" / "LR").iterdir())
    for csv_path in (out / "submissions").iterdir():
        assert sorted(read_submission(csv_path)) == test_ids  # read_submission rejects duplicate ids


PREDICT_PROBE = """
import json, sys, torch
from pathlib import Path
from accelerate import Accelerator
from torch.utils.data import DataLoader
from insanesr_dist.inference.sharded import predict_pngs
from insanesr_dist.model.architecture import InsaneSRNet

accelerator = Accelerator(cpu=True)  # gloo on the CPU, as the other tests here
images = torch.randint(0, 256, (3, 3, 6, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
loader = accelerator.prepare(DataLoader([(i, image) for i, image in enumerate(images)], batch_size=1))
torch.manual_seed(0)
model = InsaneSRNet(num_rrdb=1, channels=8, growth=8, layers_per_block=2).eval()
pngs = predict_pngs(model, loader, accelerator)
Path(sys.argv[1], f"{accelerator.process_index}.json").write_text(json.dumps({i: len(p) for i, p in pngs.items()}))
accelerator.end_training()  # leaves the process group, as the commands do, so that both ranks exit cleanly
"""


def test_predicted_pngs_are_gathered_to_the_main_process_only(tmp_path):
    """3 images over 2 ranks (rank 1's second one repeats image 0, to even out the shards): the main process gets
    each PNG once, the other rank none (an all-gather would send it every PNG it never writes)."""
    script = tmp_path / "probe.py"
    script.write_text(PREDICT_PROBE)
    result = run_cli(*accelerate_launch(2, str(tmp_path), target=(str(script),)), timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    pngs = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert sorted(pngs[0]) == ["0", "1", "2"] and all(size > 0 for size in pngs[0].values())
    assert pngs[1] == {}


def test_two_processes_stream_three_shards_from_a_url_and_take_the_same_steps(tmp_path):
    """2 ranks x 1 worker over 3 parquet shards served by a loopback HTTP server (a brace range of URLs): the
    shards do not divide by the readers, every rank still takes every step (none waits at a collective), a bad row
    is skipped, named and counted in metrics.jsonl, and the checkpoint holds both ranks' lanes."""
    from insanesr_dist.training import checkpoint
    from stream_data import ShardServer, make_pairs, write_parquet

    bad = {"id": "bad.png", "lr": b"not a png", "hr": b"not a png"}
    for shard in range(3):
        rows = make_pairs(10, first=10 * shard) + ([bad] if shard == 1 else [])
        write_parquet(tmp_path / "sets" / f"train-{shard:05d}.parquet", rows)
    out = tmp_path / "stream"
    with ShardServer(tmp_path / "sets") as server:
        result = launch_two(
            "--data",
            f"{server.url}/train-{{00000..00002}}.parquet",
            "--streaming",
            "--val-size",
            "4",
            "--patch-size",
            "8",
            "--max-steps",
            "6",
            "--epochs",
            "2",
            "--num-workers",
            "1",
            "--on-bad-sample",
            "skip",
            "--output-dir",
            str(out),
            *TINY,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        assert sum(server.requests.values()) > 0
    assert "bad.png" in result.stdout + result.stderr  # named when skipped
    assert "3 shards for 2 lanes" in result.stdout, result.stdout[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6] and records[-1]["skipped_pairs"] == 1
    assert (out / "best.safetensors").is_file()
    stream = checkpoint.read_state(checkpoint.complete_checkpoints(out)[-1]).stream
    assert stream["lanes"] == 2 and sorted(stream["lane_states"]) == ["0", "1"] and stream["batches"] == 12
