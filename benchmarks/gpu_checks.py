"""GPU checks (issue 13): what can only be verified on a CUDA GPU, in one command, as one markdown table.

    launch/gpu_checks.sh            # or: python benchmarks/gpu_checks.py [--compile] [--extra]

The rows, most important first (CHECKS_RUN holds them with their shares of the budget):

1. Training steps free of host synchronisation: the real `train()`, a few hundred steps under
   `torch.cuda.set_sync_debug_mode("warn")`, with TensorBoard panels on: fp16 with the device store (crops cut on
   the GPU) and bf16 without it (DataLoader workers cut them); `--extra` adds the other store path of each.
2. A NaN gradient on channels-last gradients: the fused Adam skips the step (weights and moments unchanged), in
   bf16 through BadSteps' found_inf and in fp16 through the GradScaler.
3. Validation JM of the bf16 run's model with IEEE float32 convolutions (what validation uses) and TF32.
4. `insanesr-dist bench train` eager, channels-last, fp16 and bf16, each in one process (`--one-process`, no
   seed baseline, no CPU data-path timing); `--compile` adds the torch.compile rows, `--extra` the NCHW ones and
   the toolkit step on DIV2K-sized pairs with the device store against DataLoader workers.

Every check runs in a fresh process: one check's CUDA state, compiled graphs and memory stay out of the next.
A time budget bounds the whole: each check's cap is its share of the budget (the caps never sum to more), a check
may also use what the checks before it left unused, and one that would overrun is cut off (FAIL), never waited
for. The default budget is 450 s for the default rows (plus their shares for optional ones asked for), so that
with start-up the command fits a lease of under 10 minutes on one GPU. A row not run (an optional one not asked
for, or too little budget left) says so and why; the command exits 0 when every row that ran passed (ok or info),
1 otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import click

from bench_stages import call_command, json_result
from insanesr_dist.commands import Command
from insanesr_dist.errors import UserError
from insanesr_dist.tools.children import failure_line

BENCH = Path(__file__).resolve().with_name("bench.py")

SYNC_WARNING = "synchronizing CUDA operation"  # what set_sync_debug_mode("warn") says


# ---------------------------------------------------------------------------------------------
# Checks: each runs in a child process (`_child`) and returns a JSON-able dict


def _sync_debug_training(spec: dict) -> dict:
    """The real training loop under sync debug mode; every sync warning is tagged with the training step it
    came in (the count of train_step calls so far) and where in this package it was called from.

    Syncs that belong to epoch ends (the epoch's loss reduction, validation, panels, saving) are told apart: a
    warning counts as per-step only while training, after `warmup` steps, and not in an epoch's last step;
    wherever in this package it comes from (the loss, the loop, the data path), it is counted.
    """
    import traceback
    import warnings

    import torch

    from insanesr_dist import train
    from insanesr_dist.config import TrainConfig
    from insanesr_dist.data.crops import DevicePairs
    from insanesr_dist.trainer import Trainer

    now = {"step": 0, "phase": "setup"}
    hits, epoch_ends = [], set()

    class Watched(Trainer):  # tags each sync warning with the step or epoch end it came in
        def train_step(self, batch):
            now["step"], now["phase"] = now["step"] + 1, "train"
            return super().train_step(batch)

        def evaluate(self, **kwargs):
            epoch_ends.add(now["step"])
            now["phase"] = "epoch end"
            return super().evaluate(**kwargs)

    def record(message, category, filename, lineno, file=None, line=None):
        if SYNC_WARNING in str(message):
            hits.append((now["step"], now["phase"], _caller(traceback.extract_stack())))

    # Batches cut on the device: proof that the run took the device-store path it was asked for (a store that
    # cannot be used falls back to the workers with one line, and the check would test the other path).
    device_batches = [0]
    real_cut = DevicePairs.cut

    def cut(self, plan):
        device_batches[0] += 1
        return real_cut(self, plan)

    DevicePairs.cut = cut
    warnings.simplefilter("always")  # the default filter would show each call site only once
    warnings.showwarning = record
    # Batch 4: more steps per epoch (fewer epoch ends) than the preset's 16; what syncs does not depend on it.
    # Panels stay at the training default: their drawing at each validation is part of what is checked.
    settings = {
        "data": spec.get("data"),
        "output_dir": spec["out"],
        "mixed_precision": spec["precision"],
        "device_store": spec["device_store"],
        "max_steps": spec["steps"],
        "epochs": 1000,
        "batch_size": 4,
        "log_every": 10**6,
        "num_workers": 2,
        **spec.get("config", {}),
    }
    cuda = torch.cuda.is_available()  # (without CUDA, only the plumbing runs: the CPU test)
    if cuda:
        torch.cuda.set_sync_debug_mode("warn")
    started = time.perf_counter()
    train.train(TrainConfig(**settings), trainer_class=Watched)
    if cuda:
        torch.cuda.set_sync_debug_mode(0)
    seconds = time.perf_counter() - started
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
        "device_store": spec["device_store"],
        "device_batches": device_batches[0],
        "panels": _panels_logged(Path(spec["out"])),
        "seconds": seconds,
    }


def _panels_logged(out: Path) -> list[int]:
    """[fixed images, images written] of the run's TensorBoard panels: that the panels were drawn."""
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    from insanesr_dist import run_files

    logs = next((out / run_files.LOGS).rglob("events.out.tfevents.*"), None)
    if logs is None:
        return [0, 0]
    events = EventAccumulator(str(logs.parent), size_guidance={IMAGES: 0})
    events.Reload()
    tags = [tag for tag in events.Tags()[IMAGES] if tag.startswith("panels/")]
    return [len(tags), sum(len(events.Images(tag)) for tag in tags)]


def per_step_syncs(hits: list[tuple], epoch_ends: set[int], warmup: int) -> list[tuple]:
    """The (step, phase, where) sync hits that happened in a training step after warm-up, not at an epoch end
    (a hit in an epoch's last step may be its end: the loss reduction, the bad-step read). The step checks'
    reads (training/cadence.py) are left out: they sync on purpose, about every few seconds, not every step."""
    return [
        h
        for h in hits
        if h[1] == "train" and h[0] > warmup and h[0] not in epoch_ends and not h[2].startswith("cadence.py:")
    ]


def _caller(stack) -> str:
    """The innermost frame of the package (not of this script) that led to a warning: file:line."""
    import insanesr_dist

    package = Path(insanesr_dist.__file__).resolve().parent
    for frame in reversed(stack):
        if Path(frame.filename).resolve().is_relative_to(package):
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
    from bench_stages import toolkit_step
    from insanesr_dist.data.demo import write_demo_data

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

MIN_CHECK_S = 20  # less than this cannot start a CUDA process and do anything: such a check is not started
BENCH_STEPS, BENCH_WARMUP = 20, 5  # per bench row: the timed steps are the median of a few log intervals


def _run_child(name: str, spec: dict, timeout: float) -> dict:
    """CHECKS[name](spec) in a fresh process; its result, or {"error": one line} (a failure or a timeout)."""
    return _run_json(call_command("gpu_checks", "CHECKS", name, spec), timeout)


def _run_json(command: list[str], timeout: float, parse: Callable[[str], dict] = json_result) -> dict:
    """Run `command` for at most `timeout` s; `parse` of its stdout, or {"error": one line}."""
    # A session of its own: a cut-off check's grandchildren (bench stages, a training run) go with it.
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        return {"error": f"cut off after {timeout:.0f} s (its share of the time budget)"}
    if child.returncode != 0:
        return {"error": failure_line(stderr)[:200]}
    try:
        return parse(stdout)
    except (ValueError, IndexError):
        return {"error": f"no result on its stdout: {failure_line(stdout)[:160]}"}


def last_json_document(stdout: str) -> dict:
    """The indented JSON object (`json.dumps(..., indent=2)`, as `bench --json` prints it) that ends stdout: from
    its last line that is a lone `{` (an inner object's opening line never is)."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    return json.loads("\n".join(lines[start:]))


def bench_command(precision: str, *, channels_last: bool, compile_: bool, data: str | None, more=()) -> list[str]:
    """One `bench train` row: every measurement in the one process (a single CUDA start-up), the training step
    only (no seed baseline, no CPU data-path timing: neither is a GPU figure). `more`: further bench options."""
    return [
        sys.executable,
        str(BENCH),
        "train",
        "--json",
        "--one-process",
        "--no-baseline",
        "--no-data-pipeline",
        "--mixed-precision",
        precision,
        "--steps",
        str(BENCH_STEPS),
        "--warmup",
        str(BENCH_WARMUP),
        "--channels-last" if channels_last else "--no-channels-last",
        *(["--compile"] if compile_ else []),
        *(["--data", data] if data else []),
        *more,
    ]


# ---------------------------------------------------------------------------------------------
# The table


class Row(NamedTuple):
    check: str
    setting: str
    result: str
    verdict: str  # one of VERDICTS
    seconds: str = ""  # "used (limit)" of the check that made the row


VERDICTS = ("ok", "info", "FAIL", "not run")  # ok and info passed; not run is neither pass nor fail


def exit_code(rows: list[Row]) -> int:
    """0 when every row that ran passed (ok, or info: a figure with nothing to pass), 1 when one failed; a row
    that was not run counts neither way."""
    unknown = {row.verdict for row in rows} - set(VERDICTS)
    if unknown:
        raise ValueError(f"unknown verdict(s): {', '.join(sorted(unknown))}")
    return 1 if any(row.verdict == "FAIL" for row in rows) else 0


def _rows_sync(check: Check, r: dict) -> list[Row]:
    if "error" in r:
        return [Row(check.name, check.setting, r["error"], "FAIL")]
    where = ", ".join(f"{w} x{n}" for w, n in r["where"]) or "-"
    on_device = r["device_batches"] > 0
    path_as_asked = on_device == (r["device_store"] == "on")
    result = (
        f"{r['per_step_syncs']} sync warnings in steps {r['warmup'] + 1}-{r['steps']} ({r['steps_with_syncs']} "
        f"steps; at: {where}); {r['other_syncs']} in set-up, warm-up and {r['epoch_ends']} epoch ends; "
        f"{r['device_batches']} batches cut on the device"
        + ("" if path_as_asked else f" (device store {r['device_store']} was asked for)")
        + f"; panels: {r['panels'][1]} images of {r['panels'][0]} validation images"
    )
    good = r["per_step_syncs"] == 0 and path_as_asked and r["panels"][1] > 0
    return [Row(check.name, check.setting, result, "ok" if good else "FAIL")]


def _rows_nan(check: Check, r: dict) -> list[Row]:
    if "error" in r:
        return [Row(check.name, check.setting, r["error"], "FAIL")]
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
        result = (
            f"channels-last grads {m['channels_last_grads']}; weights unchanged {m['weights_unchanged']}; "
            f"moments unchanged {m['moments_unchanged']}; counted {m['counted']}{scale}; next good step "
            f"updates {m['next_step_updates']}"
        )
        rows.append(Row(check.name, f"{setting}, channels-last grads", result, "ok" if good else "FAIL"))
    return rows


def _rows_jm(check: Check, r: dict) -> list[Row]:
    if "error" in r:
        return [Row(check.name, check.setting, r["error"], "FAIL")]
    result = (
        f"IEEE {r['jm_ieee']:.4f}, TF32 {r['jm_tf32']:.4f} (delta {r['jm_ieee'] - r['jm_tf32']:+.4f}); "
        f"max |SR difference| {r['max_abs_sr_difference']:.2e}"
    )
    return [Row(check.name, f"{r['model']}, {r['images']} val images", result, "info")]


def _rows_device_store(check: Check, r: dict) -> list[Row]:
    if "error" in r:
        return [Row(check.name, check.setting, r["error"], "FAIL")]
    on, off = r["on"]["samples_per_s"], r["off"]["samples_per_s"]
    return [Row(check.name, check.setting, f"{on:.0f} vs {off:.0f} samples/s ({on / off:.2f}x)", "info")]


def _rows_bench(check: Check, r: dict) -> list[Row]:
    if "error" in r:
        return [Row(check.name, check.setting, r["error"], "FAIL")]
    compile_note = f"; first bare step {r['bare']['first_step_s']:.1f} s" if r["compile"] else ""
    result = (
        f"toolkit {r['toolkit']['samples_per_s']:.0f} samples/s, bare {r['bare']['samples_per_s']:.0f}; "
        f"overhead {r['ratios']['toolkit_overhead_percent']:.1f}%; {r['toolkit']['tflops']:.1f} TFLOP/s "
        f"({r['toolkit']['percent_of_bf16_ceiling']:.1f}% of bf16 matmul){compile_note}"
    )
    return [Row(check.name, check.setting, result, "info")]


def markdown_table(rows: list[Row]) -> str:
    lines = ["| check | setting | result | seconds (limit) | verdict |", "|---|---|---|---|---|"]
    order = ("check", "setting", "result", "seconds", "verdict")
    lines += ["| " + " | ".join(str(getattr(row, f)).replace("|", "/") for f in order) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The plan: the checks in the order they run, each with its share of the budget


@dataclass(frozen=True)
class Check:
    name: str  # the table's check column
    setting: str
    share: int  # seconds of the default budget: the default checks' shares sum to DEFAULT_BUDGET_S
    kind: str  # what runs it: see run_check
    spec: tuple = ()  # (key, value) pairs for its kind
    option: str | None = None  # the option that asks for it; None: always run


def _sync(precision: str, store: str, share: int, option: str | None = None) -> Check:
    setting = f"{precision}, device store {store}, panels on (4), batch 4"
    spec = (("precision", precision), ("device_store", store))
    return Check(f"no per-step sync, {precision} training", setting, share, "sync_debug", spec, option)


def _bench(precision: str, channels_last: bool, compile_: bool, share: int, option: str | None = None) -> Check:
    setting = (
        f"{precision}, {'channels-last' if channels_last else 'NCHW'}, {'compile' if compile_ else 'eager'}, "
        f"{BENCH_STEPS} steps, one process"
    )
    spec = (("precision", precision), ("channels_last", channels_last), ("compile", compile_))
    return Check("bench train", setting, share, "bench", spec, option)


# Shares are allocations, not measurements: a training run gets more than a few-step check, and the first check
# also pays the cold start (imports from a cold disk cache, the demo data written once).
CHECKS_RUN = [
    _sync("fp16", "on", 110),
    _sync("bf16", "off", 100),
    Check("NaN gradient skipped by fused Adam", "bf16 found_inf and fp16 GradScaler", 35, "nan_step"),
    Check("validation JM, IEEE vs TF32 convolutions", "the bf16 run's model", 45, "ieee_vs_tf32"),
    _bench("fp16", True, False, 80),
    _bench("bf16", True, False, 80),
    _bench("fp16", True, True, 150, "--compile"),
    _bench("bf16", True, True, 150, "--compile"),
    _sync("fp16", "off", 100, "--extra"),
    _sync("bf16", "on", 100, "--extra"),
    _bench("fp16", False, False, 80, "--extra"),
    _bench("bf16", False, False, 80, "--extra"),
    Check(
        "toolkit step on 2K pairs: device store vs DataLoader workers",
        "bf16, batch 16, LR patch 32, 384 pairs 2040x1344",
        150,
        "device_store",
        option="--extra",
    ),
]
DEFAULT_BUDGET_S = 450


def caps(shares: list[int], budget_s: int) -> list[int]:
    """Each check's cap: its share of `budget_s`, in whole seconds rounded down, so that the caps never sum to
    more than the budget (a sum of floors is at most the floor of the sum)."""
    total = sum(shares)
    return [budget_s * share // total for share in shares]


def selected(checks: list[Check], options: set[str]) -> list[Check]:
    """The checks that run: the default ones and the optional ones whose option was given."""
    return [check for check in checks if check.option is None or check.option in options]


def not_run(check: Check, reason: str) -> Row:
    return Row(check.name, check.setting, reason, "not run")


@dataclass
class Context:
    """What the checks share: a folder for their runs, the dataset, the sync runs' length; and what lets the
    tests run the same checks on a CPU in seconds (the device of the NaN check, further settings of the sync runs
    and further bench options: a tiny model and batch)."""

    tmp: str
    data: str | None
    steps: int
    warmup: int
    device: str = "cuda"
    train_config: dict = field(default_factory=dict)
    bench_args: tuple = ()


def run_check(check: Check, context: Context, limit: float) -> list[Row]:
    """Run one check's child for at most `limit` s; its rows."""
    spec = dict(check.spec)
    data = {"data": context.data} if context.data else {}
    if check.kind == "sync_debug":
        out = f"{context.tmp}/sync-{spec['precision']}-{spec['device_store']}"
        spec = {**spec, "out": out, "steps": context.steps, "warmup": context.warmup, **data}
        spec["config"] = context.train_config
        return _rows_sync(check, _run_child("sync_debug", spec, limit))
    if check.kind == "nan_step":
        return _rows_nan(check, _run_child("nan_step", {"device": context.device}, limit))
    if check.kind == "ieee_vs_tf32":
        # The bf16 run's final weights; a random model when that row did not leave any (the row says which)
        weights = f"{context.tmp}/sync-bf16-off/latest.safetensors"
        return _rows_jm(check, _run_child("ieee_vs_tf32", {"weights": weights, **data}, limit))
    if check.kind == "device_store":
        return _rows_device_store(check, _run_child("device_store", {"out": f"{context.tmp}/store"}, limit))
    command = bench_command(
        spec["precision"],
        channels_last=spec["channels_last"],
        compile_=spec["compile"],
        data=context.data,
        more=context.bench_args,
    )
    return _rows_bench(check, _run_json(command, limit, parse=last_json_document))


clock = time.monotonic  # (the tests' fake clock replaces it)


def run_all(checks: list[Check], budget_s: int, options: set[str], context: Context, say) -> list[Row]:
    """Every check, in order: those asked for run within their caps of `budget_s`, each also getting what the
    checks before it left of theirs (it must end by the sum of the caps so far, so the whole ends within the
    budget); the others are rows saying why they did not run."""
    asked = selected(checks, options)
    cap_of = dict(zip(map(id, asked), caps([check.share for check in asked], budget_s)))
    started, end_by = clock(), 0
    rows: list[Row] = []
    for check in checks:
        if id(check) not in cap_of:
            rows.append(not_run(check, f"optional: {check.option} runs it"))
            continue
        end_by += cap_of[id(check)]
        limit = end_by - (clock() - started)
        if limit < MIN_CHECK_S:
            rows.append(not_run(check, f"the time budget is spent: {max(0, limit):.0f} s left, under {MIN_CHECK_S} s"))
            continue
        say(f"{check.name}: {check.setting} (at most {limit:.0f} s)")
        began = clock()
        made = run_check(check, context, limit)
        took = f"{clock() - began:.0f} ({limit:.0f})"
        rows += [row._replace(seconds=took) for row in made]
    return rows


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
    type=click.IntRange(60),
    help=f"Seconds for all checks together, shared out among them; a check that would overrun its share is cut "
    f"off and reported. [default: {DEFAULT_BUDGET_S} for the default rows, plus the shares of the optional rows "
    "asked for]",
)
@click.option("--compile", "compile_", is_flag=True, help="Also the torch.compile rows of bench train.")
@click.option(
    "--extra",
    is_flag=True,
    help="Also the other device-store path of each sync run, the NCHW bench rows and the toolkit step on "
    "DIV2K-sized pairs with and without the device store.",
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
def main(budget_s: int | None, compile_: bool, extra: bool, steps: int, warmup: int, data: str | None) -> None:
    """Run the GPU-only checks of issue 13 on one CUDA GPU and print one markdown table; exit 0 when every row
    that ran passed, 1 otherwise.

    \b
    Examples:
      launch/gpu_checks.sh                               # the default rows, 450 s budget
      python benchmarks/gpu_checks.py --compile --extra
    """
    device = require_cuda()
    options = {name for name, given in (("--compile", compile_), ("--extra", extra)) if given}
    budget_s = budget_s or sum(check.share for check in selected(CHECKS_RUN, options))
    started = clock()

    def say(text: str) -> None:
        click.echo(f"[{clock() - started:5.0f} s] {text}", err=True)

    with tempfile.TemporaryDirectory() as tmp:
        rows = run_all(CHECKS_RUN, budget_s, options, Context(tmp, data, steps, warmup), say)
    click.echo(f"GPU checks on {device} ({clock() - started:.0f} s of a {budget_s} s budget)\n")
    click.echo(markdown_table(rows))
    raise SystemExit(exit_code(rows))


if __name__ == "__main__":
    main()
