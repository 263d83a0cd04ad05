"""Training: `accelerate launch -m insanesr_dist.train [options]` (also `insanesr-dist train`).

`train(cfg)` is the whole loop, read top to bottom: set-up, then per epoch the training steps,
validation, test-set prediction and the rank-0 writes. Every rank runs every collective.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import signal
import sys
import time
import typing
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import click
import torch
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.utils import broadcast_object_list, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from insanesr_dist.commands import Command
from insanesr_dist.training import checkpoint
from insanesr_dist.training.preemption import PREEMPTED_EXIT_CODE, PreemptionFlag, requeue_if_slurm
from insanesr_dist.training import faults
from insanesr_dist.training.optimizer import make_optimizer
from insanesr_dist.data import sources
from insanesr_dist.model import weights
from insanesr_dist.data.loaders import EvalImages, StreamedPairs, collate_windows, eval_loader, loader_kwargs, start_worker_server, store_rows, streaming_train, train_loader
from insanesr_dist.data.splits import Splits, check_patch_size, load_splits
from insanesr_dist.config import TrainConfig, field_specs, read_config_file, save_config
from insanesr_dist.data.crops import DevicePairs, DevicePlans, augment
from insanesr_dist.data.demo import ensure_demo_data
from insanesr_dist.training.ema import WeightEMA
from insanesr_dist.errors import UserError
from insanesr_dist.scoring.validation import score_images
from insanesr_dist.training.host_memory import keep_freed_memory
from insanesr_dist.training.losses import training_loss
from insanesr_dist.model.architecture import InsaneSRNet, count_parameters
from insanesr_dist.model.weights import read_metadata, save_weights
from insanesr_dist.inference.forward import float32_forward
from insanesr_dist.inference.sharded import predict_pngs
from insanesr_dist.training.precision import resolve_precision
from insanesr_dist.training.runtime import stall_message, start_processes
from insanesr_dist.scoring.submission import write_submission
from insanesr_dist.inference.tiles import exact_overlap
from insanesr_dist.training.tracking import end_hparams, keep_epoch_records, log_epoch, log_evaluation, log_panels, start_hparams, trackers
from insanesr_dist.training.optimizer import lr_at
from insanesr_dist import run_files


def build_model(cfg: TrainConfig) -> InsaneSRNet:
    """The model as trained: channels-last memory makes oneDNN and cuDNN pick their fast conv kernels."""
    model = InsaneSRNet(**asdict(cfg.model))
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def _start_from(model: InsaneSRNet, cfg: TrainConfig, say) -> TrainConfig:
    """--init-from: the weights copied into `model`, said in one line; returns the config recording the file."""
    source = weights.init_source(cfg.init_from)
    left = weights.init_weights(model, source, strict=cfg.init_strict)
    meta = read_metadata(source) if source.endswith(".safetensors") else {}
    origin = ", ".join(f"{k} {meta[k]:.4f}" if isinstance(meta[k], float) else f"{k} {meta[k]}"
                       for k in ("epoch", "step", "jm") if k in meta)
    say(f"init: weights from {source}" + (f" ({origin})" if origin else "") + "; a fresh optimizer and schedule"
        + (f"; {len(left)} tensor(s) left at their initial value: {', '.join(left)}" if left else ""))
    return dataclasses.replace(cfg, init_from=source)


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


def _epoch_batches(accelerator: Accelerator, loader: DataLoader, epoch: int, skip: int):
    """The epoch's batches in its seeded order (sampler and crops follow `epoch`), minus the first
    `skip` ones already trained on before an interruption."""
    loader.set_epoch(epoch)  # accelerate's loader passes the epoch to its sampler...
    # ...but, with several processes (a sharded batch sampler), not to the dataset (accelerate 1.15's
    # DataLoaderShard.set_epoch): without this, every epoch would cut the same crops.
    loader.dataset.set_epoch(epoch)
    return accelerator.skip_first_batches(loader, skip) if skip else loader


def _stream_batches(loader: DataLoader, epoch: int, limit: int, skip: int):
    """Batches `skip`..`limit` of the epoch from a streaming loader, starting new passes as needed."""
    given, passes = 0, 0
    while given < limit:
        loader.dataset.set_epoch(epoch * 1000 + passes)
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
        passes += 1


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


def _device_pairs(cfg: TrainConfig, splits: Splits, device: torch.device) -> tuple[DevicePairs | None, str]:
    """The training pairs on the device (--device-store), or None, and a line saying which and why."""
    why_not = ("--device-store off" if cfg.device_store == "off" else "streaming" if cfg.streaming
               else "no decoded store" if splits.pixels is None else "--patch-size 0" if not cfg.patch_size else None)
    rows = store_rows(splits.train) if why_not is None else None
    size = splits.pixels.nbytes(rows) if why_not is None else 0
    if why_not is None and cfg.device_store == "auto":
        room = torch.cuda.get_device_properties(device).total_memory // 4 if device.type == "cuda" else 0
        why_not = ("auto: not on a GPU" if device.type != "cuda" else
                   f"auto: {size / 1e9:.2f} GB is above a quarter of the GPU's memory" if size > room else None)
    if why_not is not None:
        return None, f"device store: off ({why_not}); DataLoader workers cut the crops"
    pairs = DevicePairs(splits.pixels.pair, rows, patch=cfg.patch_size, scale=cfg.scale, seed=cfg.seed, device=device)
    return pairs, f"device store: {pairs.nbytes / 1e9:.2f} GB of decoded training pairs on {device}; crops cut there"


def _model_inputs(batch, device: torch.device, pairs: DevicePairs | None, channels_last: bool):
    """A training batch as float images in [0, 1] on the device, each sample flipped/rotated as drawn."""
    if pairs is not None:
        lr, hr = pairs.cut(batch)
    else:
        lr, hr = augment(*(torch.as_tensor(t).to(device, non_blocking=True) for t in batch))
    lr, hr = lr.float().div_(255), hr.float().div_(255)  # channels-last memory, as augment makes it
    return (lr, hr) if channels_last else (lr.contiguous(), hr.contiguous())


def _resume_point(cfg: TrainConfig, out_dir: Path,
                  launch: PartialState) -> tuple[Path | None, checkpoint.TrainState]:
    """The checkpoint to continue from and its state, as rank 0 chose and read them.

    Only rank 0 looks (a lagging or per-node file system must not let ranks continue from different
    steps); the others receive its choice, or its error, and check they can read the chosen files.
    """
    choice: list = [None, None, None]  # checkpoint path, its TrainState as a dict, a UserError's message
    if launch.is_main_process:
        try:
            path = _choose_checkpoint(cfg, out_dir)
            choice = [str(path), asdict(checkpoint.read_state(path)), None] if path else choice
        except UserError as e:
            choice = [None, None, e.message]  # every rank raises it: none may go on
    if launch.num_processes > 1:
        broadcast_object_list(choice, from_process=0)
    path, state, error = choice
    if error:
        raise UserError(error)
    if path is None:
        return None, checkpoint.TrainState()
    checkpoint.check_every_rank_can_read(launch, Path(path))
    return Path(path), checkpoint.TrainState(**state)


def _choose_checkpoint(cfg: TrainConfig, out_dir: Path) -> Path | None:
    """Rank 0: the checkpoint to continue from, refusing to overwrite a run it cannot continue."""
    resume_from = checkpoint.find_resume(cfg.resume, out_dir)
    if resume_from is None and (out_dir / run_files.METRICS).exists():
        raise UserError(f"{out_dir}: already holds a run with no complete checkpoint to resume from "
                        "(--resume none never overwrites one); choose another --output-dir")
    if resume_from is None:
        return None
    saved = json.loads((out_dir / run_files.CONFIG).read_text()) if (out_dir / run_files.CONFIG).is_file() else {}
    if "ema_decay" in saved and bool(saved["ema_decay"]) != bool(cfg.ema_decay):
        raise UserError(f"{out_dir}: cannot resume with --ema-decay {cfg.ema_decay}: the checkpoint was written "
                        f"with --ema-decay {saved['ema_decay']}; use that, or another --output-dir")
    changed = sorted(k for k, v in cfg.to_dict().items() if k in saved and saved[k] != v and k not in RESUMABLE)
    if changed:
        print(f"warning: resuming with changed settings ({', '.join(changed)}): the result will differ "
              "from an uninterrupted run")
    return resume_from


def _continue(accelerator: Accelerator, state: checkpoint.TrainState, cfg: TrainConfig, steps_per_epoch: int,
              total_steps: int) -> tuple[checkpoint.TrainState, int]:
    """The state and step budget with which this run continues the checkpoint's, saying what differs.

    Another process count changes the steps per epoch: the epoch goes on after the global batches already
    trained on (checkpoint.for_processes), and the budget moves by the difference between the steps taken
    and the steps this count would have taken to get here, so the run still ends at the end of its last
    epoch and the learning-rate schedule reaches its end there. (A streaming run's steps per epoch do not
    depend on the count: each rank reads its own share of the stream.)
    """
    written_by = state.processes  # 0: not recorded (an older checkpoint)
    if written_by and written_by != accelerator.num_processes and not cfg.streaming:
        state = checkpoint.for_processes(state, accelerator.num_processes)
        total_steps += state.step - ((state.epoch - 1) * steps_per_epoch + state.batches_done // cfg.grad_accum)
    if written_by and written_by != accelerator.num_processes:
        accelerator.print(
            f"warning: resuming with {accelerator.num_processes} process(es); the checkpoint was written by "
            f"{written_by}: steps per epoch {state.steps_per_epoch} -> {steps_per_epoch}, total steps "
            f"{state.total_steps} -> {total_steps} (the learning-rate schedule follows); the result will differ "
            "from an uninterrupted run")
    if state.precision and state.precision != accelerator.mixed_precision:
        accelerator.print(f"warning: resuming in precision {accelerator.mixed_precision}; the checkpoint was written "
                          f"in {state.precision}: the result will differ from an uninterrupted run")
    return dataclasses.replace(state, processes=accelerator.num_processes), total_steps


# Settings that may change between an interrupted run and its continuation without changing the result.
RESUMABLE = {"resume", "output_dir", "num_workers", "cpu_threads", "log_every", "epochs", "max_steps",
             "checkpoint_every", "keep_checkpoints", "max_bad_steps", "decoded_cache_mb", "worker_timeout",
             "dist_timeout", "val_every", "submit_every", "val_every_steps", "submit_every_steps", "val_tile",
             "store_dir", "device_store", "init_from", "init_strict", "report_to"}


def val_subset(count: int, limit: int, seed: int) -> list[int] | None:
    """The validation rows --val-max-images keeps: the first `limit` of a permutation seeded by --seed, in
    split order, so every epoch, rank and rerun scores the same images (None: all `count` of them)."""
    if not limit or limit >= count:
        return None
    import numpy as np

    return sorted(np.random.default_rng([seed, 14]).permutation(count)[:limit].tolist())


def total_steps_of(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The run's step budget: --epochs of `steps_per_epoch`, or --max-steps when that ends it first."""
    return min(cfg.max_steps or sys.maxsize, cfg.epochs * steps_per_epoch)


