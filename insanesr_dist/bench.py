"""`insanesr-dist bench ...`: measured speed and memory figures, printed one per line.

`bench predict` upscales one large LR image on the CPU with tiles, and a smaller one whole, each in a fresh
child process: a process's peak RSS (`ru_maxrss`) only ever grows, so one process per measurement makes each
peak that measurement's own.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import click

RSS_LIMIT_MB = 3072  # the acceptance bound for a 2048x2048 LR image on 2 CPU cores


def _peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def _own_peak_rss_mb() -> float:
    """This process's own peak RSS. Linux carries ru_maxrss over from the forking parent across exec, so
    a child's ru_maxrss is at least its launcher's RSS; VmHWM counts only the process's own memory."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return _peak_rss_mb()


def _stage(spec: dict) -> dict:
    """Child process: upscale one synthetic image as `spec` says; report seconds and peak RSS."""
    import time

    import cv2
    import numpy as np
    import torch

    from .model import InsaneSRNet, load_model
    from .predict import model_forward
    from .submission import encode_png
    from .tiles import upscale_image

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model = load_model(spec["checkpoint"]) if spec["checkpoint"] else InsaneSRNet()
    model = model.to(memory_format=torch.channels_last).eval()
    forward = model_forward(model, torch.device("cpu"), spec["precision"])
    # Smooth colour noise: the compute does not depend on the content, only the PNG size does.
    rng = np.random.default_rng(0)
    size = spec["size"]
    image = cv2.resize(rng.integers(0, 256, (size // 8 + 1, size // 8 + 1, 3), dtype=np.uint8), (size, size),
                       interpolation=cv2.INTER_CUBIC)
    lr = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    runs = []
    for _ in range(spec["repeats"]):  # a repeat shows the speed once oneDNN has built its kernels
        started = time.perf_counter()
        out = upscale_image(forward, lr, tile=spec["tile"], overlap=spec["overlap"], batch_size=spec["batch_size"])
        runs.append(time.perf_counter() - started)
    started = time.perf_counter()
    png = encode_png(np.ascontiguousarray(out.permute(1, 2, 0).numpy()))
    return {"seconds": runs[-1], "first_seconds": runs[0], "encode_seconds": time.perf_counter() - started,
            "png_mb": len(png) / 2**20, "peak_rss_mb": _own_peak_rss_mb(), "ru_maxrss_mb": _peak_rss_mb(),
            "threads": torch.get_num_threads()}


def _run_stage(spec: dict, stage: str = "_stage") -> dict:
    """Run `stage(spec)` of this module in a fresh Python process; its result as a dict."""
    code = ("import json, sys; from insanesr_dist import bench; "
            f"print(json.dumps(bench.{stage}(json.loads(sys.argv[1]))))")
    result = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise click.ClickException(f"benchmark process failed: {tail}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# bench train / data / metric: each stage in a fresh process, on the same data


def training_flops_per_lr_pixel(model) -> float:
    """FLOPs of one training step per LR pixel: the convolutions' multiply-adds (everything else is
    noise beside them) x2 FLOPs each, x3 for forward + backward (input and weight gradients)."""
    import torch

    total = 0

    def count(module, inputs, output):
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() * module.in_channels // module.groups * k

    probe = 16
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, probe, probe))
    for hook in hooks:
        hook.remove()
    return 6.0 * total / probe**2


def _matmul_ceiling(spec: dict) -> dict:
    """Large square matmuls, fp32 and bf16: the practical TFLOP/s ceiling of this CPU."""
    import time

    import torch

    torch.set_num_threads(spec["threads"])
    cuda = torch.cuda.is_available()
    seconds, ceiling, n = spec.get("seconds", 1.5), {}, 8192 if cuda else 2048
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if name == "fp16" and not cuda:
            continue  # CPUs without AMX-FP16 emulate it: not a ceiling anyone trains at
        a, b = (torch.randn(n, n, dtype=dtype, device="cuda" if cuda else "cpu") for _ in range(2))
        a @ b  # warm-up: thread pool and kernel selection
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ b
            runs += 1
            if cuda:
                torch.cuda.synchronize()
        ceiling[name] = 2 * n**3 * runs / (time.perf_counter() - started) / 1e12
    return ceiling


def _bare_step(spec: dict) -> dict:
    """The model step alone, as the toolkit builds it (model, optimizer, loss, autocast, memory format),
    on random tensors: forward, backward, optimizer step. Nothing else."""
    import time

    import torch

    from . import faults
    from .config import TrainConfig
    from .losses import training_loss
    from .train import build_model

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    cfg = TrainConfig(**spec["config"])
    model = build_model(cfg)
    optimizer = faults.make_optimizer(model.parameters(), cfg.lr)
    train_model = torch.compile(model) if cfg.compile else model
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    b, p = cfg.batch_size, cfg.patch_size
    lr_u8 = torch.randint(0, 256, (b, 3, p, p), dtype=torch.uint8, device=device)
    hr_u8 = torch.randint(0, 256, (b, 3, 4 * p, 4 * p), dtype=torch.uint8, device=device)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec["precision"])
    times = []
    for _ in range(spec["warmup"] + spec["steps"]):
        started = time.perf_counter()
        lr_img, hr_img = lr_u8.float().div_(255), hr_u8.float().div_(255)
        with torch.autocast(device.type, dtype=half or torch.float32, enabled=half is not None):
            sr = train_model(lr_img)
        loss = training_loss(cfg.loss, cfg.ssim_weight, sr, hr_img)
        loss.backward()  # (no fp16 loss scaling here: a bare step's figure, within a percent or two)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    timed = times[spec["warmup"]:]
    return {"samples_per_s": b * len(timed) / sum(timed), "first_step_s": times[0],
            "flops_per_lr_pixel": training_flops_per_lr_pixel(model.float().cpu())}


