"""Training: `accelerate launch -m insanesr_dist.train [options]` (also `insanesr-dist train`).

`train(cfg)` runs a training and turns its failures into one-line errors; `_train` is the loop, read top to
bottom: `_set_up` (processes, data, model, optimizer, the checkpoint it continues), then per epoch
`_train_epoch` (the optimizer steps, with the mid-epoch evaluations and checkpoints) and `_end_epoch`
(validation, test-set prediction, the epoch's record and checkpoint, early stopping). Every rank runs every
collective, so every rank takes every decision that leads to one.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import signal
import sys
import time
import typing
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import click
import torch
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.utils import broadcast_object_list, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from insanesr_dist import run_files
from insanesr_dist.commands import Command
from insanesr_dist.config import TrainConfig, field_specs, read_config_file, save_config
from insanesr_dist.data import sources
from insanesr_dist.data.crops import DevicePairs, DevicePlans, augment
from insanesr_dist.data.demo import ensure_demo_data
from insanesr_dist.data.loaders import (
    EvalImages,
    StreamedPairs,
    collate_windows,
    eval_loader,
    loader_kwargs,
    start_worker_server,
    store_rows,
    streaming_train,
    train_loader,
)
from insanesr_dist.data.splits import Splits, check_patch_size, load_splits
from insanesr_dist.errors import UserError
from insanesr_dist.inference.forward import float32_forward
from insanesr_dist.inference.sharded import predict_pngs
from insanesr_dist.inference.tiles import exact_overlap, upscale_for_eval
from insanesr_dist.model import weights
from insanesr_dist.model.architecture import InsaneSRNet, count_parameters
from insanesr_dist.model.files import read_metadata, save_weights
from insanesr_dist.scoring.submission import write_submission
from insanesr_dist.scoring.validation import score_images
from insanesr_dist.training import checkpoint, faults
from insanesr_dist.training.cadence import StepChecks
from insanesr_dist.training.ema import WeightEMA
from insanesr_dist.training.host_memory import keep_freed_memory
from insanesr_dist.training.losses import training_loss
from insanesr_dist.training.optimizer import lr_at, make_optimizer
from insanesr_dist.training.precision import resolve_precision
from insanesr_dist.training.preemption import PREEMPTED_EXIT_CODE, PreemptionFlag, requeue_if_slurm
from insanesr_dist.training.resume import budget_grew, continued, resume_point, total_steps_of
from insanesr_dist.training.runtime import cores_per_local_process, stall_message, start_processes
from insanesr_dist.training.tracking import (
    end_hparams,
    keep_epoch_records,
    log_epoch,
    log_evaluation,
    log_panels,
    start_hparams,
    trackers,
)


def train(cfg: TrainConfig) -> Path:
    """Train with `cfg`, continuing from the newest complete checkpoint when there is one;
    returns the run directory."""
    # The DataLoader workers' fork server first: starting it (and multiprocessing's resource tracker with it)
    # unblocks SIGTERM in this process, so the preemption flag's signal block must come after it.
    if cfg.num_workers:
        start_worker_server()
    # Then, before any thread exists: threads inherit the signal block (and so do workers, see data/loaders.py).
    preemption = PreemptionFlag()
    try:
        return _train(cfg, preemption)
    except BaseException as e:
        # DataLoader workers (persistent) have SIGTERM blocked, see PreemptionFlag: the polite shutdown at
        # interpreter exit would wait for them forever. They hold nothing worth keeping. Without torch's
        # SIGCHLD handler first, their deaths would be reported as failures (tracebacks) while exiting.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for worker in multiprocessing.active_children():
            worker.kill()
        for bar in list(getattr(tqdm, "_instances", ())):  # an open progress bar would swallow the error line
            bar.close()
        if isinstance(e, UserError):  # shown as one line: the traceback is noise
            raise e.with_traceback(None) from None
        # A wait that ran out or a lost peer (training/runtime.py), a full disk or another I/O failure
        # (training/faults.py): one line
        problem = stall_message(e, dist_timeout=cfg.dist_timeout, worker_timeout=cfg.worker_timeout) or (
            faults.io_failure(e) if isinstance(e, Exception) else None
        )
        if problem is None:  # a bug, Ctrl-C or the preemption exit: as it is
            raise
        raise UserError(problem) from None
    finally:
        preemption.close()


def _train(cfg: TrainConfig, preemption: PreemptionFlag) -> Path:
    launch = start_processes(cfg.dist_timeout)
    out_dir = _agree_on_output_dir(launch, cfg.output_dir)
    resume_from, state = resume_point(cfg, out_dir, launch)
    extended_from = 0  # a finished run given a larger budget: the total it had
    if state.finished:
        if not budget_grew(cfg, state):
            if launch.is_main_process:
                print(f"{out_dir}: this run already finished (step {state.step}); nothing to do")
            return out_dir
        extended_from, state = state.total_steps, dataclasses.replace(state, finished=False)
    run, state = _set_up(cfg, launch, out_dir, resume_from, state, extended_from, preemption)
    progress = Progress(
        step=state.step,
        best_jm=state.best_jm,
        stale=state.stale_validations,
        stale_reference=state.stale_reference,
        last_checkpoint=state.step,
    )
    for epoch in range(state.epoch, run.epochs + 1):
        # A resumed run goes on from the first batch of its epoch not yet trained on.
        trained = _train_epoch(run, progress, epoch, resumed=state if epoch == state.epoch else None)
        if _end_epoch(run, progress, epoch, trained):
            break  # an early stop (--early-stop-patience)
    run.accelerator.print(f"done: best JM {progress.best_jm:.4f}; weights, submissions and logs in {out_dir}")
    end_hparams(run.accelerator)
    run.accelerator.end_training()
    return out_dir


@dataclass
class Run:
    """What `_set_up` made: fixed for the whole run."""

    cfg: TrainConfig
    accelerator: Accelerator
    out_dir: Path
    preemption: PreemptionFlag
    model: torch.nn.Module  # as prepared; evaluation, EMA and saving use it
    train_model: typing.Callable  # what training runs through: `model`, or its torch.compile
    optimizer: torch.optim.Optimizer
    ema: WeightEMA | None  # --ema-decay: the weights validated and saved
    bad_steps: faults.BadSteps
    batches: TrainBatches
    device_pairs: DevicePairs | None  # --device-store: the training pairs, cut into crops on the device
    val_dl: DataLoader
    test_dl: DataLoader | None
    test_ids: list | None
    panel_images: list  # (id, LR, HR) of the fixed validation images shown as panels; main process only
    tile_overlap: int
    steps_per_epoch: int
    total_steps: int
    epochs: int
    first_step: int  # the step this process started from (0, or the checkpoint's)
    checks: StepChecks  # when every rank reads the preemption flag and the checkpoint timer


@dataclass
class Progress:
    """What changes as the run goes, besides the weights: the optimizer steps taken, the best JM, the early stop's
    count, and the step of the latest validation (with its scores) and submission."""

    step: int
    best_jm: float
    stale: int  # --early-stop-patience: validations since the JM last rose above stale_reference + min delta
    stale_reference: float
    last_validation: tuple[int, dict] = (-1, {})
    last_submission: int = -1
    last_checkpoint: int = 0  # the step of the latest checkpoint (or of the start)

    def validated(self, scores: dict, min_delta: float) -> bool:
        """Count a validation's scores in; returns whether they improved on the best JM."""
        improved = scores["jm"] > self.best_jm
        self.best_jm = max(self.best_jm, scores["jm"])
        self.last_validation = self.step, scores
        if scores["jm"] > self.stale_reference + min_delta:
            self.stale, self.stale_reference = 0, scores["jm"]
        else:
            self.stale += 1
        return improved

    def scores_now(self) -> dict:
        """The scores of the current weights: a validation's at this same step, else none."""
        return self.last_validation[1] if self.last_validation[0] == self.step else {}


