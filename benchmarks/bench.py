"""`insanesr-dist bench train|data|stream-training|metric|predict|ema` (or `python benchmarks/bench.py ...` from a
checkout): measured speed and memory, as a table or `--json`.

Every measurement runs in a fresh child process (bench_stages.py holds them): one measurement's threads,
allocations and peak RSS (`ru_maxrss` only ever grows) stay out of the next one's. `bench train --one-process`
runs them all in the command's own process instead: one interpreter and one CUDA context to start rather than one
per measurement (what gpu_checks.py uses, on a time budget), at the price of that isolation.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import tempfile
from pathlib import Path

import click

from bench_stages import STAGES, call_command, json_result, peak_rss_mb, training_flops_per_lr_pixel
from insanesr_dist.commands import Group
from insanesr_dist.tools.children import failure_line

RSS_LIMIT_MB = 3072  # the acceptance bound for a 2048x2048 LR image on 2 CPU cores


def _run_stage(spec: dict, stage: str = "predict", one_process: bool = False) -> dict:
    """Run bench_stages' `stage` on `spec` in a fresh Python process (in this one with `one_process`); its
    result as a dict."""
    if one_process:
        return STAGES[stage](spec)
    command = call_command("bench_stages", "STAGES", stage, spec)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise click.ClickException(f"benchmark process failed: {failure_line(result.stderr)}")
    return json_result(result.stdout)


@click.group("bench", cls=Group, context_settings={"max_content_width": 110})
def bench() -> None:
    """Measure speed and peak memory; each measurement runs in a fresh process.

    \b
    Example:
      insanesr-dist bench predict --size 512 --mixed-precision bf16
    """


@bench.command("predict")
@click.option("--size", default=2048, show_default=True, type=click.IntRange(8), help="LR edge of the tiled run.")
@click.option(
    "--untiled-size",
    default=256,
    show_default=True,
    type=click.IntRange(0),
    help="LR edge of the whole-image run (0 skips it).",
)
@click.option("--tile", default=128, show_default=True, type=click.IntRange(1), help="As for predict.")
@click.option(
    "--tile-overlap", "overlap", default=16, show_default=True, type=click.IntRange(0), help="As for predict."
)
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1), help="As for predict.")
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False),
    help="Weights to use [default: the default model, randomly initialised: the speed is the same].",
)
@click.option(
    "--mixed-precision",
    "precision",
    default="no",
    show_default=True,
    type=click.Choice(["no", "bf16"]),
    help="no = float32; bf16 autocast (fast on CPUs with AMX).",
)
@click.option(
    "--threads",
    default=len(os.sched_getaffinity(0)),
    show_default="all cores",
    type=click.IntRange(1),
    help="torch CPU threads.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the lines.")
def bench_predict(
    size: int,
    untiled_size: int,
    tile: int,
    overlap: int,
    batch_size: int,
    checkpoint: str | None,
    precision: str,
    threads: int,
    as_json: bool,
) -> None:
    """CPU upscaling: seconds, LR megapixels/s tiled and untiled, peak RSS of each run.

    \b
    Example (a few minutes on 2 cores):
      insanesr-dist bench predict --size 2048 --tile 128 --tile-overlap 16
    """
    common = {"checkpoint": checkpoint, "precision": precision, "threads": threads, "batch_size": batch_size}
    tiled = _run_stage({**common, "size": size, "tile": tile, "overlap": overlap, "repeats": 1})
    tiled["lr_megapixels_per_s"] = size * size / 1e6 / tiled["seconds"]
    whole = (
        _run_stage({**common, "size": untiled_size, "tile": 0, "overlap": 0, "repeats": 2}) if untiled_size else None
    )
    if whole:
        whole["lr_megapixels_per_s"] = untiled_size**2 / 1e6 / whole["seconds"]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "precision": precision,
                    "threads": threads,
                    "size": size,
                    "tile": tile,
                    "overlap": overlap,
                    "tiled": tiled,
                    "untiled_size": untiled_size,
                    "untiled": whole,
                },
                indent=2,
            )
        )
        return
    click.echo(
        f"bench predict: CPU, {threads} thread(s), precision {precision}, "
        f"{'weights ' + checkpoint if checkpoint else 'default model (random init)'}"
    )
    verdict = "OK" if tiled["peak_rss_mb"] <= RSS_LIMIT_MB else "OVER"
    click.echo(
        f"tiled   {size}x{size} LR -> {4 * size}x{4 * size}: tile {tile} overlap {overlap} batch {batch_size}: "
        f"{tiled['seconds']:.1f} s, {tiled['lr_megapixels_per_s']:.4f} LR MP/s; "
        f"PNG encode {tiled['encode_seconds']:.1f} s ({tiled['png_mb']:.0f} MB); "
        f"peak RSS {tiled['peak_rss_mb']:.0f} MB ({verdict}: limit {RSS_LIMIT_MB} MB)"
    )
    if whole:
        click.echo(
            f"untiled {untiled_size}x{untiled_size} LR: {whole['seconds']:.2f} s (first run "
            f"{whole['first_seconds']:.2f} s), {whole['lr_megapixels_per_s']:.4f} LR MP/s; "
            f"peak RSS {whole['peak_rss_mb']:.0f} MB"
        )
    click.echo(
        f"ru_maxrss: children {peak_rss_mb(resource.RUSAGE_CHILDREN):.0f} MB (a child's includes this "
        f"launching process's {peak_rss_mb():.0f} MB, carried across exec; the peaks above are VmHWM)"
    )


def _demo_or(data: str | None) -> str:
    from insanesr_dist.data.demo import ensure_demo_data

    return data or str(ensure_demo_data())


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({len(os.sched_getaffinity(0))} cores)"


def _common(command):
    """Options every training-side benchmark takes, with the training defaults."""
    for option in reversed(
        [
            click.option("--data", help="Dataset as for train [default: the embedded demo data]."),
            click.option(
                "--batch-size", default=16, show_default=True, type=click.IntRange(1), help="Samples per batch."
            ),
            click.option("--patch-size", default=32, show_default=True, type=click.IntRange(1), help="LR crop edge."),
            click.option(
                "--threads",
                default=len(os.sched_getaffinity(0)),
                show_default="all cores",
                type=click.IntRange(1),
                help="torch CPU threads.",
            ),
            click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table."),
        ]
    ):
        command = option(command)
    return command


@bench.command("train")
@_common
@click.option(
    "--mixed-precision",
    "precision",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "no", "fp16", "bf16"]),
    help="As for train.",
)
@click.option("--channels-last/--no-channels-last", default=True, show_default=True, help="As for train.")
@click.option("--compile", "compile_", is_flag=True, help="As for train: torch.compile the training step.")
@click.option("--steps", default=30, show_default=True, type=click.IntRange(5), help="Timed optimizer steps.")
@click.option("--warmup", default=8, show_default=True, type=click.IntRange(1), help="Untimed steps before.")
@click.option(
    "--baseline/--no-baseline",
    default=True,
    show_default=True,
    help="Also time the seed report's plain float32 loop on the same data.",
)
@click.option(
    "--data-pipeline/--no-data-pipeline",
    default=True,
    show_default=True,
    help="Also time the data path alone (one DataLoader worker, CPU only) for the data headroom ratio.",
)
@click.option(
    "--one-process",
    is_flag=True,
    help="Run every measurement (the training run too) in this process instead of a fresh one each: one "
    "interpreter and CUDA context to start instead of several, but the measurements share its caches.",
)
def bench_train(
    data,
    batch_size,
    patch_size,
    threads,
    as_json,
    precision,
    channels_last,
    compile_,
    steps,
    warmup,
    baseline,
    data_pipeline,
    one_process,
) -> None:
    """Training speed: the full toolkit step (the real `insanesr_dist.train`, its samples/s read from its
    TensorBoard log), the bare step (the trainer's own `train_step` on fixed batches), the seed-style baseline,
    the data pipeline and a matmul ceiling measured here, side by side, with the ratios between them.

    \b
    Examples (about 3 minutes on 2 CPU cores):
      insanesr-dist bench train --baseline
      insanesr-dist bench train --mixed-precision no --json
      insanesr-dist bench train --one-process --no-baseline --no-data-pipeline   # the training step only
    """
    from insanesr_dist.training.precision import resolve_precision
    from insanesr_dist.training.runtime import wants_cpu

    data = _demo_or(data)
    precision = resolve_precision(precision, cpu=wants_cpu())[0]
    config = {"batch_size": batch_size, "patch_size": patch_size, "channels_last": channels_last, "compile": compile_}
    train_args = [
        "--data",
        data,
        "--batch-size",
        str(batch_size),
        "--patch-size",
        str(patch_size),
        "--channels-last" if channels_last else "--no-channels-last",
        *(["--compile"] if compile_ else []),
    ]
    timing = {"threads": threads, "steps": steps, "warmup": warmup, "precision": precision}
    report = {
        "device": _device_name(),
        "threads": threads,
        "precision": precision,
        "batch_size": batch_size,
        "patch_size": patch_size,
        "channels_last": channels_last,
        "compile": compile_,
        "data": data,
        "one_process": one_process,
    }
    report["ceiling_tflops"] = _run_stage({"threads": threads}, "matmul_ceiling", one_process)
    report["bare"] = _run_stage({**timing, "config": config, "data": data}, "bare_step", one_process)
    report["toolkit"] = _run_stage(
        {**timing, "train_args": train_args, "log_every": 5, "in_process": one_process}, "toolkit_step", one_process
    )
    report["data_pipeline"] = (
        _run_stage(
            {
                "data": data,
                "batch_size": batch_size,
                "patch_size": patch_size,
                "cache_mb": 1024,
                "crops": 2048,
                "store_dir": None,
            },
            "data_pipeline",
            one_process,
        )
        if data_pipeline
        else None
    )
    if baseline:
        report["baseline"] = _run_stage(
            {**timing, "data": data, "batch_size": batch_size, "patch_size": patch_size}, "seed_baseline", one_process
        )
    flops_per_sample = report["bare"]["flops_per_lr_pixel"] * patch_size**2
    for name in ("baseline", "bare", "toolkit"):
        if name in report:
            tflops = report[name]["samples_per_s"] * flops_per_sample / 1e12
            report[name]["tflops"] = tflops
            report[name]["percent_of_bf16_ceiling"] = 100 * tflops / report["ceiling_tflops"]["bf16"]
    toolkit = report["toolkit"]["samples_per_s"]
    report["ratios"] = {
        "toolkit_over_baseline": toolkit / report["baseline"]["samples_per_s"] if baseline else None,
        "toolkit_overhead_percent": 100 * (1 - toolkit / report["bare"]["samples_per_s"]),
        "toolkit_percent_of_bf16_ceiling": report["toolkit"]["percent_of_bf16_ceiling"],
        "data_headroom_per_worker": report["data_pipeline"]["store_crops_per_s"] / toolkit if data_pipeline else None,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    c = report["ceiling_tflops"]
    click.echo(
        f"bench train: {report['device']}, {threads} thread(s); batch {batch_size}, LR patch {patch_size} "
        f"(HR {4 * patch_size}); data {data}"
    )
    click.echo(
        "matmul ceiling: "
        + ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in c.items())
        + f"; the model costs {flops_per_sample / 1e9:.1f} GFLOP per sample per step"
    )
    click.echo(f"{'':34}{'samples/s':>10}{'TFLOP/s':>9}{'% bf16 ceiling':>16}")
    rows = [
        ("baseline", "seed-style loop (float32)"),
        ("bare", f"bare train_step ({precision})"),
        ("toolkit", f"full toolkit step ({precision})"),
    ]
    for key, label in rows:
        if key in report:
            r = report[key]
            click.echo(f"{label:34}{r['samples_per_s']:10.2f}{r['tflops']:9.3f}{r['percent_of_bf16_ceiling']:15.1f}%")
    d = report["data_pipeline"]
    if d:
        click.echo(
            f"data pipeline, 1 worker: {d['store_crops_per_s']:.0f} crops/s from the decoded store "
            f"({d['decode_crops_per_s']:.0f} decoding each pair)"
        )
    ratios = report["ratios"]
    if baseline:
        click.echo(f"toolkit / seed-style baseline: {ratios['toolkit_over_baseline']:.2f}x   (target >= 3.0x)")
    click.echo(f"toolkit overhead vs bare step: {ratios['toolkit_overhead_percent']:.1f}%   (target <= 10%)")
    click.echo(
        f"toolkit share of the bf16 matmul ceiling: {ratios['toolkit_percent_of_bf16_ceiling']:.1f}%   (target >= 40%)"
    )
    if d:
        click.echo(
            f"data pipeline / training consumption: {ratios['data_headroom_per_worker']:.1f}x per worker   "
            "(target >= 5x)"
        )
    if compile_:
        click.echo(f"torch.compile: first bare step {report['bare']['first_step_s']:.1f} s (compilation)")


@bench.command("data")
@_common
@click.option("--crops", default=4096, show_default=True, type=click.IntRange(16), help="Crops timed per epoch.")
@click.option(
    "--cache-mb",
    default=1024,
    show_default=True,
    type=click.IntRange(0),
    help="As --decoded-cache-mb for train (the path without a store).",
)
@click.option(
    "--store-dir",
    type=click.Path(file_okay=False),
    help="Where the temporary stores are built [default: the system's temp folder].",
)
@click.option("--streaming", is_flag=True, help="Measure the streaming path instead (--data as for train --streaming).")
@click.option(
    "--crops-per-decode",
    type=click.IntRange(0),
    help="With --streaming: as for train (0: by the pair's size) [default: train's].",
)
@click.option("--shuffle-crops", type=click.IntRange(1), help="With --streaming: as for train [default: train's].")
def bench_data(
    data, batch_size, patch_size, threads, as_json, crops, cache_mb, store_dir, streaming, crops_per_decode,
    shuffle_crops,
) -> None:  # fmt: skip
    """Data path: the decoded store's build time on 1 and 2 processes, a second run's open time, start-up to a
    first batch, crops/s of one DataLoader worker from the store and without it (decoding every crop, or from
    the worker's decoded cache), peak RSS; and what a GPU would consume, for scale.

    \b
    A DIV2K-sized set to measure on (48 MB of PNGs, 0.84 GB decoded):
      insanesr-dist make-demo-data div2k-sized/ --num-train 96 --num-test 4 --hr-size 2040x1344
      insanesr-dist bench data --data div2k-sized/
      insanesr-dist pack div2k-sized/ div2k-packed/ && insanesr-dist bench data --streaming --data div2k-packed/
    """
    data = _demo_or(data)
    if not streaming and (crops_per_decode is not None or shuffle_crops is not None):
        raise click.UsageError("--crops-per-decode and --shuffle-crops set the streaming path: add --streaming")
    if streaming:
        import stream_speed
        from insanesr_dist.config import TrainConfig

        train = TrainConfig()  # training's defaults: what a streaming run uses unless told otherwise
        spec = dict(data=data, batch_size=batch_size, patch_size=patch_size, crops=crops)
        spec.update(
            crops_per_decode=train.crops_per_decode if crops_per_decode is None else crops_per_decode,
            shuffle_crops=shuffle_crops or train.shuffle_crops,
        )
        result = stream_speed.measure(spec)
        settings = {key: spec[key] for key in ("crops_per_decode", "shuffle_crops")}
        click.echo(json.dumps({**result, **settings}, indent=2) if as_json else stream_speed.describe(result, spec))
        return
    spec = {
        "data": data,
        "batch_size": batch_size,
        "patch_size": patch_size,
        "cache_mb": cache_mb,
        "crops": crops,
        "store_dir": store_dir,
    }
    result = {**_run_stage(spec, "data_pipeline"), **gpu_consumption(patch_size)}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    r = result
    click.echo(
        f"bench data: {data}: {r['pairs']} pairs, {r['store_gb']:.2f} GB decoded; batch {batch_size}, "
        f"LR patch {patch_size}"
    )
    click.echo(
        f"store build: {r['build_seconds_1']:.1f} s on 1 process, {r['build_seconds_2']:.1f} s on 2 "
        f"({r['build_seconds_1'] / r['build_seconds_2']:.2f}x); a second run opens it in "
        f"{r['reopen_seconds']:.2f} s (nothing decoded); first batch {r['startup_seconds']:.1f} s after"
    )
    click.echo(
        f"crops/s of one worker: {r['store_crops_per_s']:.0f} from the store; without it "
        f"{r['decode_crops_per_s']:.1f} decoding each pair, {r['cached_crops_per_s']:.0f} from its "
        f"decoded cache ({cache_mb} MB)"
    )
    click.echo(
        f"peak RSS: {r['peak_rss_mb']:.0f} MB main process, {r['peak_worker_rss_mb']:.0f} MB largest worker "
        "(mapped store pages included: shared, once per node)"
    )
    click.echo(
        f"for scale: the default model's step costs {r['gflop_per_sample']:.1f} GFLOP per sample; an H100/H200 "
        f"at 10-25 % of {r['gpu_peak_tflops']:.0f} bf16 TFLOP/s consumes {r['gpu_samples_per_s'][0]:,.0f}-"
        f"{r['gpu_samples_per_s'][1]:,.0f} samples/s"
    )


@bench.command("stream-training")
@click.option("--pairs", default=100, show_default=True, type=click.IntRange(1), help="Distinct pairs: the small set.")
@click.option(
    "--copies",
    default=10,
    show_default=True,
    type=click.IntRange(2),
    help="The large set: the small set's shards served under this many times more names.",
)
@click.option(
    "--hr-size",
    default="2040x1344",
    show_default=True,
    help="HR width x height of the pairs (DIV2K's); LR is a quarter of it.",
)
@click.option(
    "--shard-mb", default=256.0, show_default=True, type=click.FloatRange(0, min_open=True), help="As for pack."
)
@click.option(
    "--steps",
    default=40,
    show_default=True,
    type=click.IntRange(1),
    help="Optimizer steps of each fresh run (the peak RSS is read over them).",
)
@click.option("--resume-steps", default=5, show_default=True, type=click.IntRange(1), help="Steps a resumed run takes.")
@click.option(
    "--repeats", default=2, show_default=True, type=click.IntRange(1), help="Rounds of the runs, side by side."
)
@click.option(
    "--model",
    default="tiny",
    show_default=True,
    type=click.Choice(["tiny", "default"]),
    help="tiny: 1 RRDB of 8 channels, so that the data path is what the times measure; default: the full model.",
)
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1), help="As for train.")
@click.option("--patch-size", default=32, show_default=True, type=click.IntRange(1), help="As for train.")
@click.option("--num-workers", "workers", default=1, show_default=True, type=click.IntRange(1), help="As for train.")
@click.option(
    "--work-dir",
    default=lambda: str(Path(tempfile.gettempdir()) / "insanesr-stream-training"),
    show_default="<temp>/insanesr-stream-training",
    type=click.Path(file_okay=False),
    help="Where the pairs' shards are kept, made once per --pairs, --hr-size and --shard-mb.",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False),
    help="Keep the training runs' folders and logs here [default: a temporary folder, removed].",
)
@click.option(
    "--run-timeout",
    default=1800.0,
    show_default=True,
    type=click.FloatRange(1),
    help="Seconds a training run may take.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def bench_stream_training(
    pairs,
    copies,
    hr_size,
    shard_mb,
    steps,
    resume_steps,
    repeats,
    model,
    batch_size,
    patch_size,
    workers,
    work_dir,
    runs_dir,
    run_timeout,
    as_json,
) -> None:
    """Streaming training against issue 24's targets, on real `accelerate launch -m insanesr_dist.train
    --streaming` runs over parquet shards of DIV2K-sized pairs served by a loopback HTTP server: the time to the
    first step and the bytes fetched before it (small vs large set), the datasets cache after a run, the first
    step after resuming at 90 % of a pass, and the peak RSS of the process tree.

    \b
    Example (about 10 minutes on 2 CPU cores; the pairs are made once, ~1 minute):
      insanesr-dist bench stream-training --pairs 100 --copies 10
    """
    import stream_training
    from insanesr_dist.config import TrainConfig
    from insanesr_dist.data.demo import parse_size

    try:
        height, width = parse_size(hr_size)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--hr-size") from None
    size = (width, height)
    if min(size) < 4 * patch_size:
        raise click.BadParameter(f"{hr_size}: WIDTHxHEIGHT, each at least 4x --patch-size", param_hint="--hr-size")
    train = TrainConfig()  # training's defaults: the crops per decoded pair set the length of a pass
    spec = dict(pairs=pairs, copies=copies, hr_size=size, shard_mb=shard_mb, steps=steps, resume_steps=resume_steps)
    spec.update(repeats=repeats, model=model, batch_size=batch_size, patch_size=patch_size, workers=workers)
    spec.update(work_dir=work_dir, runs_dir=runs_dir, run_timeout=run_timeout, crops_per_decode=train.crops_per_decode)
    result = stream_training.measure(spec)
    click.echo(json.dumps(result, indent=2) if as_json else stream_training.describe(result))


def gpu_consumption(patch_size: int) -> dict:
    """Samples/s a large GPU would train at, from the default model's FLOPs per sample (not measured here)."""
    from insanesr_dist.model.architecture import InsaneSRNet

    flops = training_flops_per_lr_pixel(InsaneSRNet()) * patch_size**2
    peak = 990e12  # H100/H200 SXM dense bf16
    return {
        "gflop_per_sample": flops / 1e9,
        "gpu_peak_tflops": peak / 1e12,
        "gpu_samples_per_s": [0.10 * peak / flops, 0.25 * peak / flops],
    }


@bench.command("metric")
@click.option("--data", help="Dataset as for train; its validation split is scored [default: the demo data].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def bench_metric(data, as_json) -> None:
    """The grader-exact metric (scoring/metrics.py) next to scikit-image's, one thread, on the same images:
    the validation split's HR against bicubic upscales of its LR."""
    data = _demo_or(data)
    result = _run_stage({"data": data}, "metric_speed")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"bench metric: {result['images']} images, {result['pixels'] / 1e6:.2f} HR megapixels, 1 thread")
    click.echo(f"grader-exact (torch, float64): {result['ours_images_per_s']:.1f} images/s")
    if result["skimage_images_per_s"] is None:
        click.echo("scikit-image: not installed (pip install scikit-image)")
    else:
        click.echo(
            f"scikit-image:                  {result['skimage_images_per_s']:.1f} images/s; "
            f"speed ratio {result['ours_images_per_s'] / result['skimage_images_per_s']:.2f}x; "
            f"largest PSNR/SSIM difference {result['max_abs_difference']:.1e}"
        )


@bench.command("ema")
@click.option("--updates", default=200, show_default=True, type=click.IntRange(1), help="Timed updates each way.")
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(0), help="Untimed updates before.")
@click.option(
    "--threads",
    default=len(os.sched_getaffinity(0)),
    show_default="all cores",
    type=click.IntRange(1),
    help="torch CPU threads.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the lines.")
def bench_ema(updates: int, warmup: int, threads: int, as_json: bool) -> None:
    """The weight EMA's cost per optimizer step on the default model: the old per-tensor loop (two
    state_dict()s, one lerp_ per tensor) against training/ema.py's multi-tensor lerp, median milliseconds."""
    result = {
        "device": _device_name(),
        "threads": threads,
        "updates": updates,
        **_run_stage({"updates": updates, "warmup": warmup, "threads": threads}, "ema_update"),
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(
        f"bench ema: {result['device']}, {threads} thread(s); default model, {result['tensors']} tensors; "
        f"median of {updates} updates"
    )
    click.echo(
        f"per-tensor lerp_ (before): {result['per_tensor_ms']:.3f} ms/update; multi-tensor lerp (now): "
        f"{result['foreach_ms']:.3f} ms/update ({result['per_tensor_ms'] / result['foreach_ms']:.2f}x)"
    )


if __name__ == "__main__":
    bench(prog_name="insanesr-dist bench")