def _toolkit_step(spec: dict) -> dict:
    """The full toolkit: the real `python -m insanesr_dist.train` (data loader, Accelerator, autocast,
    scaler, optimizer, EMA, logging), its samples/s read back from its own TensorBoard scalars."""
    import json as json_lib
    import tempfile
    from pathlib import Path

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        args = [sys.executable, "-m", "insanesr_dist.train", "--output-dir", str(out), "--panel-images", "0",
                "--max-steps", str(spec["warmup"] + spec["steps"]), "--epochs", "1000",
                "--log-every", str(spec["log_every"]), "--cpu-threads", str(spec["threads"]),
                "--mixed-precision", spec["precision"], *spec["train_args"]]
        result = subprocess.run(args, capture_output=True, text=True)
        if result.returncode != 0:
            tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise click.ClickException(f"training process failed: {tail}")
        events = EventAccumulator(str(next((out / "logs").rglob("events.out.tfevents.*")).parent))
        events.Reload()
        rates = [(e.step, e.value) for e in events.Scalars("perf/train_samples_per_s")]
        epochs = [json_lib.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Steady state: after the warm-up steps (oneDNN picks its kernels, workers fill their decode caches).
    steady = sorted(v for s, v in rates if s > spec["warmup"]) or sorted(v for _, v in rates)
    return {"samples_per_s": steady[len(steady) // 2], "intervals": len(steady),
            "epoch_samples_per_s": [round(e["samples_per_s"], 2) for e in epochs]}


def _seed_baseline(spec: dict) -> dict:
    """The seed report's loop written plainly, for comparison: a Dataset decoding both PNGs per sample
    (cv2), one DataLoader worker, float32 on the CPU (its autocast/GradScaler are CUDA-only, so off),
    default Adam, `loss.item()` every step; the same crops and augmentation as the toolkit."""
    import time

    import cv2
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Dataset

    from .data import load_splits, random_pair_crop, sample_rng
    from .model import InsaneSRNet

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    table = load_splits(spec["data"], val_fraction=0.1, seed=0).train

    class SeedPairs(Dataset):
        def __len__(self):
            return len(table)

        def __getitem__(self, i):
            row = table[i]
            lr, hr = (cv2.cvtColor(cv2.imdecode(np.frombuffer(row[c]["bytes"], np.uint8), cv2.IMREAD_COLOR),
                                   cv2.COLOR_BGR2RGB) for c in ("lr", "hr"))
            lr, hr = random_pair_crop(lr, hr, spec["patch_size"], 4, sample_rng(0, 0, i))
            return (torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1))).float() / 255,
                    torch.from_numpy(np.ascontiguousarray(hr.transpose(2, 0, 1))).float() / 255)

    loader = DataLoader(SeedPairs(), batch_size=spec["batch_size"], shuffle=True, num_workers=1, drop_last=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = InsaneSRNet().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    criterion = torch.nn.MSELoss()
    times, wanted = [], spec["warmup"] + spec["steps"]
    while len(times) < wanted:
        started = time.perf_counter()
        for lr_imgs, hr_imgs in loader:
            lr_imgs, hr_imgs = lr_imgs.to(device), hr_imgs.to(device)
            optimizer.zero_grad()
            loss = criterion(model(lr_imgs), hr_imgs)
            loss.backward()
            optimizer.step()
            loss.item()
            times.append(time.perf_counter() - started)
            started = time.perf_counter()
            if len(times) == wanted:
                break
    timed = times[spec["warmup"]:]
    return {"samples_per_s": spec["batch_size"] * len(timed) / sum(timed)}


def _data_pipeline(spec: dict) -> dict:
    """The toolkit's training loader alone (decode, crop, augment, collate) with one worker: pairs/s
    in a first epoch (decoding every PNG) and a second (crops from the workers' decoded cache)."""
    import time

    import torch

    from .data import load_splits, train_loader

    torch.set_num_threads(1)
    table = load_splits(spec["data"], val_fraction=0.1, seed=0).train
    loader = train_loader(table, batch_size=spec["batch_size"], patch_size=spec["patch_size"], scale=4, seed=0,
                          num_workers=1, cache_mb=spec["cache_mb"])
    iter(loader)  # start the persistent worker before timing
    rates = []
    for epoch in range(2):
        loader.dataset.set_epoch(epoch)
        pairs, started = 0, time.perf_counter()
        for lr, _ in loader:
            pairs += len(lr)
        rates.append(pairs / (time.perf_counter() - started))
    return {"cold_pairs_per_s": rates[0], "warm_pairs_per_s": rates[1], "pairs_per_epoch": pairs}


def _metric_speed(spec: dict) -> dict:
    """Grader-exact PSNR/SSIM (metrics.py) and scikit-image's on the same uint8 images, one thread."""
    import time

    import cv2
    import numpy as np
    import torch

    from .data import EvalImages, load_splits
    from .metrics import psnr_ssim

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    val = load_splits(spec["data"], val_fraction=0.1, seed=0).val
    images = EvalImages(val, with_hr=True)
    pairs = []
    for i in range(len(images)):
        _, lr, hr = images[i]
        hr_np = hr.permute(1, 2, 0).numpy()
        up = cv2.resize(lr.permute(1, 2, 0).numpy(), hr_np.shape[1::-1], interpolation=cv2.INTER_CUBIC)
        pairs.append((up, hr_np))
    result = {"images": len(pairs), "pixels": int(sum(h.shape[0] * h.shape[1] for _, h in pairs))}
    # Warm-up passes, untimed, for both: first calls pay for fresh memory (page faults) until the
    # allocator keeps its large blocks, as it does through a training run's validations.
    [psnr_ssim(up, hr) for up, hr in pairs]
    started = time.perf_counter()
    ours = [psnr_ssim(up, hr)[0].tolist() for up, hr in pairs]
    result["ours_images_per_s"] = len(pairs) / (time.perf_counter() - started)
    try:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    except ImportError:
        result["skimage_images_per_s"] = None
        return result
    [structural_similarity(hr, up, channel_axis=2, win_size=7, data_range=255) for up, hr in pairs]
    started = time.perf_counter()
    theirs = [(peak_signal_noise_ratio(hr, up, data_range=255),
               structural_similarity(hr, up, channel_axis=2, win_size=7, data_range=255)) for up, hr in pairs]
    result["skimage_images_per_s"] = len(pairs) / (time.perf_counter() - started)
    result["max_abs_difference"] = float(max(np.abs(np.array(ours) - np.array(theirs)).max(), 0.0))
    return result



@click.group("bench", context_settings={"max_content_width": 110})
def bench() -> None:
    """Measure speed and peak memory; each measurement runs in a fresh process.

    \b
    Example:
      insanesr-dist bench predict --size 512 --mixed-precision bf16
    """


@bench.command("predict")
@click.option("--size", default=2048, show_default=True, type=click.IntRange(8), help="LR edge of the tiled run.")
@click.option("--untiled-size", default=256, show_default=True, type=click.IntRange(0),
              help="LR edge of the whole-image run (0 skips it).")
@click.option("--tile", default=128, show_default=True, type=click.IntRange(1), help="As for predict.")
@click.option("--tile-overlap", "overlap", default=16, show_default=True, type=click.IntRange(0),
              help="As for predict.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1), help="As for predict.")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False),
              help="Weights to use [default: the default model, randomly initialised: the speed is the same].")
@click.option("--mixed-precision", "precision", default="no", show_default=True,
              type=click.Choice(["no", "bf16"]), help="no = float32; bf16 autocast (fast on CPUs with AMX).")
@click.option("--threads", default=len(os.sched_getaffinity(0)), show_default="all cores", type=click.IntRange(1),
              help="torch CPU threads.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the lines.")
def bench_predict(size: int, untiled_size: int, tile: int, overlap: int, batch_size: int, checkpoint: str | None,
                  precision: str, threads: int, as_json: bool) -> None:
    """CPU upscaling: seconds, LR megapixels/s tiled and untiled, peak RSS of each run.

    \b
    Example (a few minutes on 2 cores):
      insanesr-dist bench predict --size 2048 --tile 128 --tile-overlap 16
    """
    common = {"checkpoint": checkpoint, "precision": precision, "threads": threads, "batch_size": batch_size}
    tiled = _run_stage({**common, "size": size, "tile": tile, "overlap": overlap, "repeats": 1})
    tiled["lr_megapixels_per_s"] = size * size / 1e6 / tiled["seconds"]
    whole = _run_stage({**common, "size": untiled_size, "tile": 0, "overlap": 0, "repeats": 2}) if untiled_size else None
    if whole:
        whole["lr_megapixels_per_s"] = untiled_size**2 / 1e6 / whole["seconds"]
    if as_json:
        click.echo(json.dumps({"precision": precision, "threads": threads, "size": size, "tile": tile,
                               "overlap": overlap, "tiled": tiled, "untiled_size": untiled_size, "untiled": whole},
                              indent=2))
        return
    click.echo(f"bench predict: CPU, {threads} thread(s), precision {precision}, "
               f"{'weights ' + checkpoint if checkpoint else 'default model (random init)'}")
    verdict = "OK" if tiled["peak_rss_mb"] <= RSS_LIMIT_MB else "OVER"
    click.echo(f"tiled   {size}x{size} LR -> {4 * size}x{4 * size}: tile {tile} overlap {overlap} batch {batch_size}: "
               f"{tiled['seconds']:.1f} s, {size * size / 1e6 / tiled['seconds']:.4f} LR MP/s; "
               f"PNG encode {tiled['encode_seconds']:.1f} s ({tiled['png_mb']:.0f} MB); "
               f"peak RSS {tiled['peak_rss_mb']:.0f} MB ({verdict}: limit {RSS_LIMIT_MB} MB)")
    if whole:
        click.echo(f"untiled {untiled_size}x{untiled_size} LR: {whole['seconds']:.2f} s (first run "
                   f"{whole['first_seconds']:.2f} s), {untiled_size ** 2 / 1e6 / whole['seconds']:.4f} LR MP/s; "
                   f"peak RSS {whole['peak_rss_mb']:.0f} MB")
    click.echo(f"ru_maxrss: children {_peak_rss_mb(resource.RUSAGE_CHILDREN):.0f} MB (a child's includes this "
               f"launching process's {_peak_rss_mb():.0f} MB, carried across exec; the peaks above are VmHWM)")


def _demo_or(data: str | None) -> str:
    from .demo_data import ensure_demo_data

    return data or str(ensure_demo_data())


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({len(os.sched_getaffinity(0))} cores)"


def _common(command):
    """Options every training-side benchmark takes, with the training defaults."""
    for option in reversed([
        click.option("--data", help="Dataset as for train [default: the embedded demo data]."),
        click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1)),
        click.option("--patch-size", default=32, show_default=True, type=click.IntRange(1), help="LR crop edge."),
        click.option("--threads", default=len(os.sched_getaffinity(0)), show_default="all cores",
                     type=click.IntRange(1), help="torch CPU threads."),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table."),
    ]):
        command = option(command)
    return command