def _out_of_patience(cfg: TrainConfig, progress: Progress) -> bool:
    return bool(cfg.early_stop_patience) and progress.stale >= cfg.early_stop_patience


def _due(step: int, every_steps: int) -> bool:  # --val-every-steps, --submit-every-steps
    return bool(every_steps) and step % every_steps == 0


def _checkpoint_due_at_epoch_end(cfg: TrainConfig, progress: Progress, timer_expired: bool) -> bool:
    """Without a cadence every epoch end saves; with --checkpoint-every (steps) or --checkpoint-every-minutes an
    epoch end saves only when one is due, so that short epochs (many GPUs, a small set) are not mostly saving."""
    if not (cfg.checkpoint_every or cfg.checkpoint_every_minutes):
        return True
    steps_since = progress.step - progress.last_checkpoint
    return timer_expired or (bool(cfg.checkpoint_every) and steps_since >= cfg.checkpoint_every)


# ---------------------------------------------------------------------------------------------------------------
# Set-up


def _set_up(
    cfg: TrainConfig,
    launch: PartialState,
    out_dir: Path,
    resume_from: Path | None,
    state: checkpoint.TrainState,
    extended_from: int,
    preemption: PreemptionFlag,
) -> tuple[Run, checkpoint.TrainState]:
    """Everything the loop needs, in the order that makes a seed reproduce a run: the accelerator and seed, the
    data, the model's initial weights, the optimizer and EMA, the checkpoint's state; then the run directory's
    config, trackers and the plan's lines. Returns the run and the state it continues (adapted to this launch)."""
    accelerator = _accelerator(cfg, launch, out_dir)
    splits, val_count, kept = _data(cfg, accelerator)
    # Tiles then equal the whole image up to float rounding (inference/tiles.py).
    tile_overlap = exact_overlap(cfg.model)
    val_dl, test_dl, train_dl, device_pairs = _loaders(cfg, splits, accelerator)

    # ---- model and optimizer (Adam, as the seed); the learning rate is set per step by lr_at
    model = build_model(cfg)
    if cfg.init_from and not resume_from:  # a resumed run continues from its checkpoint's weights
        cfg = _start_from(model, cfg, accelerator.print)
    optimizer = make_optimizer(model.parameters(), cfg.lr)  # fused Adam: can skip a bad step in-kernel
    # EMA (--ema-decay): a float32 copy outside accelerate's wrappers; it is what gets validated and saved,
    # and its state is part of every checkpoint.
    ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay else None
    eval_dls = [val_dl] if test_dl is None else [val_dl, test_dl]
    if cfg.streaming:  # not prepared: the stream is already this rank's share
        model, optimizer, *eval_dls = accelerator.prepare(model, optimizer, *eval_dls)
    else:
        model, optimizer, train_dl, *eval_dls = accelerator.prepare(model, optimizer, train_dl, *eval_dls)
    if ema is not None:  # saved and loaded by training/checkpoint.py, as safetensors: never pickled
        ema.module.to(accelerator.device)
    bad_steps = faults.BadSteps(accelerator, optimizer, cfg.max_bad_steps)  # non-finite steps, fp16's skips
    if cfg.compile:  # inductor's default is a compile worker per core for every rank: share the cores instead
        torch._inductor.config.compile_threads = cfg.cpu_threads or cores_per_local_process(accelerator.num_processes)
    if resume_from:  # weights, Adam moments, scaler, every rank's RNG, the EMA
        checkpoint.load_checkpoint(accelerator, resume_from, ema, say=accelerator.print)

    batches = TrainBatches(train_dl, accelerator, cfg)
    total_steps = total_steps_of(cfg, batches.steps_per_epoch)
    epochs = math.ceil(total_steps / batches.steps_per_epoch)
    if resume_from:  # another process count or precision than the checkpoint's: say so, adapt the budget
        state, total_steps = continued(accelerator, state, cfg, batches.steps_per_epoch, total_steps)
    run = Run(
        cfg=cfg,
        accelerator=accelerator,
        out_dir=out_dir,
        preemption=preemption,
        model=model,
        # Training runs through the compiled module; evaluation, EMA and saving use `model` itself.
        train_model=torch.compile(model) if cfg.compile else model,
        optimizer=optimizer,
        ema=ema,
        bad_steps=bad_steps,
        batches=batches,
        device_pairs=device_pairs,
        val_dl=eval_dls[0],
        test_dl=eval_dls[1] if len(eval_dls) > 1 else None,
        test_ids=splits.test["id"] if splits.test is not None else None,
        panel_images=[],
        tile_overlap=tile_overlap,
        steps_per_epoch=batches.steps_per_epoch,
        total_steps=total_steps,
        epochs=epochs,
        first_step=state.step,
        checks=StepChecks(
            every_step=accelerator.device.type != "cuda",
            checkpoint_minutes=cfg.checkpoint_every_minutes,
            step=state.step,
        ),
    )

    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / run_files.CONFIG)
        if resume_from:  # epochs after the checkpoint will be run (and recorded) again
            keep_epoch_records(out_dir / run_files.METRICS, before=state.epoch)
    accelerator.init_trackers(
        run_files.LOGS, init_kwargs={"mlflow": {"run_name": out_dir.name}, "wandb": {"name": out_dir.name}}
    )
    start_hparams(accelerator, cfg.hparams())  # settings + final val JM, speed, memory in the hparams tab
    if accelerator.is_main_process:
        images = EvalImages(splits.val, with_hr=True, pixels=splits.pixels)
        run.panel_images = [
            (splits.val[i]["id"], *images[i][1:]) for i in range(min(cfg.panel_images, len(splits.val)))
        ]
    _say_plan(run, splits, val_count, kept, resume_from, state, extended_from)
    return run, state


