"""Training: `accelerate launch -m insanesr_dist.train [options]` (also `insanesr-dist train`).

`train(cfg)` is the whole loop, read top to bottom: set-up, then per epoch the training steps,
validation, test-set prediction and the rank-0 writes. Every rank runs every collective.
"""

from __future__ import annotations

import math
import os
import sys
import time
import typing
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import click
import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.utils import broadcast_object_list, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import data as data_lib
from .config import TrainConfig, field_specs, read_config_file, save_config
from .demo_data import ensure_demo_data
from .errors import UserError
from .evaluate import score_images
from .model import InsaneSRNet, count_parameters, save_weights
from .predict import float32_forward, predict_pngs
from .submission import write_submission
from .tracking import log_epoch, log_panels


def lr_at(step: int, *, peak: float, warmup: int, total: int, schedule: str) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then constant or cosine to 0."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def pixel_loss(name: str, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    if name == "mse":
        return F.mse_loss(sr, hr)
    if name == "l1":
        return F.l1_loss(sr, hr)
    return torch.sqrt((sr - hr).square() + 1e-6).mean()  # charbonnier, eps = 1e-3


def resolve_precision(requested: str | None) -> tuple[str, str | None]:
    """The precision to train in (the option, else accelerate's config) and a note when it changed.

    fp16 autocast with gradient scaling is a CUDA recipe; on a CPU, bf16 gives the same speed-up
    with fp32's exponent range, so no scaler is needed.
    """
    precision = requested or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if precision == "fp16" and not torch.cuda.is_available():
        return "bf16", "fp16 needs a CUDA GPU; training in bf16 autocast on this CPU instead"
    return precision, None


def _agree_on_output_dir(state: PartialState, requested: str | None) -> Path:
    """All ranks must write to one directory; the main process picks the default timestamp."""
    choice = [requested or f"runs/{datetime.now():%Y%m%d-%H%M%S}"]
    if state.num_processes > 1:
        broadcast_object_list(choice, from_process=0)
    return Path(choice[0])


