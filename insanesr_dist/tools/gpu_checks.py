"""GPU checks (issue 13): what can only be verified on a CUDA GPU, in one command, as one markdown table.

    launch/gpu_checks.sh            # or: python -m insanesr_dist.tools.gpu_checks [--budget-s 450]

1. fp16 and bf16 training (the real `train()`, a few hundred steps) under
   `torch.cuda.set_sync_debug_mode("warn")`: no host synchronisation per step once warmed up.
2. A NaN gradient on channels-last gradients: the fused Adam skips the step (weights and moments
   unchanged), in bf16/fp32 through BadSteps' found_inf and in fp16 through the GradScaler.
3. Validation JM of one trained model with IEEE float32 convolutions (what validation uses) and TF32.
4. The full toolkit step on DIV2K-sized pairs with the device store (crops cut on the GPU) and without it.
5. `insanesr-dist bench train --json` for fp16/bf16 x channels-last x torch.compile.

Every check runs in a fresh process (as bench.py's measurements do): one check's CUDA state, compiled
graphs and memory stay out of the next. A time budget (default 450 s, for ~8 minutes on an H200 with start-up)
bounds the whole: a check that would overrun it is cut off and reported as such, never waited for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from insanesr_dist.commands import Command
from insanesr_dist.errors import UserError
from insanesr_dist.tools.children import call_command, failure_line, json_result

SYNC_WARNING = "synchronizing CUDA operation"  # what set_sync_debug_mode("warn") says


# ---------------------------------------------------------------------------------------------
# Checks: each runs in a child process (`_child`) and returns a JSON-able dict


def _sync_debug_training(spec: dict) -> dict:
    """The real training loop under sync debug mode; every sync warning is tagged with the training step it
    came in (the count of training_loss calls so far) and where in this package it was called from.

    Syncs that belong to epoch ends (the epoch's loss reduction, validation, saving) are told apart: a
    warning counts as per-step only while training, after `warmup` steps, and not in an epoch's last step.
    """
    import traceback
    import warnings

    import torch

    from insanesr_dist import train
    from insanesr_dist.config import TrainConfig

    now = {"step": 0, "phase": "setup"}
    hits, epoch_ends = [], set()
    # Wrapped where train() looks them up: the names train.py imported.
    real_loss, real_score = train.training_loss, train.score_images

    def training_loss(*args):
        now["step"], now["phase"] = now["step"] + 1, "train"
        return real_loss(*args)

    def score_images(*args):
        epoch_ends.add(now["step"])
        now["phase"] = "epoch end"
        return real_score(*args)

    def record(message, category, filename, lineno, file=None, line=None):
        if SYNC_WARNING in str(message):
            hits.append((now["step"], now["phase"], _caller(traceback.extract_stack())))

    train.training_loss, train.score_images = training_loss, score_images
    warnings.simplefilter("always")  # the default filter would show each call site only once
    warnings.showwarning = record
    # Batch 4: more steps per epoch (fewer epoch ends) than the preset's 16; what syncs does not depend on it.
    settings = {
        "data": spec.get("data"),
        "output_dir": spec["out"],
        "mixed_precision": spec["precision"],
        "max_steps": spec["steps"],
        "epochs": 1000,
        "batch_size": 4,
        "log_every": 10**6,
        "panel_images": 0,
        "num_workers": 2,
        **spec.get("config", {}),
    }
    cuda = torch.cuda.is_available()  # (without CUDA, only the plumbing runs: the CPU test)
    if cuda:
        torch.cuda.set_sync_debug_mode("warn")
    started = time.perf_counter()
    train.train(TrainConfig(**settings))
    if cuda:
        torch.cuda.set_sync_debug_mode(0)
    per_step = per_step_syncs(hits, epoch_ends, spec["warmup"])
    places: dict[str, int] = {}
    for _, _, where in per_step:
        places[where] = places.get(where, 0) + 1
    return {
        "steps": now["step"],
        "warmup": spec["warmup"],
        "per_step_syncs": len(per_step),
        "steps_with_syncs": len({h[0] for h in per_step}),
        "epoch_ends": len(epoch_ends),
        "other_syncs": len(hits) - len(per_step),
        "where": sorted(places.items(), key=lambda p: -p[1])[:3],
        "seconds": time.perf_counter() - started,
    }


def per_step_syncs(hits: list[tuple], epoch_ends: set[int], warmup: int) -> list[tuple]:
    """The (step, phase, where) sync hits that happened in a training step after warm-up, not at an epoch end
    (a hit in an epoch's last step may be its end: the loss reduction, the bad-step read)."""
    return [h for h in hits if h[1] == "train" and h[0] > warmup and h[0] not in epoch_ends]


def _caller(stack) -> str:
    """The innermost frame of this package (not this file) that led to a warning: file:line."""
    for frame in reversed(stack):
        if "insanesr_dist" in frame.filename and not frame.filename.endswith("gpu_checks.py"):
            return f"{Path(frame.filename).name}:{frame.lineno}"
    return "outside insanesr_dist"


def _nan_step(spec: dict) -> dict:
    """One good step, then one whose gradient holds a NaN (injected after backward, into channels-last
    gradients as training makes them): the fused Adam must leave weights and moments as they were.
    bf16/fp32 skip through BadSteps' found_inf, fp16 through the GradScaler."""
    import torch

    device = torch.device(spec.get("device", "cuda"))
    return {mode: _nan_case(device, scaled=mode == "gradscaler") for mode in ("found_inf", "gradscaler")}


def _nan_case(device, scaled: bool) -> dict:
    from types import SimpleNamespace

    import torch

    from insanesr_dist.model.architecture import InsaneSRNet
    from insanesr_dist.training.faults import BadSteps
    from insanesr_dist.training.optimizer import make_optimizer

    torch.manual_seed(0)
    model = InsaneSRNet(num_rrdb=1, channels=16, growth=8, layers_per_block=2)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), 1e-3)
    scaler = torch.amp.GradScaler(device.type) if scaled else None
    bad = BadSteps(SimpleNamespace(scaler=scaler, device=device), optimizer, limit=5)
    x = torch.rand(2, 3, 16, 16, device=device).contiguous(memory_format=torch.channels_last)
    target = torch.rand(2, 3, 64, 64, device=device)

    def step(poison: bool) -> bool:
        """A training step as accelerate makes it; whether the conv gradients were channels-last."""
        with torch.autocast(device.type, dtype=torch.float16 if scaled else torch.bfloat16):
            loss = torch.nn.functional.l1_loss(model(x).float(), target)
        (scaler.scale(loss) if scaled else loss).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None and p.grad.dim() == 4]
        channels_last = all(g.is_contiguous(memory_format=torch.channels_last) for g in grads)
        if poison:
            grads[len(grads) // 2][0, 0, 0, 0] = float("nan")
        bad.check(model.parameters())
        if scaled:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return channels_last

    step(poison=False)
    weights = [p.detach().clone() for p in model.parameters()]
    moments = {k: {n: t.clone() for n, t in v.items()} for k, v in optimizer.state.items()}
    scale = scaler.get_scale() if scaled else None
    channels_last = step(poison=True)
    result = {
        "channels_last_grads": channels_last,
        "weights_unchanged": all(torch.equal(a, b) for a, b in zip(weights, model.parameters())),
        "moments_unchanged": all(
            torch.equal(moments[k][n], optimizer.state[k][n]) for k in moments for n in moments[k]
        ),
        "counted": bad.read(2, lambda _: None),
        "scale": [scale, scaler.get_scale()] if scaled else None,
    }
    step(poison=False)  # and training goes on: the next good step changes the weights
    result["next_step_updates"] = not all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    return result


def _ieee_vs_tf32(spec: dict) -> dict:
    """Validation JM of one model, its float32 forward with IEEE convolutions and matmuls (as validation runs
    it) and with TF32 ones (torch's default for cuDNN convolutions on Ampere+)."""
    import torch
    from accelerate import Accelerator

    from insanesr_dist.data import loaders, splits
    from insanesr_dist.data.demo import ensure_demo_data
    from insanesr_dist.inference.forward import float32_forward
    from insanesr_dist.model.architecture import InsaneSRNet
    from insanesr_dist.model.weights import load_model
    from insanesr_dist.scoring.validation import score_images

    accelerator = Accelerator(mixed_precision="no")
    weights = Path(spec["weights"]) if spec.get("weights") else None
    model = load_model(weights) if weights and weights.is_file() else InsaneSRNet()
    model = model.to(accelerator.device).eval()
    val = splits.load_splits(spec.get("data") or str(ensure_demo_data()), val_fraction=0.1, seed=0).val
    loader = accelerator.prepare(loaders.eval_loader(val, with_hr=True, num_workers=1))
    ieee = float32_forward(accelerator, model)
    knobs = [torch.backends.cudnn.conv, torch.backends.cuda.matmul]
    before = [k.fp32_precision for k in knobs]
    for knob in knobs:
        knob.fp32_precision = "tf32"
    try:
        scores = {
            "ieee": score_images(ieee, loader, accelerator),
            "tf32": score_images(lambda x: type(model).forward(model, x), loader, accelerator),
        }
        with torch.no_grad():
            lr = next(iter(loader))[1].float().to(accelerator.device) / 255
            difference = (ieee(lr) - model(lr)).abs().max().item()
    finally:
        for knob, value in zip(knobs, before):
            knob.fp32_precision = value
    return {
        "model": str(weights) if weights and weights.is_file() else "default model, random init",
        "images": scores["ieee"]["images"],
        "jm_ieee": scores["ieee"]["jm"],
        "jm_tf32": scores["tf32"]["jm"],
        "max_abs_sr_difference": difference,
    }


def _device_store_speed(spec: dict) -> dict:
    """Issue 14: the full toolkit step (bf16, batch 16, LR patch 32) on DIV2K-sized pairs (384 synthetic 2040x1344
    HR frames), crops cut on the GPU from the device store against DataLoader workers cutting them."""
    from insanesr_dist.data.demo import write_demo_data
    from insanesr_dist.tools.bench_stages import toolkit_step

    cores = len(os.sched_getaffinity(0))
    data = write_demo_data(
        Path(spec["out"]) / "div2k-sized", num_train=384, num_test=0, hr_size=(1344, 2040), workers=cores
    )
    result = {}
    for mode in ("on", "off"):
        result[mode] = toolkit_step(
            {
                "warmup": 20,
                "steps": 100,
                "log_every": 10,
                "threads": cores,
                "precision": "bf16",
                "train_args": [
                    "--data",
                    str(data),
                    "--device-store",
                    mode,
                    "--num-workers",
                    str(min(8, cores)),
                    "--val-every",
                    "1000",
                    "--val-max-images",
                    "1",
                    "--store-dir",
                    spec["out"],
                ],
            }
        )
    return result


# The checks a child runs, by name
CHECKS = {
    "sync_debug": _sync_debug_training,
    "nan_step": _nan_step,
    "ieee_vs_tf32": _ieee_vs_tf32,
    "device_store": _device_store_speed,
}


def _run_child(name: str, spec: dict, timeout: float) -> dict:
    """CHECKS[name](spec) in a fresh process; its result, or {"error": one line} (a failure or a timeout)."""
    return _run_json(call_command("insanesr_dist.tools.gpu_checks", "CHECKS", name, spec), timeout)


def _run_json(command: list[str], timeout: float) -> dict:
    if timeout < 20:
        return {"error": "skipped: the time budget is spent"}
    # A session of its own: a cut-off check's grandchildren (bench stages, a training run) go with it.
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        return {"error": f"cut off after {timeout:.0f} s (time budget)"}
    if child.returncode != 0:
        return {"error": failure_line(stderr)[:200]}
    return json_result(stdout)


# ---------------------------------------------------------------------------------------------
# The table


def _rows_sync(precision: str, r: dict) -> list[tuple]:
    check = f"no per-step sync, {precision} training"
    if "error" in r:
        return [(check, "", r["error"], "FAIL")]
    where = ", ".join(f"{w} x{n}" for w, n in r["where"]) or "-"
    result = (
        f"{r['per_step_syncs']} sync warnings in steps {r['warmup'] + 1}-{r['steps']} ({r['steps_with_syncs']} "
        f"steps; at: {where}); {r['other_syncs']} in set-up, warm-up and {r['epoch_ends']} epoch ends; "
        f"{r['seconds']:.0f} s"
    )
    return [(check, f"{r['steps']} steps, warm-up {r['warmup']}", result, "ok" if r["per_step_syncs"] == 0 else "FAIL")]


def _rows_nan(r: dict) -> list[tuple]:
    if "error" in r:
        return [("NaN gradient skipped by fused Adam", "", r["error"], "FAIL")]
    rows = []
    for mode, setting in (("found_inf", "bf16 autocast, BadSteps found_inf"), ("gradscaler", "fp16, GradScaler")):
        m = r[mode]
        good = (
            m["channels_last_grads"]
            and m["weights_unchanged"]
            and m["moments_unchanged"]
            and m["counted"] == 1
            and m["next_step_updates"]
            and (m["scale"] is None or m["scale"][1] < m["scale"][0])
        )
        scale = f"; scale {m['scale'][0]:g} -> {m['scale'][1]:g}" if m["scale"] else ""
        rows.append(
            (
                "NaN gradient skipped by fused Adam",
                f"{setting}, channels-last grads",
                (
                    f"channels-last grads {m['channels_last_grads']}; weights unchanged {m['weights_unchanged']}; "
                    f"moments unchanged {m['moments_unchanged']}; counted {m['counted']}{scale}; next good step "
                    f"updates {m['next_step_updates']}"
                ),
                "ok" if good else "FAIL",
            )
        )
    return rows


def _rows_jm(r: dict) -> list[tuple]:
    if "error" in r:
        return [("validation JM, IEEE vs TF32 convolutions", "", r["error"], "FAIL")]
    return [
        (
            "validation JM, IEEE vs TF32 convolutions",
            f"{r['model']}, {r['images']} val images",
            (
                f"IEEE {r['jm_ieee']:.4f}, TF32 {r['jm_tf32']:.4f} (delta {r['jm_ieee'] - r['jm_tf32']:+.4f}); "
                f"max |SR difference| {r['max_abs_sr_difference']:.2e}"
            ),
            "info",
        )
    ]


def _rows_device_store(r: dict) -> list[tuple]:
    what = "toolkit step on 2K pairs: device store vs DataLoader workers"
    if "error" in r:
        return [(what, "", r["error"], "FAIL")]
    on, off = r["on"]["samples_per_s"], r["off"]["samples_per_s"]
    return [
        (
            what,
            "bf16, batch 16, LR patch 32, 384 pairs 2040x1344",
            f"{on:.0f} vs {off:.0f} samples/s ({on / off:.2f}x)",
            "info",
        )
    ]


def _rows_bench(setting: str, r: dict) -> list[tuple]:
    if "error" in r:
        return [("bench train", setting, r["error"], "FAIL")]
    compile_note = f"; first bare step {r['bare']['first_step_s']:.1f} s" if r["compile"] else ""
    return [
        (
            "bench train",
            setting,
            (
                f"toolkit {r['toolkit']['samples_per_s']:.0f} samples/s, bare {r['bare']['samples_per_s']:.0f}; "
                f"overhead {r['ratios']['toolkit_overhead_percent']:.1f}%; {r['toolkit']['tflops']:.1f} TFLOP/s "
                f"({r['toolkit']['percent_of_bf16_ceiling']:.1f}% of bf16 matmul){compile_note}"
            ),
            "info",
        )
    ]


def markdown_table(rows: list[tuple]) -> str:
    lines = ["| check | setting | result | verdict |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(str(cell).replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The command


def require_cuda() -> str:
    """The GPU's name; one line (UserError) when no CUDA GPU is visible."""
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            "the GPU checks need a CUDA GPU and none is visible (torch.cuda.is_available() is False; "
            "check CUDA_VISIBLE_DEVICES and the driver)"
        )
    return torch.cuda.get_device_name()


@click.command("gpu-checks", cls=Command, context_settings={"max_content_width": 110})
@click.option(
    "--budget-s",
    default=450,
    show_default=True,
    type=click.IntRange(60),
    help="Seconds for all checks together; a check that would overrun is cut off and reported.",
)
@click.option(
    "--steps", default=300, show_default=True, type=click.IntRange(20), help="Training steps of each sync-debug run."
)
@click.option(
    "--warmup",
    default=50,
    show_default=True,
    type=click.IntRange(1),
    help="Steps before the sync count starts (cuDNN autotuning, allocator growth, first epoch's workers).",
)
@click.option("--data", help="Dataset as for train [default: the embedded demo data].")
def main(budget_s: int, steps: int, warmup: int, data: str | None) -> None:
    """Run the GPU-only checks of issue 13 on one CUDA GPU and print one markdown table.

    \b
    Example (about 8 minutes on an H200):
      launch/gpu_checks.sh
      python -m insanesr_dist.tools.gpu_checks --budget-s 900 --steps 500
    """
    device = require_cuda()
    deadline = time.monotonic() + budget_s

    def left(cap: float) -> float:
        return min(cap, deadline - time.monotonic())

    def say(text: str) -> None:
        click.echo(f"[{budget_s - (deadline - time.monotonic()):5.0f} s] {text}", err=True)

    rows: list[tuple] = []
    with tempfile.TemporaryDirectory() as tmp:
        say("NaN gradient step")
        rows += _rows_nan(_run_child("nan_step", {"device": "cuda"}, left(60)))
        for precision in ("fp16", "bf16"):
            say(f"sync debug: {precision} training, {steps} steps")
            spec = {"out": f"{tmp}/{precision}", "precision": precision, "steps": steps, "warmup": warmup}
            rows += _rows_sync(precision, _run_child("sync_debug", {**spec, "data": data} if data else spec, left(100)))
        say("validation JM, IEEE vs TF32")
        rows += _rows_jm(
            _run_child("ieee_vs_tf32", {"weights": f"{tmp}/bf16/latest.safetensors", "data": data}, left(60))
        )
        say("device store vs DataLoader workers on 2K pairs")
        rows += _rows_device_store(_run_child("device_store", {"out": f"{tmp}/store"}, left(150)))
        # The default (channels-last) first, eager before compiled: if the budget ends, it ends in the NCHW rows.
        for channels_last in (True, False):
            for compile_ in (False, True):
                for precision in ("fp16", "bf16"):
                    setting = (
                        f"{precision}, {'channels-last' if channels_last else 'NCHW'}, "
                        f"{'compile' if compile_ else 'eager'}"
                    )
                    say(f"bench train: {setting}")
                    command = [
                        sys.executable,
                        "-m",
                        "insanesr_dist",
                        "bench",
                        "train",
                        "--json",
                        "--no-baseline",
                        "--mixed-precision",
                        precision,
                        "--steps",
                        "30",
                        "--warmup",
                        "8",
                        "--channels-last" if channels_last else "--no-channels-last",
                        *(["--compile"] if compile_ else []),
                        *(["--data", data] if data else []),
                    ]
                    rows += _rows_bench(setting, _run_json(command, left(150 if compile_ else 75)))
    click.echo(f"GPU checks on {device} ({budget_s - (deadline - time.monotonic()):.0f} s)\n")
    click.echo(markdown_table(rows))
    if any(row[3] == "FAIL" for row in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