def _accelerator(cfg: TrainConfig, launch: PartialState, out_dir: Path) -> Accelerator:
    """The accelerator in the precision to train in, this process's CPU threads, and the seed set."""
    cpu = launch.device.type == "cpu"
    precision, precision_note = resolve_precision(cfg.mixed_precision, cpu=cpu)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=trackers(cfg.report_to),
        project_dir=str(out_dir),
        # non_blocking: the DataLoader pins the workers' batches (loaders.WindowBatch), so their copies to the GPU
        # overlap the step instead of syncing it.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True),
    )
    if precision_note:
        accelerator.print(precision_note)
    # GPU processes too: torchrun sets OMP_NUM_THREADS=1, which would leave validation's host work (tile
    # blending, PNG encoding) on one core while the others idle.
    torch.set_num_threads(cfg.cpu_threads or cores_per_local_process(accelerator.num_processes))
    if cpu:
        keep_freed_memory()  # no page faults on every step's fresh activations (training/host_memory.py)
    set_seed(cfg.seed)
    return accelerator


def _data(cfg: TrainConfig, accelerator: Accelerator) -> tuple[Splits, int, list[int] | None]:
    """The splits (validation cut to --val-max-images), the validation set's full size, and the rows kept."""
    # The main process builds the dataset caches first, the others reuse them.
    with accelerator.main_process_first():
        given = sources.given_folders(cfg.to_dict())
        data = cfg.data or (None if given["train_hr"] or given["train_lr"] else str(ensure_demo_data()))
        splits = load_splits(
            data,
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
            scale=cfg.scale,
            on_bad_sample=cfg.on_bad_sample,
            patch_size=cfg.patch_size,
            store_dir=cfg.store_dir,
            store_gb=cfg.store_gb,
            columns=(cfg.lr_column, cfg.hr_column, cfg.id_column),
            folders=given,
            lr_from_hr=cfg.lr_from_hr,
            say=accelerator.print,
        )
    check_patch_size(splits.train, cfg.patch_size, cfg.batch_size, splits.source)
    val_count = len(splits.val)
    kept = val_subset(val_count, cfg.val_max_images, cfg.seed)
    if kept is not None:  # the same rows on every rank: the split and the permutation are both seeded
        splits = dataclasses.replace(splits, val=splits.val.select(kept))
    return splits, val_count, kept