def _cores_per_local_process(accelerator: Accelerator) -> int:
    """`accelerate launch` sets OMP_NUM_THREADS=1 unless told otherwise, leaving most of a CPU idle."""
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    return max(1, len(os.sched_getaffinity(0)) // max(1, local_processes))


def _epoch_batches(loader: DataLoader, epoch: int):
    """The epoch's batches, with the sampler and the crop randomness set to this epoch."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)  # accelerate's prepared loader: seedable sampler order
    loader.dataset.set_epoch(epoch)  # per-sample crops/flips (workers restart each epoch)
    return loader


def _stream_batches(loader: DataLoader, epoch: int, limit: int):
    """`limit` batches from a streaming loader, starting new passes over the stream as needed."""
    given, passes = 0, 0
    while given < limit:
        loader.dataset.set_epoch(epoch * 1000 + passes)
        empty = True
        for batch in loader:
            empty = False
            yield batch
            given += 1
            if given == limit:
                return
        if empty:
            raise UserError("the streaming training set produced no batch for this rank")
        passes += 1


def train(cfg: TrainConfig) -> Path:
    """Train with `cfg`; returns the run directory."""
    cpu = not torch.cuda.is_available()
    out_dir = _agree_on_output_dir(PartialState(cpu=cpu), cfg.output_dir)
    if (out_dir / "metrics.jsonl").exists():
        raise UserError(f"{out_dir}: already holds a run (metrics.jsonl); choose another --output-dir")
    precision, precision_note = resolve_precision(cfg.mixed_precision)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with="tensorboard",
        project_dir=str(out_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    if precision_note:
        accelerator.print(precision_note)
    if cpu:
        torch.set_num_threads(cfg.cpu_threads or _cores_per_local_process(accelerator))
    set_seed(cfg.seed)

    # ---- data: the main process builds the dataset caches first, the others reuse them
    with accelerator.main_process_first():
        source = cfg.data or str(ensure_demo_data())
        splits = data_lib.load_splits(source, val_fraction=cfg.val_fraction, seed=cfg.seed, scale=cfg.scale)
    data_lib.check_patch_size(splits.train, cfg.patch_size, cfg.batch_size, source)
    loaders = [data_lib.eval_loader(splits.val, with_hr=True, num_workers=cfg.num_workers)]
    if splits.test is not None:
        loaders.append(data_lib.eval_loader(splits.test, with_hr=False, num_workers=cfg.num_workers))
    crops = dict(patch_size=cfg.patch_size, scale=cfg.scale, seed=cfg.seed)
    if cfg.streaming:  # not prepared: the stream is already this rank's share
        stream = data_lib.streaming_train(splits.train, seed=cfg.seed, rank=accelerator.process_index,
                                          world_size=accelerator.num_processes, workers=cfg.num_workers)
        train_dl = DataLoader(data_lib.StreamedPairs(stream, **crops), batch_size=cfg.batch_size,
                              **data_lib.loader_kwargs(cfg.num_workers))
    else:
        train_dl = data_lib.train_loader(splits.train, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                         **crops)
        loaders.insert(0, train_dl)

    # ---- model and optimizer (Adam, as the seed); the learning rate is set per step by lr_at
    model = InsaneSRNet(**asdict(cfg.model))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model, optimizer, *loaders = accelerator.prepare(model, optimizer, *loaders)
    if not cfg.streaming:
        train_dl = loaders.pop(0)
    val_dl, test_dl = loaders[0], (loaders[1] if len(loaders) > 1 else None)

    steps_per_epoch = math.ceil(cfg.max_steps / cfg.epochs) if cfg.streaming else math.ceil(len(train_dl) / cfg.grad_accum)
    total_steps = min(cfg.max_steps or sys.maxsize, cfg.epochs * steps_per_epoch)
    epochs = math.ceil(total_steps / steps_per_epoch)

    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.json")
    accelerator.init_trackers("logs", config=cfg.hparams())
    panel_images = [(splits.val[i]["id"], *data_lib.EvalImages(splits.val, with_hr=True)[i][1:])
                    for i in range(min(cfg.panel_images, len(splits.val)))] if accelerator.is_main_process else []
    accelerator.print(
        f"insanesr-dist: {source}: {len(splits.train)} train / {len(splits.val)} val / "
        f"{len(splits.test) if splits.test is not None else 0} test images; model {count_parameters(model):,} "
        f"parameters; {accelerator.num_processes} process(es) on {accelerator.device.type}, "
        f"precision {accelerator.mixed_precision}; {epochs} epoch(s), {total_steps} steps -> {out_dir}"
    )

    step, best_jm = 0, -math.inf
    for epoch in range(1, epochs + 1):
        # ---- train
        model.train()
        started = time.perf_counter()
        steps_now = min(steps_per_epoch, total_steps - step)
        batches = (_stream_batches(train_dl, epoch, steps_now * cfg.grad_accum) if cfg.streaming
                   else _epoch_batches(train_dl, epoch))
        bar = tqdm(total=steps_now, desc=f"epoch {epoch}/{epochs}", leave=False, dynamic_ncols=True,
                   disable=not accelerator.is_local_main_process)
        loss_sum = torch.zeros((), device=accelerator.device)
        passes = 0
        for lr_u8, hr_u8 in batches:
            lr_img = lr_u8.to(accelerator.device, non_blocking=True).float().div_(255)
            hr_img = hr_u8.to(accelerator.device, non_blocking=True).float().div_(255)
            with accelerator.accumulate(model):
                loss = pixel_loss(cfg.loss, model(lr_img).float(), hr_img)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, peak=cfg.lr, warmup=cfg.warmup_steps, total=total_steps,
                                        schedule=cfg.schedule)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            passes += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            bar.update()
            if step % cfg.log_every == 0:  # the only per-step host sync, every log_every steps
                loss_now = accelerator.reduce(loss.detach(), "mean").item()
                bar.set_postfix(loss=f"{loss_now:.6f}")
                accelerator.log({"train/loss": loss_now, "train/lr": optimizer.param_groups[0]["lr"]}, step=step)
            if step >= total_steps:
                break
        bar.close()
        train_loss = accelerator.reduce(loss_sum / max(1, passes), "mean").item()
        seconds = time.perf_counter() - started

        # ---- validate and predict the test set: every rank its shard, gathered everywhere
        model.eval()
        forward = float32_forward(accelerator, model)
        scores = score_images(forward, val_dl, accelerator)
        pngs = predict_pngs(forward, test_dl, accelerator) if test_dl is not None else None

        # ---- rank 0 writes: submission, weights, metrics, TensorBoard
        improved = scores["jm"] > best_jm
        best_jm = max(best_jm, scores["jm"])
        record = {"epoch": epoch, "step": step, "train_loss": train_loss, **scores, "seconds": seconds,
                  "samples_per_s": passes * cfg.batch_size * accelerator.num_processes / seconds}
        if accelerator.is_main_process:
            if pngs is not None:
                ids = splits.test["id"]
                write_submission(out_dir / "submissions" / f"epoch_{epoch:03d}.csv",
                                 ((ids[i], pngs[i]) for i in range(len(ids))))
            weights = accelerator.unwrap_model(model)
            meta = {"epoch": epoch, "step": step, "jm": scores["jm"], "psnr": scores["psnr"], "ssim": scores["ssim"]}
            save_weights(weights, out_dir / "latest.safetensors", **meta)
            if improved:
                save_weights(weights, out_dir / "best.safetensors", **meta)
            log_panels(accelerator, forward, panel_images, step)
        log_epoch(accelerator, out_dir, record, epochs, improved)
        accelerator.wait_for_everyone()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    accelerator.print(f"done: best JM {best_jm:.4f}; weights, submissions and logs in {out_dir}")
    accelerator.end_training()
    return out_dir


def _config_options(command):
    """One click option per TrainConfig field; unset options (None) leave the file/default value."""
    for name, kind, default, help_text in reversed(field_specs()):
        flag = "--" + name.replace("_", "-")
        shown = f"{help_text} [default: {default}]" if default is not None else help_text
        if kind is bool:
            option = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=shown)
        elif typing.get_origin(kind) is typing.Literal:
            option = click.option(flag, name, type=click.Choice(typing.get_args(kind)), default=None, help=shown)
        else:
            option = click.option(flag, name, type=kind, default=None, help=shown)
        command = option(command)
    return command


@click.command("train", context_settings={"max_content_width": 110})
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML or JSON file with the same settings; the command line overrides it.")
@_config_options
def main(config_file: str | None, **given) -> None:
    """Train InsaneSRNet: per-epoch validation (JM = 40*SSIM + PSNR), best/latest weights,
    submission CSVs and TensorBoard logs.

    \b
    Examples:
      accelerate launch -m insanesr_dist.train                      # demo data, a few minutes on a CPU
      accelerate launch -m insanesr_dist.train --data DIR --epochs 20 --output-dir runs/a
      accelerate launch --multi_gpu --num_processes 2 -m insanesr_dist.train --mixed-precision fp16
    """
    values = {}
    if config_file:
        try:
            values = read_config_file(config_file)
        except (ValueError, OSError) as e:
            raise click.BadParameter(f"{config_file}: {e}", param_hint="--config") from None
    values.update({k: v for k, v in given.items() if v is not None})
    try:
        cfg = TrainConfig(**values)
    except (TypeError, ValueError) as e:
        raise click.UsageError(f"invalid settings: {e}") from None
    train(cfg)


if __name__ == "__main__":
    main()
