"""The measurements behind `insanesr-dist bench` (bench.py): each stage (STAGES, by name) takes a JSON-able spec,
runs in a fresh process and returns a JSON-able dict of figures.

A fresh process per measurement keeps one measurement's threads, allocations and peak RSS out of the next's.
This folder is not part of the installed package: its scripts import insanesr_dist, never the other way round,
and import each other by file name (a script's folder is first on its sys.path; `call_command` puts it there
for a child).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from insanesr_dist import run_files
from insanesr_dist.tools.children import failure_line

HERE = Path(__file__).resolve().parent
FIXED_BATCHES = 4  # the bare step cycles through this many of the loader's batches


def call_command(module: str, table: str, name: str, spec: dict) -> list[str]:
    """The command that runs `table[name](spec)` of `module`, a script of this folder (STAGES here, gpu_checks'
    CHECKS), in a fresh Python and prints its JSON-able result on the last line of its stdout."""
    code = (
        f"import json, sys; sys.path.insert(0, {str(HERE)!r}); from {module} import {table}; "
        f"print(json.dumps({table}[sys.argv[1]](json.loads(sys.argv[2]))))"
    )
    return [sys.executable, "-c", code, name, json.dumps(spec)]


def json_result(stdout: str) -> dict:
    """A child's result: the JSON on the last line of its stdout (anything printed before it is not ours)."""
    return json.loads(stdout.strip().splitlines()[-1])


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def predict_stage(spec: dict) -> dict:
    """Child process: upscale one synthetic image as `spec` says; report seconds and peak RSS."""
    import time

    import cv2
    import numpy as np
    import torch

    from insanesr_dist.data.images import encode_png
    from insanesr_dist.data.tensors import to_chw, to_hwc
    from insanesr_dist.inference.forward import model_forward
    from insanesr_dist.inference.tiles import upscale_image
    from insanesr_dist.model.architecture import InsaneSRNet
    from insanesr_dist.model.weights import load_model
    from insanesr_dist.training.host_memory import own_peak_rss_mb

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model = load_model(spec["checkpoint"]) if spec["checkpoint"] else InsaneSRNet()
    model = model.to(memory_format=torch.channels_last).eval()
    forward = model_forward(model, torch.device("cpu"), spec["precision"])
    # Smooth colour noise: the compute does not depend on the content, only the PNG size does.
    rng = np.random.default_rng(0)
    size = spec["size"]
    image = cv2.resize(
        rng.integers(0, 256, (size // 8 + 1, size // 8 + 1, 3), dtype=np.uint8),
        (size, size),
        interpolation=cv2.INTER_CUBIC,
    )
    lr = to_chw(image)
    runs = []
    for _ in range(spec["repeats"]):  # a repeat shows the speed once oneDNN has built its kernels
        started = time.perf_counter()
        out = upscale_image(forward, lr, tile=spec["tile"], overlap=spec["overlap"], batch_size=spec["batch_size"])
        runs.append(time.perf_counter() - started)
    started = time.perf_counter()
    png = encode_png(to_hwc(out))
    return {
        "seconds": runs[-1],
        "first_seconds": runs[0],
        "encode_seconds": time.perf_counter() - started,
        "png_mb": len(png) / 2**20,
        "peak_rss_mb": own_peak_rss_mb(),
        "ru_maxrss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }


def training_flops_per_lr_pixel(model) -> float:
    """FLOPs of one training step (forward and backward) per LR pixel, as torch's FLOP counter sees the
    convolutions (multiply-adds x2; everything else is noise beside them) on a small probe image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    probe = 16
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, probe, probe)).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / probe**2


def matmul_ceiling(spec: dict) -> dict:
    """Large square matmuls, fp32 and bf16: the practical TFLOP/s ceiling of this CPU.

    The size doubles from 256 up to 2048 (8192 on a GPU) while one matmul stays short of a tenth of the time
    budget, so a CPU that emulates bf16 (no AMX/AVX512-BF16: a 2048-wide matmul takes minutes) is measured at
    a size it can do in the budget instead of stalling the bench."""
    import time

    import torch

    torch.set_num_threads(spec["threads"])
    cuda = torch.cuda.is_available()
    seconds, ceiling, largest = spec.get("seconds", 1.5), {}, 8192 if cuda else 2048

    def one(a, b) -> float:
        started = time.perf_counter()
        a @ b
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started

    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if name == "fp16" and not cuda:
            continue  # CPUs without AMX-FP16 emulate it: not a ceiling anyone trains at
        n = 256
        while True:
            a, b = (torch.randn(n, n, dtype=dtype, device="cuda" if cuda else "cpu") for _ in range(2))
            one(a, b)  # warm-up: thread pool and kernel selection
            if n >= largest or one(a, b) > seconds / 10:
                break
            n *= 2
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            one(a, b)
            runs += 1
        ceiling[name] = 2 * n**3 * runs / (time.perf_counter() - started) / 1e12
    return ceiling


def bare_step(spec: dict) -> dict:
    """The training step alone: the real `Trainer.train_step` (model inputs, forward, loss, backward, optimizer
    step, EMA) of a trainer that the real train command sets up for these settings, timed on a few fixed batches
    of its own loader. No data wait, logging, step checks or evaluation between the steps: what the toolkit row
    adds to this is the loop around the step."""
    import contextlib
    import itertools
    import tempfile
    import time

    import torch

    from insanesr_dist import train
    from insanesr_dist.config import TrainConfig
    from insanesr_dist.trainer import Trainer, build_model

    times: list[float] = []

    class TimedSteps(Trainer):
        def train(self):
            # The epoch's first batches, kept: the step's time without the loader's. Consumed in the step as
            # the loop would consume them (a worker's crops, or the device store's plans).
            batches, _ = self.batches.of_epoch(self.state.epoch, 0, self.steps_per_epoch)
            fixed = list(itertools.islice(batches, FIXED_BATCHES))
            for i in range(spec["warmup"] + spec["steps"]):
                started = time.perf_counter()
                self.train_step(fixed[i % len(fixed)])
                if self.accelerator.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
            self.accelerator.end_training()
            return self.out_dir

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            **spec["config"],
            data=spec["data"],
            output_dir=f"{tmp}/run",
            mixed_precision=spec["precision"],
            cpu_threads=spec["threads"],
            max_steps=spec["warmup"] + spec["steps"],
            epochs=1000,
            panel_images=0,
            num_workers=0,  # the batches are taken once: no worker needed to cut them
        )
        # The trainer's lines go to stderr: in `--one-process`, this process's stdout is the bench's JSON.
        with contextlib.redirect_stdout(sys.stderr):
            train.train(cfg, trainer_class=TimedSteps)
    timed = times[spec["warmup"] :]
    return {
        "samples_per_s": cfg.batch_size * len(timed) / sum(timed),
        "first_step_s": times[0],
        "flops_per_lr_pixel": training_flops_per_lr_pixel(build_model(cfg).float()),
    }


def toolkit_step(spec: dict) -> dict:
    """The full toolkit: the real `python -m insanesr_dist.train` (data loader, Accelerator, autocast,
    scaler, optimizer, EMA, logging), its samples/s read back from its own TensorBoard scalars. With
    `in_process` (bench train --one-process), the same train command runs in this process instead."""
    import contextlib
    import json as json_lib
    import tempfile
    from pathlib import Path

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        args = [
            "--output-dir",
            str(out),
            "--panel-images",
            "0",
            "--max-steps",
            str(spec["warmup"] + spec["steps"]),
            "--epochs",
            "1000",
            "--log-every",
            str(spec["log_every"]),
            "--cpu-threads",
            str(spec["threads"]),
            "--mixed-precision",
            spec["precision"],
            *spec["train_args"],
        ]
        if spec.get("in_process"):
            from insanesr_dist.train import main

            # The training's lines go to stderr: this process's stdout is the bench's, its JSON.
            with contextlib.redirect_stdout(sys.stderr):
                main.main(args, prog_name="train", standalone_mode=False)
        else:
            result = subprocess.run(
                [sys.executable, "-m", "insanesr_dist.train", *args], capture_output=True, text=True
            )
            if result.returncode != 0:
                raise RuntimeError(f"training process failed: {failure_line(result.stderr)}")
        events = EventAccumulator(str(next((out / run_files.LOGS).rglob("events.out.tfevents.*")).parent))
        events.Reload()
        rates = [(e.step, e.value) for e in events.Scalars("perf/train_samples_per_s")]
        epochs = [json_lib.loads(line) for line in (out / run_files.METRICS).read_text().splitlines()]
    # Steady state: after the warm-up steps (oneDNN picks its kernels, workers fill their decode caches).
    steady = sorted(v for s, v in rates if s > spec["warmup"]) or sorted(v for _, v in rates)
    return {
        "samples_per_s": steady[len(steady) // 2],
        "intervals": len(steady),
        "epoch_samples_per_s": [round(e["samples_per_s"], 2) for e in epochs],
    }


def seed_baseline(spec: dict) -> dict:
    """The seed report's loop written plainly, for comparison: a Dataset decoding both PNGs per sample
    (cv2), one DataLoader worker, float32 on the CPU (its autocast/GradScaler are CUDA-only, so off),
    default Adam, `loss.item()` every step; the same crops and augmentation as the toolkit."""
    import time

    import cv2
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Dataset

    from insanesr_dist.data.crops import crop_draws, random_pair_crop
    from insanesr_dist.data.splits import load_splits
    from insanesr_dist.data.tensors import to_chw
    from insanesr_dist.model.architecture import InsaneSRNet

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    table = load_splits(spec["data"], val_fraction=0.1, seed=0).train

    class SeedPairs(Dataset):
        def __len__(self):
            return len(table)

        def __getitem__(self, i):
            row = table[i]  # a folder's table holds the files' paths; a saved dataset's, their bytes
            files = [row[c]["bytes"] or open(row[c]["path"], "rb").read() for c in ("lr", "hr")]  # noqa: SIM115
            lr, hr = (
                cv2.cvtColor(cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                for f in files
            )
            lr, hr = random_pair_crop(lr, hr, spec["patch_size"], 4, crop_draws(0, 0, i))
            return to_chw(lr).float() / 255, to_chw(hr).float() / 255

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
    timed = times[spec["warmup"] :]
    return {"samples_per_s": spec["batch_size"] * len(timed) / sum(timed)}


def data_pipeline(spec: dict) -> dict:
    """The training data path alone (crop, augment, collate in one DataLoader worker): the decoded store built
    with 1 and with 2 processes (fresh folders), reopened (decoding nothing), crops/s from it, the start-up time
    to a first batch, and the path without a store (decoding PNGs, then from a worker's decoded cache)."""
    import tempfile
    import time
    from concurrent.futures import ProcessPoolExecutor
    from pathlib import Path

    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from insanesr_dist.data import loaders
    from insanesr_dist.data.splits import load_splits

    torch.set_num_threads(1)
    crops, batch = spec["crops"], spec["batch_size"]

    def splits(store_dir: str, store_gb: float = 1e6, workers: int | None = None):
        return load_splits(
            spec["data"],
            val_fraction=0.1,
            seed=0,
            store_dir=store_dir,
            store_gb=store_gb,
            store_workers=workers,
            say=lambda line: None,
        )

    def crops_per_s(pairs: loaders.TrainPairs, epochs: int = 2, count: int = crops) -> list[float]:
        """Crops per second of one persistent worker, epoch by epoch (`count` random pairs each)."""
        sampler = RandomSampler(pairs, replacement=True, num_samples=count)
        loader = DataLoader(
            pairs, batch_size=batch, sampler=sampler, collate_fn=loaders.collate_windows, **loaders.loader_kwargs(1)
        )
        rates = []
        for epoch in range(epochs):
            pairs.set_epoch(epoch)
            started, seen = time.perf_counter(), 0
            for windows in loader:
                seen += len(windows.lr)
            rates.append(seen / (time.perf_counter() - started))
        return rates

    # As train() does first: the fork server that starts DataLoader and store-building processes, warmed up, so
    # its one-time start (importing torch and datasets) is not counted as building time.
    loaders.start_worker_server()
    with ProcessPoolExecutor(1, mp_context=loaders.worker_context()) as pool:
        pool.submit(abs, 0).result()
    result = {}
    with tempfile.TemporaryDirectory(dir=spec.get("store_dir")) as stores:
        cores = sorted(os.sched_getaffinity(0))
        for workers in (2, 1):  # each into a fresh folder (a whole build), on as many cores as processes
            os.sched_setaffinity(0, cores[:workers])
            started = time.perf_counter()
            built = splits(f"{stores}/{workers}", workers=workers)
            result[f"build_seconds_{workers}"] = time.perf_counter() - started
        os.sched_setaffinity(0, cores)
        started = time.perf_counter()
        built = splits(f"{stores}/1")  # a second run over the same files: nothing decoded
        result["reopen_seconds"] = time.perf_counter() - started
        pairs = loaders.TrainPairs(built.train, patch_size=spec["patch_size"], scale=4, seed=0, pixels=built.pixels)
        loader = DataLoader(
            pairs, batch_size=batch, shuffle=True, collate_fn=loaders.collate_windows, **loaders.loader_kwargs(1)
        )
        next(iter(loader))
        result["startup_seconds"] = time.perf_counter() - started  # reopened store to a first batch
        del loader
        result["store_crops_per_s"] = crops_per_s(pairs)[-1]
        result["store_gb"] = built.pixels.decoded_bytes / 1e9
        result["pairs"] = len(built.pixels.rows)
        result["store_files_mb"] = sum(p.stat().st_size for p in Path(stores, "1").rglob("*")) / 2**20
        # Without a store: a crop per decoded pair (no cache), and crops from a worker's decoded cache.
        plain = splits(f"{stores}/none", store_gb=0).train
        pairs = loaders.TrainPairs(plain, patch_size=spec["patch_size"], scale=4, seed=0)
        result["decode_crops_per_s"] = crops_per_s(pairs, 1, min(crops, len(plain)))[0]
        pairs = loaders.TrainPairs(plain, patch_size=spec["patch_size"], scale=4, seed=0, cache_mb=spec["cache_mb"])
        result["cached_crops_per_s"] = crops_per_s(pairs)[-1]
    result["peak_rss_mb"] = peak_rss_mb()
    result["peak_worker_rss_mb"] = peak_rss_mb(resource.RUSAGE_CHILDREN)
    return result


def metric_speed(spec: dict) -> dict:
    """Grader-exact PSNR/SSIM (scoring/metrics.py) and scikit-image's on the same uint8 images, one thread."""
    import time

    import cv2
    import numpy as np
    import torch

    from insanesr_dist.data.loaders import EvalImages
    from insanesr_dist.data.splits import load_splits
    from insanesr_dist.data.tensors import to_hwc
    from insanesr_dist.scoring.metrics import SSIM_WINDOW, psnr_ssim

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    val = load_splits(spec["data"], val_fraction=0.1, seed=0).val
    images = EvalImages(val, with_hr=True)
    pairs = []
    for i in range(len(images)):
        _, lr, hr = images[i]
        hr_np = to_hwc(hr)  # as the grader reads a PNG
        up = cv2.resize(to_hwc(lr), hr_np.shape[1::-1], interpolation=cv2.INTER_CUBIC)
        pairs.append((up, hr_np))
    result = {"images": len(pairs), "pixels": int(sum(h.shape[0] * h.shape[1] for _, h in pairs))}

    def ours():
        return [psnr_ssim(up, hr)[0].tolist() for up, hr in pairs]

    def grader():
        return [
            (
                peak_signal_noise_ratio(hr, up, data_range=255),
                structural_similarity(hr, up, channel_axis=2, win_size=SSIM_WINDOW, data_range=255),
            )
            for up, hr in pairs
        ]

    def images_per_s(score) -> tuple[float, list]:
        # One untimed pass (first calls pay page faults for fresh memory), then the best of five:
        # twenty images take a few tenths of a second, so one pass is at the mercy of the scheduler.
        scores, best = score(), float("inf")
        for _ in range(5):
            started = time.perf_counter()
            score()
            best = min(best, time.perf_counter() - started)
        return len(pairs) / best, scores

    result["ours_images_per_s"], scores = images_per_s(ours)
    try:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    except ImportError:
        result["skimage_images_per_s"] = None
        return result
    result["skimage_images_per_s"], theirs = images_per_s(grader)
    result["max_abs_difference"] = float(max(np.abs(np.array(scores) - np.array(theirs)).max(), 0.0))
    return result


def per_tensor_ema_update(ema, model, d: float) -> None:
    """The EMA update as it was before training/ema.py used one multi-tensor lerp: two state_dict()s and one
    `lerp_` per tensor. Kept as the reference the new update must equal bit for bit, and as its speed baseline."""
    import torch

    with torch.no_grad():
        for e, live in zip(ema.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.lerp_(live.detach(), 1 - d)
            else:
                e.copy_(live)


def ema_update(spec: dict) -> dict:
    """Milliseconds per EMA update on the default InsaneSRNet (channels-last, as trained), median of
    `updates` timed ones each way: the old per-tensor loop and training/ema.py's multi-tensor lerp."""
    import statistics
    import time

    import torch

    from insanesr_dist.model.architecture import InsaneSRNet
    from insanesr_dist.training.ema import WeightEMA

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = InsaneSRNet().to(device, memory_format=torch.channels_last)
    ema, reference = WeightEMA(model, 0.999), WeightEMA(model, 0.999)

    def seconds(update) -> float:
        started = time.perf_counter()
        update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    # The two alternate, update by update, so that a busy machine's slow moments fall on both alike.
    old, new = [], []
    for i in range(spec["warmup"] + spec["updates"]):
        d = min(0.999, (2 + i) / (11 + i))
        old.append(seconds(lambda d=d: per_tensor_ema_update(reference.module, model, d)))
        new.append(seconds(lambda: ema.update(model)))
    timed = slice(spec["warmup"], None)
    return {
        "tensors": len(list(model.parameters())) + len(list(model.buffers())),
        "per_tensor_ms": 1000 * statistics.median(old[timed]),
        "foreach_ms": 1000 * statistics.median(new[timed]),
    }


# What bench.py (and gpu_checks.py) run in a child, by name
STAGES = {
    "predict": predict_stage,
    "matmul_ceiling": matmul_ceiling,
    "bare_step": bare_step,
    "toolkit_step": toolkit_step,
    "seed_baseline": seed_baseline,
    "data_pipeline": data_pipeline,
    "metric_speed": metric_speed,
    "ema_update": ema_update,
}