def _loaders(
    cfg: TrainConfig, splits: Splits, accelerator: Accelerator
) -> tuple[DataLoader, DataLoader | None, DataLoader, DevicePairs | None]:
    """The validation and test loaders, the training loader (a stream's, the device store's plans, or the
    workers' crops) and the device store, if any."""
    workers = dict(num_workers=cfg.num_workers, timeout=cfg.worker_timeout)
    val_dl = eval_loader(splits.val, with_hr=True, pixels=splits.pixels, **workers)
    test_dl = eval_loader(splits.test, with_hr=False, **workers) if splits.test is not None else None
    crops = dict(patch_size=cfg.patch_size, scale=cfg.scale, seed=cfg.seed)
    device_pairs, device_note = _device_pairs(cfg, splits, accelerator.device)
    accelerator.print(device_note)
    if cfg.streaming:
        stream = streaming_train(
            splits.train,
            seed=cfg.seed,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            workers=cfg.num_workers,
        )
        samples = StreamedPairs(stream, pixels=splits.pixels, crops_per_decode=cfg.crops_per_decode, **crops)
        train_dl = DataLoader(
            samples,
            batch_size=cfg.batch_size,
            collate_fn=collate_windows,
            **loader_kwargs(cfg.num_workers, persistent=False, timeout=cfg.worker_timeout),
        )
    elif device_pairs is not None:  # the loader only plans: the crops are cut on the device
        plans = DevicePlans(device_pairs, length=cfg.epoch_samples)
        train_dl = DataLoader(plans, batch_size=cfg.batch_size, shuffle=True, drop_last=len(plans) >= cfg.batch_size)
    else:
        train_dl = train_loader(
            splits.train,
            batch_size=cfg.batch_size,
            cache_mb=cfg.decoded_cache_mb,
            pixels=splits.pixels,
            crops_per_decode=cfg.crops_per_decode,
            epoch_samples=cfg.epoch_samples,
            **workers,
            **crops,
        )
    return val_dl, test_dl, train_dl, device_pairs


def _say_plan(
    run: Run,
    splits: Splits,
    val_count: int,
    kept: list[int] | None,
    resume_from: Path | None,
    state: checkpoint.TrainState,
    extended_from: int,
) -> None:
    """The run's two opening lines: what it trains on, with what, for how long; and how it evaluates."""
    cfg, accelerator = run.cfg, run.accelerator
    accelerator.print(
        f"insanesr-dist: {splits.source}: {len(splits.train)} train / {len(splits.val)} val / "
        f"{len(splits.test) if splits.test is not None else 0} test images; model "
        f"{count_parameters(run.model):,} parameters; {accelerator.num_processes} process(es) on "
        f"{accelerator.device.type}, precision {accelerator.mixed_precision}; {run.epochs} epoch(s), "
        f"{run.total_steps} steps -> {run.out_dir}"
        + (f"\nresuming from {resume_from} (epoch {state.epoch}, step {state.step})" if resume_from else "")
        + (
            f"; the run had finished: its budget grows from {extended_from} to {run.total_steps} steps, the learning "
            f"rate follows the {cfg.schedule} schedule of the new total from step {state.step}"
            if extended_from
            else ""
        )
    )
    val_ids = list(splits.val["id"]) if "id" in splits.val.column_names else []
    accelerator.print(
        f"evaluation: validate every {cfg.val_every} epoch(s)"
        + (f" and {cfg.val_every_steps} steps" if cfg.val_every_steps else "")
        + f" and at the last, submission every {cfg.submit_every}"
        + (f" and {cfg.submit_every_steps} steps" if cfg.submit_every_steps else "")
        + "; "
        + (
            f"{len(splits.val)} of {val_count} val images (seeded subset: {', '.join(map(str, val_ids[:8]))}"
            f"{', ...' if len(val_ids) > 8 else ''})"
            if kept is not None
            else f"all {val_count} val images"
        )
        + (
            f"; images with an LR edge over {cfg.val_tile} in tiles of {cfg.val_tile} (overlap {run.tile_overlap})"
            if cfg.val_tile
            else "; whole images (no tiles)"
        )
    )


# ---------------------------------------------------------------------------------------------------------------
# An epoch