@bench.command("train")
@_common
@click.option("--mixed-precision", "precision", default="auto", show_default=True,
              type=click.Choice(["auto", "no", "fp16", "bf16"]), help="As for train.")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True, help="As for train.")
@click.option("--compile", "compile_", is_flag=True, help="As for train: torch.compile the training step.")
@click.option("--steps", default=30, show_default=True, type=click.IntRange(5), help="Timed optimizer steps.")
@click.option("--warmup", default=8, show_default=True, type=click.IntRange(1), help="Untimed steps before.")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also time the seed report's plain float32 loop on the same data.")
def bench_train(data, batch_size, patch_size, threads, as_json, precision, channels_last, compile_, steps, warmup,
                baseline) -> None:
    """Training speed: the full toolkit step (the real `insanesr_dist.train`, its samples/s read from its
    TensorBoard log), the bare model step, the seed-style baseline, the data pipeline and a matmul
    ceiling measured here, side by side, with the ratios between them.

    \b
    Examples (about 3 minutes on 2 CPU cores):
      insanesr-dist bench train --baseline
      insanesr-dist bench train --mixed-precision no --json
    """
    from .train import resolve_precision

    data = _demo_or(data)
    precision = resolve_precision(precision)[0]
    config = {"batch_size": batch_size, "patch_size": patch_size, "channels_last": channels_last,
              "compile": compile_}
    train_args = ["--data", data, "--batch-size", str(batch_size), "--patch-size", str(patch_size),
                  "--channels-last" if channels_last else "--no-channels-last", *(["--compile"] if compile_ else [])]
    timing = {"threads": threads, "steps": steps, "warmup": warmup, "precision": precision}
    report = {"device": _device_name(), "threads": threads, "precision": precision, "batch_size": batch_size,
              "patch_size": patch_size, "channels_last": channels_last, "compile": compile_, "data": data}
    report["ceiling_tflops"] = _run_stage({"threads": threads}, "_matmul_ceiling")
    report["bare"] = _run_stage({**timing, "config": config}, "_bare_step")
    report["toolkit"] = _run_stage({**timing, "train_args": train_args, "log_every": 5}, "_toolkit_step")
    report["data_pipeline"] = _run_stage({"data": data, "batch_size": batch_size, "patch_size": patch_size,
                                          "cache_mb": 1024}, "_data_pipeline")
    if baseline:
        report["baseline"] = _run_stage({**timing, "data": data, "batch_size": batch_size,
                                         "patch_size": patch_size}, "_seed_baseline")
    flops_per_sample = report["bare"]["flops_per_lr_pixel"] * patch_size**2
    ceiling = report["ceiling_tflops"].get(precision if precision != "no" else "fp32")
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
        "data_headroom_per_worker": report["data_pipeline"]["warm_pairs_per_s"] / toolkit,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    c = report["ceiling_tflops"]
    click.echo(f"bench train: {report['device']}, {threads} thread(s); batch {batch_size}, LR patch {patch_size} "
               f"(HR {4 * patch_size}); data {data}")
    click.echo(f"matmul ceiling: " + ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in c.items())
               + f"; the model costs {flops_per_sample / 1e9:.1f} GFLOP per sample per step")
    click.echo(f"{'':34}{'samples/s':>10}{'TFLOP/s':>9}{'% bf16 ceiling':>16}")
    rows = [("baseline", "seed-style loop (float32)"), ("bare", f"bare model step ({precision})"),
            ("toolkit", f"full toolkit step ({precision})")]
    for key, label in rows:
        if key in report:
            r = report[key]
            click.echo(f"{label:34}{r['samples_per_s']:10.2f}{r['tflops']:9.3f}{r['percent_of_bf16_ceiling']:15.1f}%")
    d = report["data_pipeline"]
    click.echo(f"data pipeline, 1 worker: {d['cold_pairs_per_s']:.0f} pairs/s decoding, "
               f"{d['warm_pairs_per_s']:.0f} pairs/s from its decoded cache")
    ratios = report["ratios"]
    if baseline:
        click.echo(f"toolkit / seed-style baseline: {ratios['toolkit_over_baseline']:.2f}x   (target >= 3.0x)")
    click.echo(f"toolkit overhead vs bare step: {ratios['toolkit_overhead_percent']:.1f}%   (target <= 10%)")
    click.echo(f"toolkit share of the bf16 matmul ceiling: {ratios['toolkit_percent_of_bf16_ceiling']:.1f}%   "
               "(target >= 40%)")
    click.echo(f"data pipeline / training consumption: {ratios['data_headroom_per_worker']:.1f}x per worker   "
               "(target >= 5x)")
    if compile_:
        click.echo(f"torch.compile: first bare step {report['bare']['first_step_s']:.1f} s (compilation)")