def evaluates_at(epoch: int, every: int, last: int) -> bool:
    """Whether an epoch validates (--val-every) or writes its submission (--submit-every): every `every`-th
    epoch, and always the last one, so a run ends with scored best/latest weights and a CSV."""
    return epoch % every == 0 or epoch == last


def train(cfg: TrainConfig) -> Path:
    """Train with `cfg`, continuing from the newest complete checkpoint when there is one;
    returns the run directory."""
    # The DataLoader workers' fork server first: starting it (and multiprocessing's resource tracker with it)
    # unblocks SIGTERM in this process, so the preemption flag's signal block must come after it.
    if cfg.num_workers:
        start_worker_server()
    # Then, before any thread exists: threads inherit the signal block (and so do workers, see data.py).
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
        # A wait that ran out or a lost peer (runtime.py), a full disk or another I/O failure (faults.py): one line
        problem = (stall_message(e, dist_timeout=cfg.dist_timeout, worker_timeout=cfg.worker_timeout)
                   or (faults.io_failure(e) if isinstance(e, Exception) else None))
        if problem is None:  # a bug, Ctrl-C or the preemption exit: as it is
            raise
        raise UserError(problem) from None
    finally:
        preemption.close()


def _train(cfg: TrainConfig, preemption: PreemptionFlag) -> Path:
    launch = start_processes(cfg.dist_timeout)
    cpu = launch.device.type == "cpu"
    out_dir = _agree_on_output_dir(launch, cfg.output_dir)
    resume_from, state = _resume_point(cfg, out_dir, launch)
    extended_from = 0  # a finished run given a larger budget: the total it had
    if state.finished:
        planned = total_steps_of(cfg, state.steps_per_epoch) if state.steps_per_epoch else 0
        if planned <= state.total_steps:
            if launch.is_main_process:
                print(f"{out_dir}: this run already finished (step {state.step}); nothing to do")
            return out_dir
        extended_from, state = state.total_steps, dataclasses.replace(state, finished=False)
    precision, precision_note = resolve_precision(cfg.mixed_precision, cpu=cpu)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=trackers(cfg.report_to),
        project_dir=str(out_dir),
        # non_blocking: host-to-GPU copies of pinned batches overlap the step instead of syncing it.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True),
    )
    if precision_note:
        accelerator.print(precision_note)
    if cpu:
        torch.set_num_threads(cfg.cpu_threads or _cores_per_local_process(accelerator))
        keep_freed_memory()  # no page faults on every step's fresh activations (host_memory.py)
    set_seed(cfg.seed)

    # ---- data: the main process builds the dataset caches first, the others reuse them
    with accelerator.main_process_first():
        given = sources.given_folders(cfg.to_dict())
        data = cfg.data or (None if given["train_hr"] or given["train_lr"] else str(ensure_demo_data()))
        splits = load_splits(data, val_fraction=cfg.val_fraction, seed=cfg.seed, scale=cfg.scale,
                                      on_bad_sample=cfg.on_bad_sample, patch_size=cfg.patch_size,
                                      store_dir=cfg.store_dir, store_gb=cfg.store_gb,
                                      columns=(cfg.lr_column, cfg.hr_column, cfg.id_column), folders=given,
                                      lr_from_hr=cfg.lr_from_hr, say=accelerator.print)
    source = splits.source
    check_patch_size(splits.train, cfg.patch_size, cfg.batch_size, source)
    val_count = len(splits.val)
    kept = val_subset(val_count, cfg.val_max_images, cfg.seed)
    if kept is not None:  # the same rows on every rank: the split and the permutation are both seeded
        splits = dataclasses.replace(splits, val=splits.val.select(kept))
    tile_overlap = exact_overlap(cfg.model)  # tiles then equal the whole image up to float rounding (tiles.py)
    workers = dict(num_workers=cfg.num_workers, timeout=cfg.worker_timeout)
    loaders = [eval_loader(splits.val, with_hr=True, pixels=splits.pixels, **workers)]
    if splits.test is not None:
        loaders.append(eval_loader(splits.test, with_hr=False, **workers))
    crops = dict(patch_size=cfg.patch_size, scale=cfg.scale, seed=cfg.seed)
    if cfg.streaming:  # not prepared: the stream is already this rank's share
        stream = streaming_train(splits.train, seed=cfg.seed, rank=accelerator.process_index,
                                          world_size=accelerator.num_processes, workers=cfg.num_workers)
        samples = StreamedPairs(stream, pixels=splits.pixels, crops_per_decode=cfg.crops_per_decode, **crops)
        train_dl = DataLoader(samples, batch_size=cfg.batch_size,
                              collate_fn=collate_windows,
                              **loader_kwargs(cfg.num_workers, persistent=False, timeout=cfg.worker_timeout))
    device_pairs, device_note = _device_pairs(cfg, splits, accelerator.device)
    accelerator.print(device_note)
    if device_pairs is not None:  # the loader only plans: the crops are cut on the device
        train_dl = DataLoader(DevicePlans(device_pairs), batch_size=cfg.batch_size, shuffle=True,
                              drop_last=len(splits.train) >= cfg.batch_size)
        loaders.insert(0, train_dl)
    elif not cfg.streaming:
        train_dl = train_loader(splits.train, batch_size=cfg.batch_size, cache_mb=cfg.decoded_cache_mb,
                                         pixels=splits.pixels, crops_per_decode=cfg.crops_per_decode, **workers,
                                         **crops)
        loaders.insert(0, train_dl)

    # ---- model and optimizer (Adam, as the seed); the learning rate is set per step by lr_at
    model = build_model(cfg)
    if cfg.init_from and not resume_from:  # a resumed run continues from its checkpoint's weights
        cfg = _start_from(model, cfg, accelerator.print)
    optimizer = make_optimizer(model.parameters(), cfg.lr)  # fused Adam: can skip a bad step in-kernel
    # EMA (--ema-decay): a float32 copy outside accelerate's wrappers; it is what gets validated and saved,
    # and its state is part of every checkpoint.
    ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay else None
    model, optimizer, *loaders = accelerator.prepare(model, optimizer, *loaders)
    if ema is not None:  # saved and loaded by checkpoint.py, as safetensors: never pickled
        ema.module.to(accelerator.device)
    if not cfg.streaming:
        train_dl = loaders.pop(0)
    val_dl, test_dl = loaders[0], (loaders[1] if len(loaders) > 1 else None)
    bad_steps = faults.BadSteps(accelerator, optimizer, cfg.max_bad_steps)  # non-finite steps, fp16's skips
    if resume_from:  # weights, Adam moments, scaler, every rank's RNG, the EMA
        checkpoint.load_checkpoint(accelerator, resume_from, ema, say=accelerator.print)
    # Training runs through the compiled module; evaluation, EMA and saving use `model` itself.
    train_model = torch.compile(model) if cfg.compile else model
    # Reading the preemption flag is a reduction plus a host sync: free on a CPU, where every op is
    # synchronous anyway, but a stall of the CUDA queue, so on GPUs it is read at logging steps only.
    check_every = cfg.log_every if accelerator.device.type == "cuda" else 1

    steps_per_epoch = math.ceil(cfg.max_steps / cfg.epochs) if cfg.streaming else math.ceil(len(train_dl) / cfg.grad_accum)
    total_steps = total_steps_of(cfg, steps_per_epoch)
    epochs = math.ceil(total_steps / steps_per_epoch)
    if resume_from:  # another process count or precision than the checkpoint's: say so, adapt the budget
        state, total_steps = _continue(accelerator, state, cfg, steps_per_epoch, total_steps)

    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / run_files.CONFIG)
        if resume_from:  # epochs after the checkpoint will be run (and recorded) again
            keep_epoch_records(out_dir / run_files.METRICS, before=state.epoch)
    accelerator.init_trackers(run_files.LOGS, init_kwargs={"mlflow": {"run_name": out_dir.name},
                                                   "wandb": {"name": out_dir.name}})
    start_hparams(accelerator, cfg.hparams())  # settings + final val JM, speed, memory in the hparams tab
    panel_images = [(splits.val[i]["id"], *EvalImages(splits.val, with_hr=True, pixels=splits.pixels)[i][1:])
                    for i in range(min(cfg.panel_images, len(splits.val)))] if accelerator.is_main_process else []
    accelerator.print(
        f"insanesr-dist: {source}: {len(splits.train)} train / {len(splits.val)} val / "
        f"{len(splits.test) if splits.test is not None else 0} test images; model {count_parameters(model):,} "
        f"parameters; {accelerator.num_processes} process(es) on {accelerator.device.type}, "
        f"precision {accelerator.mixed_precision}; {epochs} epoch(s), {total_steps} steps -> {out_dir}"
        + (f"\nresuming from {resume_from} (epoch {state.epoch}, step {state.step})" if resume_from else "")
        + (f"; the run had finished: its budget grows from {extended_from} to {total_steps} steps, the learning rate "
           f"follows the {cfg.schedule} schedule of the new total from step {state.step}" if extended_from else "")
    )
    val_ids = list(splits.val["id"]) if "id" in splits.val.column_names else []
    accelerator.print(
        f"evaluation: validate every {cfg.val_every} epoch(s)"
        + (f" and {cfg.val_every_steps} steps" if cfg.val_every_steps else "")
        + f" and at the last, submission every {cfg.submit_every}"
        + (f" and {cfg.submit_every_steps} steps" if cfg.submit_every_steps else "") + "; "
        + (f"{len(splits.val)} of {val_count} val images (seeded subset: {', '.join(map(str, val_ids[:8]))}"
           f"{', ...' if len(val_ids) > 8 else ''})" if kept is not None else f"all {val_count} val images")
        + (f"; images with an LR edge over {cfg.val_tile} in tiles of {cfg.val_tile} (overlap {tile_overlap})"
           if cfg.val_tile else "; whole images (no tiles)"))

    def save(epoch: int, batches_done: int, loss_sum: torch.Tensor, passes: int, finished: bool = False) -> None:
        # Each rank holds its own running loss; the sum over ranks, shared out again on resume,
        # gives the same epoch mean.
        total_loss = accelerator.reduce(loss_sum.clone(), "sum").item()
        checkpoint.save_checkpoint(accelerator, out_dir, checkpoint.TrainState(
            epoch, batches_done, step, best_jm, total_loss, passes, finished, steps_per_epoch=steps_per_epoch,
            total_steps=total_steps, stale_validations=stale, stale_reference=stale_reference),
            keep=cfg.keep_checkpoints, ema=ema)

    def stop_for_preemption() -> typing.NoReturn:
        accelerator.print(f"preempted: checkpoint saved at step {step}; the same command resumes from it")
        if accelerator.is_main_process and preemption.wants_requeue:
            requeue_if_slurm(os.environ.get("SLURM_JOB_ID"), say=accelerator.print)
        # No rank exits before the requeue: a rank that left first would fail its node's launcher, and
        # `srun --kill-on-bad-exit=1` would end the step, rank 0 with its requeue still to do included.
        accelerator.wait_for_everyone()
        accelerator.end_training()
        sys.exit(PREEMPTED_EXIT_CODE)

    def due(every_steps: int) -> bool:  # --val-every-steps, --submit-every-steps
        return bool(every_steps) and step % every_steps == 0

    def evaluate(epoch: int, *, validating: bool, submitting: bool, submission: str) -> tuple[dict, bool, float]:
        """Score the validation set and/or write the submission `submission` with the current weights: every rank
        its shard, gathered everywhere; every rank takes the same decisions, so all call the collectives. Rank 0
        then writes the submission, latest.safetensors (with its scores when validated), best.safetensors when the
        JM improved, and the panels. Returns the scores ({} when not validating), whether they improved and the
        seconds it took."""
        nonlocal best_jm, stale, stale_reference, last_validation, last_submission
        eval_started = time.perf_counter()
        model.eval()
        evaluated = ema.module if ema is not None else accelerator.unwrap_model(model)
        forward = float32_forward(accelerator, evaluated)
        tiling = (cfg.val_tile, tile_overlap)
        scores = score_images(forward, val_dl, accelerator, *tiling) if validating else {}
        pngs = predict_pngs(forward, test_dl, accelerator, *tiling) if submitting and test_dl is not None else None
        improved = validating and scores["jm"] > best_jm
        if validating:
            best_jm = max(best_jm, scores["jm"])
            last_validation = step, scores
            if scores["jm"] > stale_reference + cfg.early_stop_min_delta:  # --early-stop-patience
                stale, stale_reference = 0, scores["jm"]
            else:
                stale += 1
        if pngs is not None:
            last_submission = step
        if accelerator.is_main_process:
            if pngs is not None:
                ids = splits.test["id"]
                write_submission(out_dir / run_files.SUBMISSIONS / submission, ((ids[i], pngs[i]) for i in range(len(ids))))
            # The scores of these weights: this call's, or a validation's at this same step (an early stop's CSV)
            shown = last_validation[1] if last_validation[0] == step else {}
            meta = {"epoch": epoch, "step": step, **{k: shown[k] for k in ("jm", "psnr", "ssim") if k in shown}}
            save_weights(evaluated, out_dir / run_files.LATEST, **meta)  # the EMA weights when EMA is on
            if improved:
                save_weights(evaluated, out_dir / run_files.BEST, **meta)
            if validating:
                log_panels(accelerator, forward, panel_images, step, *tiling)
        model.train()
        return scores, improved, time.perf_counter() - eval_started

    def out_of_patience() -> bool:
        return bool(cfg.early_stop_patience) and stale >= cfg.early_stop_patience

    step, best_jm = state.step, state.best_jm
    stale, stale_reference = state.stale_validations, state.stale_reference
    last_validation, last_submission = (-1, {}), -1  # the step of the latest of each, and its scores
    for epoch in range(state.epoch, epochs + 1):
        # ---- train (from the first batch not yet trained on, after a resume)
        model.train()
        started = time.perf_counter()
        skip = state.batches_done if epoch == state.epoch else 0
        steps_now = min(steps_per_epoch, total_steps - (epoch - 1) * steps_per_epoch)
        batches = (_stream_batches(train_dl, epoch, steps_now * cfg.grad_accum, skip) if cfg.streaming
                   else _epoch_batches(accelerator, train_dl, epoch, skip))
        bar = tqdm(total=steps_now, initial=skip // cfg.grad_accum, desc=f"epoch {epoch}/{epochs}", leave=False,
                   dynamic_ncols=True, disable=not accelerator.is_local_main_process)
        resumed = skip > 0
        loss_sum = torch.tensor(state.loss_sum / accelerator.num_processes if resumed else 0.0,
                                device=accelerator.device)
        passes = state.passes if resumed else 0
        batches_done = skip
        logged_at, passes_at_log = time.perf_counter(), passes
        data_wait = DataWait()
        waited_at_log = 0.0
        epoch_batches = steps_now * cfg.grad_accum if cfg.streaming else len(train_dl)
        mid_epoch_eval_seconds = 0.0
        for batch in data_wait(batches):
            lr_img, hr_img = _model_inputs(batch, accelerator.device, device_pairs, cfg.channels_last)
            with accelerator.accumulate(model):
                loss = training_loss(cfg.loss, cfg.ssim_weight, train_model(lr_img), hr_img)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, peak=cfg.lr, warmup=cfg.warmup_steps, total=total_steps,
                                        schedule=cfg.schedule)
                if accelerator.sync_gradients:  # non-finite gradients turn this step into a no-op (faults.py)
                    bad_steps.check(model.parameters())
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach().nan_to_num(0.0, 0.0, 0.0)  # a skipped step's NaN must not poison the mean
            passes += 1
            batches_done += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            if ema is not None:
                ema.update(accelerator.unwrap_model(model))
            bar.update()
            if cfg.compile and step == state.step + 1:
                accelerator.print(f"torch.compile: the first step took {time.perf_counter() - started:.1f} s "
                                  "(compilation included)")
            if step % cfg.log_every == 0:  # the only per-step host sync besides the preemption check
                loss_now = accelerator.reduce(loss.detach(), "mean").item()
                now = time.perf_counter()
                samples_per_s = ((passes - passes_at_log) * cfg.batch_size * accelerator.num_processes
                                 / (now - logged_at))
                wait_share = (data_wait.seconds - waited_at_log) / (now - logged_at)
                logged_at, passes_at_log, waited_at_log = now, passes, data_wait.seconds
                bar.set_postfix(loss=f"{loss_now:.6f}")
                accelerator.log({"train/loss": loss_now, "train/lr": optimizer.param_groups[0]["lr"],
                                 "perf/train_samples_per_s": samples_per_s, "perf/data_wait_fraction": wait_share},
                                step=step)
                bad_steps.read(step, accelerator.print)  # logs skipped steps; stops past --max-bad-steps
            if step >= total_steps:
                break  # --max-steps reached (mid-epoch)
            # --val-every-steps/--submit-every-steps before the epoch's last step (which the epoch end evaluates):
            # not in metrics.jsonl (a line per epoch), but in TensorBoard, the console, the weights and a CSV.
            mid_epoch = batches_done < epoch_batches
            validating, submitting = (mid_epoch and due(every) for every in (cfg.val_every_steps,
                                                                             cfg.submit_every_steps))
            if validating or submitting:
                scores, improved, took = evaluate(epoch, validating=validating, submitting=submitting,
                                                  submission=f"step_{step:07d}.csv")
                log_evaluation(accelerator, scores, step=step, epoch=epoch, seconds=took, improved=improved)
                mid_epoch_eval_seconds += took
                logged_at += took  # the next samples/s reading counts training time only
                if out_of_patience():
                    break  # the epoch end finishes the run
            stop = step % check_every == 0 and preemption.requested(accelerator)
            if stop or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or validating:
                save(epoch, batches_done, loss_sum, passes)
            if stop:
                bar.close()
                stop_for_preemption()
        bar.close()
        bad_steps.read(step, accelerator.print)  # before validation and any write of this epoch
        train_loss = accelerator.reduce(loss_sum / max(1, passes), "mean").item()
        seconds = time.perf_counter() - started - mid_epoch_eval_seconds

        # ---- validate and predict the test set (--val-every, --submit-every and their step forms): always at the
        # last epoch and at an early stop, which ends the run like the last epoch; stopped right after a mid-epoch
        # validation, its scores stand for this epoch's.
        final = epoch == epochs or out_of_patience()
        scores, improved, eval_seconds = evaluate(
            epoch, validating=(evaluates_at(epoch, cfg.val_every, epochs) or due(cfg.val_every_steps) or final)
            and last_validation[0] != step,
            submitting=(evaluates_at(epoch, cfg.submit_every, epochs) or due(cfg.submit_every_steps) or final)
            and last_submission != step,
            submission=f"epoch_{epoch:03d}.csv")
        if not final and out_of_patience():  # at this validation: the run ends here, with a CSV as the last epoch
            final = True
            eval_seconds += evaluate(epoch, validating=False, submitting=last_submission != step,
                                     submission=f"epoch_{epoch:03d}.csv")[2]
        scores = scores or (last_validation[1] if last_validation[0] == step else {})
        # A record without validation keys at epochs that skip it (see tracking.log_epoch).
        record = {"epoch": epoch, "step": step, "train_loss": train_loss, **scores, "seconds": seconds,
                  "samples_per_s": (passes - skip) * cfg.batch_size * accelerator.num_processes / seconds,
                  "data_wait_fraction": data_wait.seconds / seconds,
                  "eval_seconds": mid_epoch_eval_seconds + eval_seconds}
        log_epoch(accelerator, out_dir, record, epochs, improved)

        # ---- full state at every epoch end: a rerun continues with the next epoch
        save(epoch + 1, 0, torch.zeros((), device=accelerator.device), 0, finished=final)
        if final and epoch < epochs:
            accelerator.print(f"early stop: {stale} validation(s) without a JM above {stale_reference:.4f} + "
                              f"{cfg.early_stop_min_delta:g} (--early-stop-patience {cfg.early_stop_patience}); "
                              "the run is finished")
            break
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if epoch < epochs and preemption.requested(accelerator):
            stop_for_preemption()

    accelerator.print(f"done: best JM {best_jm:.4f}; weights, submissions and logs in {out_dir}")
    end_hparams(accelerator)
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


@click.command("train", cls=Command, context_settings={"max_content_width": 110})
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