def _train_epoch(run: Run, progress: Progress, epoch: int, resumed: checkpoint.TrainState | None) -> dict:
    """The epoch's optimizer steps (from the first batch not yet trained on when `resumed` holds this epoch's
    interrupted state), with the mid-epoch evaluations, checkpoints and preemption checks between them; returns
    the epoch's training figures for its record."""
    cfg, accelerator = run.cfg, run.accelerator
    run.model.train()
    started = time.perf_counter()
    skip = resumed.batches_done if resumed else 0  # trained on before the interruption
    steps = min(run.steps_per_epoch, run.total_steps - (epoch - 1) * run.steps_per_epoch)  # --max-steps: fewer
    batches, epoch_batches = run.batches.of_epoch(epoch, skip, steps)
    bar = tqdm(
        total=steps,
        initial=skip // cfg.grad_accum,
        desc=f"epoch {epoch}/{run.epochs}",
        leave=False,
        dynamic_ncols=True,
        disable=not accelerator.is_local_main_process,
    )
    # The epoch's running loss: this rank's sum and its count of batches; after an interruption, the sum over
    # the ranks that was saved, shared out again (the mean over ranks is the same).
    loss_sum = torch.tensor(resumed.loss_sum / accelerator.num_processes if skip else 0.0, device=accelerator.device)
    loss_batches = resumed.passes if skip else 0
    batches_done = skip  # of the epoch's batches (the checkpoint's position in the epoch)
    data_wait = DataWait()
    since_log = Interval(data_wait, loss_batches, samples_per_batch=cfg.batch_size * accelerator.num_processes)
    eval_seconds = 0.0  # mid-epoch evaluations: not training time
    for batch in data_wait(batches):
        loss = _train_on(run, batch, progress.step)
        loss_sum += loss.detach().nan_to_num(0.0, 0.0, 0.0)  # a skipped step's NaN must not poison the mean
        loss_batches += 1
        batches_done += 1
        if not accelerator.sync_gradients:
            continue  # within a gradient accumulation: no optimizer step yet
        progress.step += 1
        if run.ema is not None:
            run.ema.update(accelerator.unwrap_model(run.model))
        bar.update()
        if cfg.compile and progress.step == run.first_step + 1:
            _synchronize(accelerator.device)  # else the time is how long the host took to queue the step
            accelerator.print(
                f"torch.compile: the first step took {time.perf_counter() - started:.1f} s (compilation included)"
            )
        if progress.step % cfg.log_every == 0:  # the only per-step host sync besides the step checks
            _log_step(run, progress.step, loss, bar, since_log, loss_batches)
        if progress.step >= run.total_steps:
            break  # --max-steps reached (mid-epoch)
        # --val-every-steps/--submit-every-steps before the epoch's last step (which the epoch end evaluates):
        # not in metrics.jsonl (a line per epoch), but in TensorBoard, the console, the weights and a CSV.
        mid_epoch = batches_done < epoch_batches
        validating, submitting = (
            mid_epoch and _due(progress.step, every) for every in (cfg.val_every_steps, cfg.submit_every_steps)
        )
        if validating or submitting:
            scores, improved, took = _evaluate(
                run,
                progress,
                epoch,
                validating=validating,
                submitting=submitting,
                submission=f"step_{progress.step:07d}.csv",
            )
            log_evaluation(accelerator, scores, step=progress.step, epoch=epoch, seconds=took, improved=improved)
            eval_seconds += took
            since_log.leave_out(took)  # the next samples/s reading counts training time only
            if _out_of_patience(cfg, progress):
                break  # the epoch end finishes the run
        stop, timer_expired = (
            run.checks.read(accelerator, run.preemption, progress.step)
            if run.checks.due(progress.step)
            else (False, False)
        )
        if stop or timer_expired or _due(progress.step, cfg.checkpoint_every) or validating:
            _save(run, progress, epoch, batches_done, loss_sum, loss_batches)
        if stop:
            bar.close()
            _stop_for_preemption(run, progress)
    bar.close()
    run.bad_steps.read(progress.step, accelerator.print)  # before validation and any write of this epoch
    train_loss = accelerator.reduce(loss_sum / max(1, loss_batches), "mean").item()
    seconds = time.perf_counter() - started - eval_seconds
    return {
        "train_loss": train_loss,
        "seconds": seconds,
        "samples_per_s": (loss_batches - skip) * cfg.batch_size * accelerator.num_processes / seconds,
        "data_wait_fraction": data_wait.seconds / seconds,
        "mid_epoch_eval_seconds": eval_seconds,
    }


def _train_on(run: Run, batch, step: int) -> torch.Tensor:
    """One batch: forward and backward, then (at the end of a gradient accumulation, accelerate decides) the
    optimizer step at the learning rate of optimizer step `step`. Returns the batch's loss."""
    cfg, accelerator, model, optimizer = run.cfg, run.accelerator, run.model, run.optimizer
    lr_img, hr_img = _model_inputs(batch, accelerator.device, run.device_pairs, cfg.channels_last)
    with accelerator.accumulate(model):
        loss = training_loss(cfg.loss, cfg.ssim_weight, run.train_model(lr_img), hr_img)
        accelerator.backward(loss)
        if accelerator.sync_gradients and cfg.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(
                step, peak=cfg.lr, warmup=cfg.warmup_steps, total=run.total_steps, schedule=cfg.schedule
            )
        if accelerator.sync_gradients:  # non-finite gradients turn this step into a no-op (training/faults.py)
            run.bad_steps.check(model.parameters())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss


def _log_step(run: Run, step: int, loss: torch.Tensor, bar, interval: Interval, batches: int) -> None:
    """Every --log-every steps: the loss (a reduction and a host sync), learning rate and speed; skipped steps."""
    accelerator = run.accelerator
    loss_now = accelerator.reduce(loss.detach(), "mean").item()
    # Read after the sync: the steps counted have then run, not only been queued.
    samples_per_s, wait_share = interval.rates(batches)
    bar.set_postfix(loss=f"{loss_now:.6f}")
    accelerator.log(
        {
            "train/loss": loss_now,
            "train/lr": run.optimizer.param_groups[0]["lr"],
            "perf/train_samples_per_s": samples_per_s,
            "perf/data_wait_fraction": wait_share,
        },
        step=step,
    )
    run.bad_steps.read(step, accelerator.print)  # logs skipped steps; stops past --max-bad-steps


