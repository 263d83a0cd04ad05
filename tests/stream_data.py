"""Data for the streaming tests: tiny pairs whose source image each window can be traced to, written as parquet
shards, WebDataset tars or jsonl tables of paths. The loopback HTTP server that serves them (Range requests, faults
per file, a count of what was read) is benchmarks/shard_server.py's, shared with the streaming benchmarks."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np

from shard_server import ShardServer

__all__ = ["ShardServer", "make_pairs", "png", "up", "write_jsonl", "write_parquet", "write_tar"]

LR = 16  # LR edge of the test pairs; HR is 4x


def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def make_pairs(count: int, first: int = 0, seed: int = 0) -> list[dict]:
    """Rows {id, lr, hr} (PNG bytes): LR random but for channel 0, which holds the image's number everywhere
    (first, first+1, ...: under 256), so any window names its image; HR is LR repeated 4x (nearest), so an
    aligned window pair satisfies hr == up(lr)."""
    rng = np.random.default_rng([seed, first])
    rows = []
    for n in range(first, first + count):
        lr = rng.integers(0, 256, (LR, LR, 3), dtype=np.uint8)
        lr[..., 0] = n
        rows.append({"id": f"img{n:04d}.png", "lr": png(lr), "hr": png(up(lr))})
    return rows


def up(a: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(a, 4, -3), 4, -2)


def write_parquet(path: Path, rows: list[dict], group_rows: int = 4) -> Path:
    """A parquet shard as the hub holds them: image columns (datasets' Image: bytes + path), row groups of
    `group_rows` rows."""
    import datasets

    features = datasets.Features(id=datasets.Value("string"), lr=datasets.Image(), hr=datasets.Image())
    cells = {
        "id": [r["id"] for r in rows],
        **{c: [{"bytes": r[c], "path": None} for r in rows] for c in ("lr", "hr")},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(cells, features=features).to_parquet(str(path), batch_size=group_rows)
    return path


def write_tar(path: Path, rows: list[dict]) -> Path:
    """A WebDataset shard: per sample <key>.lr.png and <key>.hr.png."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for row in rows:
            key = row["id"].removesuffix(".png")
            for column in ("lr", "hr"):
                info = tarfile.TarInfo(f"{key}.{column}.png")
                info.size = len(row[column])
                tar.addfile(info, io.BytesIO(row[column]))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """A table of paths relative to itself, beside the image files it names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for row in rows:
        for column in ("lr", "hr"):
            (path.parent / column / row["id"]).parent.mkdir(parents=True, exist_ok=True)
            (path.parent / column / row["id"]).write_bytes(row[column])
        lines.append(json.dumps({"id": row["id"], "lr": f"lr/{row['id']}", "hr": f"hr/{row['id']}"}))
    path.write_text("\n".join(lines) + "\n")
    return path
