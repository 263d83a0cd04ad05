"""`insanesr-dist bench data --streaming`: the streaming data path's speed (data/stream.py), measured in a fresh
process as bench_stages.py's measurements are: the time to a first batch (source resolved, a worker started, its
pool of pairs filled) and the crops per second one DataLoader worker delivers after it."""

from __future__ import annotations

import resource
import subprocess

import click

from bench_stages import call_command, json_result
from insanesr_dist.tools.children import failure_line


def stream_speed(spec: dict) -> dict:
    """One worker's first batch and crops/s over `crops` crops from the source `data` (skipping bad pairs)."""
    import time
    from concurrent.futures import ProcessPoolExecutor

    import torch

    from insanesr_dist.data import loaders, shards, stream

    torch.set_num_threads(1)
    # As bench data does: the fork server that starts DataLoader workers, warmed up, so its one-time start
    # (importing torch and datasets) is not counted as the stream's.
    loaders.start_worker_server()
    with ProcessPoolExecutor(1, mp_context=loaders.worker_context()) as pool:
        pool.submit(abs, 0).result()
    settings = stream.StreamSettings(
        patch_size=spec["patch_size"],
        batch_size=spec["batch_size"],
        crops_per_decode=spec["crops_per_decode"],
        shuffle_crops=spec["shuffle_crops"],
        on_bad_sample="skip",
    )
    started = time.perf_counter()
    source = shards.resolve(spec["data"])
    loader = stream.StreamLoader(source, settings, num_workers=1, say=lambda line: None)
    batches = iter(loader)
    next(batches)
    first = time.perf_counter() - started
    started, seen = time.perf_counter(), 0
    while seen < spec["crops"]:
        seen += len(next(batches).lr)
    return {
        "source": source.describe(),
        "first_batch_seconds": first,
        "crops_per_s": seen / (time.perf_counter() - started),
        "skipped": loader.problems,
        "peak_worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


STAGES = {"stream": stream_speed}


def measure(spec: dict) -> dict:
    """`stream_speed(spec)` in a fresh Python process."""
    result = subprocess.run(call_command("stream_speed", "STAGES", "stream", spec), capture_output=True, text=True)
    if result.returncode != 0:
        raise click.ClickException(f"benchmark process failed: {failure_line(result.stderr)}")
    return json_result(result.stdout)


def describe(result: dict, spec: dict) -> str:
    return (
        f"bench data --streaming: {result['source']}; batch {spec['batch_size']}, LR patch {spec['patch_size']}, "
        f"crops per decoded pair: {spec['crops_per_decode'] or 'by its size'}\n"
        f"first batch {result['first_batch_seconds']:.1f} s after start (pool of {spec['shuffle_crops']} crops); "
        f"then {result['crops_per_s']:.0f} crops/s from one worker; worker peak RSS "
        f"{result['peak_worker_rss_mb']:.0f} MB"
    )