def _end_epoch(run: Run, progress: Progress, epoch: int, trained: dict) -> bool:
    """Validate and predict the test set as due, record the epoch (metrics.jsonl, TensorBoard, its line) and, when
    due, save its full state, from which a rerun continues with the next epoch. Returns whether the run stops
    early."""
    cfg, accelerator = run.cfg, run.accelerator
    stop, timer_expired = run.checks.read(accelerator, run.preemption, progress.step)
    # Due at --val-every, --submit-every and their step forms, and always at the last epoch and at an early stop,
    # which ends the run like the last epoch; stopped right after a mid-epoch validation, its scores stand for
    # this epoch's.
    final = epoch == run.epochs or _out_of_patience(cfg, progress)
    validating = evaluates_at(epoch, cfg.val_every, run.epochs) or _due(progress.step, cfg.val_every_steps) or final
    submitting = (
        evaluates_at(epoch, cfg.submit_every, run.epochs) or _due(progress.step, cfg.submit_every_steps) or final
    )
    checkpointing = final or stop or _checkpoint_due_at_epoch_end(cfg, progress, timer_expired)
    scores, improved, eval_seconds = {}, False, 0.0
    if validating or submitting or checkpointing:  # latest.safetensors goes with each of them
        scores, improved, eval_seconds = _evaluate(
            run,
            progress,
            epoch,
            validating=validating and progress.last_validation[0] != progress.step,
            submitting=submitting and progress.last_submission != progress.step,
            submission=f"epoch_{epoch:03d}.csv",
        )
    if not final and _out_of_patience(cfg, progress):  # at this validation: the run ends here, with a CSV as the last
        final = True
        eval_seconds += _evaluate(
            run,
            progress,
            epoch,
            validating=False,
            submitting=progress.last_submission != progress.step,
            submission=f"epoch_{epoch:03d}.csv",
        )[2]
    # A record without validation keys at epochs that skip it (see tracking.log_epoch).
    record = {
        "epoch": epoch,
        "step": progress.step,
        "train_loss": trained["train_loss"],
        **(scores or progress.scores_now()),
        "seconds": trained["seconds"],
        "samples_per_s": trained["samples_per_s"],
        "data_wait_fraction": trained["data_wait_fraction"],
        "eval_seconds": trained["mid_epoch_eval_seconds"] + eval_seconds,
    }
    log_epoch(accelerator, run.out_dir, record, run.epochs, improved)

    if checkpointing or final:
        _save(run, progress, epoch + 1, 0, torch.zeros((), device=accelerator.device), 0, finished=final)
    if final and epoch < run.epochs:
        accelerator.print(
            f"early stop: {progress.stale} validation(s) without a JM above "
            f"{progress.stale_reference:.4f} + {cfg.early_stop_min_delta:g} (--early-stop-patience "
            f"{cfg.early_stop_patience}); the run is finished"
        )
        return True
    if epoch < run.epochs and stop:
        _stop_for_preemption(run, progress)
    return False


def _evaluate(
    run: Run, progress: Progress, epoch: int, *, validating: bool, submitting: bool, submission: str
) -> tuple[dict, bool, float]:
    """Score the validation set and/or write the submission `submission` with the current weights: every rank
    its shard, gathered everywhere; every rank takes the same decisions, so all call the collectives. Rank 0
    then writes the submission, latest.safetensors (with its scores when validated), best.safetensors when the
    JM improved, and the panels. Returns the scores ({} when not validating), whether they improved and the
    seconds it took."""
    cfg, accelerator = run.cfg, run.accelerator
    eval_started = time.perf_counter()
    run.model.eval()
    evaluated = run.ema.module if run.ema is not None else accelerator.unwrap_model(run.model)
    forward = float32_forward(accelerator, evaluated)
    tiling = (cfg.val_tile, run.tile_overlap)
    scores = score_images(forward, run.val_dl, accelerator, *tiling) if validating else {}
    pngs = predict_pngs(forward, run.test_dl, accelerator, *tiling) if submitting and run.test_dl is not None else None
    improved = validating and progress.validated(scores, cfg.early_stop_min_delta)
    if pngs is not None:
        progress.last_submission = progress.step
    if accelerator.is_main_process:
        if pngs is not None:
            ids = run.test_ids
            write_submission(
                run.out_dir / run_files.SUBMISSIONS / submission, ((ids[i], pngs[i]) for i in range(len(ids)))
            )
        # The scores of these weights: this call's, or a validation's at this same step (an early stop's CSV)
        shown = progress.scores_now()
        meta = {"epoch": epoch, "step": progress.step, **{k: shown[k] for k in ("jm", "psnr", "ssim") if k in shown}}
        save_weights(evaluated, run.out_dir / run_files.LATEST, **meta)  # the EMA weights when EMA is on
        if improved:
            save_weights(evaluated, run.out_dir / run_files.BEST, **meta)
        if validating and run.panel_images:
            log_panels(accelerator, _panels(run, forward), progress.step)
    if (validating or submitting) and torch.cuda.is_available():
        torch.cuda.empty_cache()  # whole images' activations: give them back rather than keep them cached
    run.model.train()
    return scores, improved, time.perf_counter() - eval_started