@bench.command("data")
@_common
@click.option("--cache-mb", default=1024, show_default=True, type=click.IntRange(0),
              help="As --decoded-cache-mb for train; 0 decodes every time.")
def bench_data(data, batch_size, patch_size, threads, as_json, cache_mb) -> None:
    """Data pipeline: LR/HR pairs per second from one DataLoader worker (decode, crop, augment,
    collate), in a first epoch (decoding PNGs) and a second (from the worker's decoded cache)."""
    data = _demo_or(data)
    result = _run_stage({"data": data, "batch_size": batch_size, "patch_size": patch_size, "cache_mb": cache_mb},
                        "_data_pipeline")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"bench data: {data}, batch {batch_size}, LR patch {patch_size}, 1 worker, cache {cache_mb} MB")
    click.echo(f"epoch 1 (decoding): {result['cold_pairs_per_s']:.0f} pairs/s; epoch 2 (cached): "
               f"{result['warm_pairs_per_s']:.0f} pairs/s; {result['pairs_per_epoch']} pairs per epoch")


@bench.command("metric")
@click.option("--data", help="Dataset as for train; its validation split is scored [default: the demo data].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def bench_metric(data, as_json) -> None:
    """The grader-exact metric (metrics.py) next to scikit-image's, one thread, on the same images:
    the validation split's HR against bicubic upscales of its LR."""
    data = _demo_or(data)
    result = _run_stage({"data": data}, "_metric_speed")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"bench metric: {result['images']} images, {result['pixels'] / 1e6:.2f} HR megapixels, 1 thread")
    click.echo(f"grader-exact (torch, float64): {result['ours_images_per_s']:.1f} images/s")
    if result["skimage_images_per_s"] is None:
        click.echo("scikit-image: not installed (pip install scikit-image)")
    else:
        click.echo(f"scikit-image:                  {result['skimage_images_per_s']:.1f} images/s; "
                   f"speed ratio {result['ours_images_per_s'] / result['skimage_images_per_s']:.2f}x; "
                   f"largest PSNR/SSIM difference {result['max_abs_difference']:.1e}")