def _panels(run: Run, forward):
    """The fixed validation images with their SR, upscaled as validation does it (in tiles above --val-tile), one
    at a time: (id, LR, SR, HR), LR and SR on the device."""
    for image_id, lr, hr in run.panel_images:
        lr = lr.to(run.accelerator.device)
        yield image_id, lr, upscale_for_eval(forward, lr, tile=run.cfg.val_tile, overlap=run.tile_overlap), hr


def _save(
    run: Run,
    progress: Progress,
    epoch: int,
    batches_done: int,
    loss_sum: torch.Tensor,
    loss_batches: int,
    finished: bool = False,
) -> None:
    """A full checkpoint: the state the loop continues from at batch `batches_done` of `epoch`."""
    # Each rank holds its own running loss; the sum over ranks, shared out again on resume, gives the same mean.
    total_loss = run.accelerator.reduce(loss_sum.clone(), "sum").item()
    checkpoint.save_checkpoint(
        run.accelerator,
        run.out_dir,
        checkpoint.TrainState(
            epoch,
            batches_done,
            progress.step,
            progress.best_jm,
            total_loss,
            loss_batches,
            finished,
            steps_per_epoch=run.steps_per_epoch,
            total_steps=run.total_steps,
            stale_validations=progress.stale,
            stale_reference=progress.stale_reference,
        ),
        keep=run.cfg.keep_checkpoints,
        ema=run.ema,
    )
    progress.last_checkpoint = progress.step
    run.checks.saved()


def _stop_for_preemption(run: Run, progress: Progress) -> typing.NoReturn:
    accelerator = run.accelerator
    accelerator.print(f"preempted: checkpoint saved at step {progress.step}; the same command resumes from it")
    if accelerator.is_main_process and run.preemption.wants_requeue:
        requeue_if_slurm(os.environ.get("SLURM_JOB_ID"), say=accelerator.print)
    # No rank exits before the requeue: a rank that left first would fail its node's launcher, and
    # `srun --kill-on-bad-exit=1` would end the step, rank 0 with its requeue still to do included.
    accelerator.wait_for_everyone()
    accelerator.end_training()
    sys.exit(PREEMPTED_EXIT_CODE)


# ---------------------------------------------------------------------------------------------------------------
# The batches


class TrainBatches:
    """The training batches as the loop takes them, from a stream (--streaming) or a map-style loader: the
    one place where the two differ.

    A map-style epoch is one pass over the training set (or --epoch-samples samples), in an order (and with crops)
    seeded by the epoch. A stream has no length: its epoch is --epoch-samples samples or else --max-steps /
    --epochs steps, taken from as many passes over this rank's share of the stream as that needs.
    """

    def __init__(self, loader: DataLoader, accelerator: Accelerator, cfg: TrainConfig) -> None:
        self.loader, self.accelerator = loader, accelerator
        self.streaming, self.grad_accum = cfg.streaming, cfg.grad_accum
        if not cfg.streaming:
            self.steps_per_epoch = math.ceil(len(loader) / cfg.grad_accum)
        elif cfg.epoch_samples:
            global_batch = cfg.batch_size * accelerator.num_processes * cfg.grad_accum
            self.steps_per_epoch = math.ceil(cfg.epoch_samples / global_batch)
        else:
            self.steps_per_epoch = math.ceil(cfg.max_steps / cfg.epochs)

    def of_epoch(self, epoch: int, skip: int, steps: int):
        """The epoch's batches after the first `skip` (trained on before an interruption), for its `steps`
        optimizer steps, and how many batches the whole epoch has."""
        if self.streaming:
            limit = steps * self.grad_accum
            return _stream_batches(self.loader, epoch, limit, skip), limit
        return _epoch_batches(self.accelerator, self.loader, epoch, skip), len(self.loader)


def _epoch_batches(accelerator: Accelerator, loader: DataLoader, epoch: int, skip: int):
    """The epoch's batches in its seeded order (sampler and crops follow `epoch`), minus the first
    `skip` ones already trained on before an interruption."""
    loader.set_epoch(epoch)  # accelerate's loader passes the epoch to its sampler...
    # ...but, with several processes (a sharded batch sampler), not to the dataset (accelerate 1.15's
    # DataLoaderShard.set_epoch): without this, every epoch would cut the same crops.
    loader.dataset.set_epoch(epoch)
    return accelerator.skip_first_batches(loader, skip) if skip else loader


def _stream_batches(loader: DataLoader, epoch: int, limit: int, skip: int):
    """Batches `skip`..`limit` of the epoch from a streaming loader, starting new passes over the stream as
    needed (each pass shuffled by its own seed)."""
    given, stream_pass = 0, 0
    while given < limit:
        loader.dataset.set_epoch(epoch * 1000 + stream_pass)
        empty = True
        for batch in loader:
            empty = False
            if given >= skip:
                yield batch
            given += 1
            if given == limit:
                return
        if empty:
            raise UserError("the streaming training set produced no batch for this rank")
        stream_pass += 1


class DataWait:
    """Seconds the loop spent waiting for its next batch: the data path is the bottleneck when their share of
    the step time is large (on a GPU, whose steps run asynchronously, the wait overlaps the device's work)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self, batches):
        batches = iter(batches)
        while True:
            started = time.perf_counter()
            batch = next(batches, None)
            self.seconds += time.perf_counter() - started
            if batch is None:
                return
            yield batch


class Interval:
    """The training speed since the previous reading (--log-every): samples/s and the share of the time spent
    waiting for batches."""

    def __init__(self, data_wait: DataWait, batches: int, *, samples_per_batch: int) -> None:
        self.data_wait, self.samples_per_batch = data_wait, samples_per_batch
        self.started, self.batches, self.waited = time.perf_counter(), batches, data_wait.seconds

    def rates(self, batches: int) -> tuple[float, float]:
        """Samples/s and the data-wait share since the last reading, `batches` the batch count now."""
        now = time.perf_counter()
        samples_per_s = (batches - self.batches) * self.samples_per_batch / (now - self.started)
        wait_share = (self.data_wait.seconds - self.waited) / (now - self.started)
        self.started, self.batches, self.waited = now, batches, self.data_wait.seconds
        return samples_per_s, wait_share

    def leave_out(self, seconds: float) -> None:
        """Time that was not training (a mid-epoch evaluation): not counted in the next reading."""
        self.started += seconds


def _device_pairs(cfg: TrainConfig, splits: Splits, device: torch.device) -> tuple[DevicePairs | None, str]:
    """The training pairs on the device (--device-store), or None, and a line saying which and why."""
    why_not = (
        "--device-store off"
        if cfg.device_store == "off"
        else "streaming"
        if cfg.streaming
        else "no decoded store"
        if splits.pixels is None
        else "--patch-size 0"
        if not cfg.patch_size
        else None
    )
    rows = store_rows(splits.train) if why_not is None else None
    size = splits.pixels.nbytes(rows) if why_not is None else 0
    if why_not is None and cfg.device_store == "auto":
        room = torch.cuda.get_device_properties(device).total_memory // 4 if device.type == "cuda" else 0
        why_not = (
            "auto: not on a GPU"
            if device.type != "cuda"
            else f"auto: {size / 1e9:.2f} GB is above a quarter of the GPU's memory"
            if size > room
            else None
        )
    if why_not is not None:
        return None, f"device store: off ({why_not}); DataLoader workers cut the crops"
    pairs = DevicePairs(splits.pixels.pair, rows, patch=cfg.patch_size, scale=cfg.scale, seed=cfg.seed, device=device)
    return pairs, f"device store: {pairs.nbytes / 1e9:.2f} GB of decoded training pairs on {device}; crops cut there"


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on a CPU, where every op is synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model_inputs(batch, device: torch.device, pairs: DevicePairs | None, channels_last: bool):
    """A training batch as float images in [0, 1] on the device, each sample flipped/rotated as drawn."""
    if pairs is not None:
        lr, hr = pairs.cut(batch)
    else:
        # A prepared loader's batch is on the device already (accelerate called its `to`); a stream's is not.
        batch = batch.to(device, non_blocking=True)
        lr, hr = augment(batch.lr, batch.hr, batch.codes)
    lr, hr = lr.float().div_(255), hr.float().div_(255)  # channels-last memory, as augment makes it
    return (lr, hr) if channels_last else (lr.contiguous(), hr.contiguous())


# ---------------------------------------------------------------------------------------------------------------
# Small pieces


def build_model(cfg: TrainConfig) -> InsaneSRNet:
    """The model as trained: channels-last memory makes oneDNN and cuDNN pick their fast conv kernels."""
    model = InsaneSRNet(**asdict(cfg.model))
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def _start_from(model: InsaneSRNet, cfg: TrainConfig, say) -> TrainConfig:
    """--init-from: the weights copied into `model`, said in one line; returns the config recording the file."""
    source = weights.init_source(cfg.init_from)
    left = weights.init_weights(model, source, strict=cfg.init_strict)
    meta = read_metadata(source) if source.endswith(".safetensors") else {}
    origin = ", ".join(
        f"{k} {meta[k]:.4f}" if isinstance(meta[k], float) else f"{k} {meta[k]}"
        for k in ("epoch", "step", "jm")
        if k in meta
    )
    say(
        f"init: weights from {source}"
        + (f" ({origin})" if origin else "")
        + "; a fresh optimizer and schedule"
        + (f"; {len(left)} tensor(s) left at their initial value: {', '.join(left)}" if left else "")
    )
    return dataclasses.replace(cfg, init_from=source)


def _agree_on_output_dir(state: PartialState, requested: str | None) -> Path:
    """All ranks must write to one directory; the main process picks the default timestamp."""
    choice = [requested or f"runs/{datetime.now():%Y%m%d-%H%M%S}"]
    if state.num_processes > 1:
        broadcast_object_list(choice, from_process=0)
    return Path(choice[0])


def val_subset(count: int, limit: int, seed: int) -> list[int] | None:
    """The validation rows --val-max-images keeps: the first `limit` of a permutation seeded by --seed, in
    split order, so every epoch, rank and rerun scores the same images (None: all `count` of them)."""
    if not limit or limit >= count:
        return None
    import numpy as np

    return sorted(np.random.default_rng([seed, 14]).permutation(count)[:limit].tolist())


def evaluates_at(epoch: int, every: int, last: int) -> bool:
    """Whether an epoch validates (--val-every) or writes its submission (--submit-every): every `every`-th
    epoch, and always the last one, so a run ends with scored best/latest weights and a CSV."""
    return epoch % every == 0 or epoch == last


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


@click.command("train", cls=Command, context_settings={"max_content_width": 110})
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML or JSON file with the same settings; the command line overrides it.",
)
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
