"""The training loop as an object: `Trainer(cfg).train()`.

`Trainer(cfg)` sets the run up: the processes, the checkpoint it continues, the data, the model, the optimizer.
`train()` then runs `train_epoch()` per epoch, whose batches each go through `train_step()`, with `evaluate()`
(validation, the submission, latest/best weights) and `save()` (a full checkpoint) where they are due; `end_epoch()`
records the epoch. `state` (training/state.py) is where the run stands: the same record the loop counts in and a
checkpoint holds. Every rank runs every collective, so every rank takes every decision that leads to one.

Tools and tests subclass it: `loss()` is the training objective, `train_step()` one batch; `train.train(cfg,
trainer_class=...)` runs a subclass behind the real command's error handling.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import typing
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.utils import broadcast_object_list, gather_object, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from insanesr_dist import run_files
from insanesr_dist.config import TrainConfig, save_config
from insanesr_dist.data import sources, stream
from insanesr_dist.data.batches import EpochBatches, StreamBatches, device_pairs, model_inputs
from insanesr_dist.data.crops import DevicePlans
from insanesr_dist.data.demo import ensure_demo_data
from insanesr_dist.data.loaders import EvalImages, eval_loader, train_loader
from insanesr_dist.data.splits import Splits, check_patch_size, load_splits, val_subset
from insanesr_dist.inference.forward import float32_forward
from insanesr_dist.inference.sharded import predict_pngs
from insanesr_dist.inference.tiles import exact_overlap, upscale_for_eval
from insanesr_dist.model import weights
from insanesr_dist.model.architecture import InsaneSRNet, count_parameters
from insanesr_dist.model.files import read_metadata, save_weights
from insanesr_dist.scoring.submission import write_submission
from insanesr_dist.scoring.validation import score_images
from insanesr_dist.training import checkpoint, faults
from insanesr_dist.training.cadence import StepChecks, due, evaluates_at
from insanesr_dist.training.ema import WeightEMA
from insanesr_dist.training.host_memory import keep_freed_memory
from insanesr_dist.training.losses import training_loss
from insanesr_dist.training.meters import DataWait, Interval
from insanesr_dist.training.optimizer import lr_at, make_optimizer
from insanesr_dist.training.precision import resolve_precision
from insanesr_dist.training.preemption import PREEMPTED_EXIT_CODE, PreemptionFlag, requeue_if_slurm
from insanesr_dist.training.resume import budget_grew, continued, resume_point, total_steps_of
from insanesr_dist.training.runtime import cores_per_local_process, start_processes
from insanesr_dist.training.tracking import (
    end_hparams,
    keep_epoch_records,
    log_epoch,
    log_evaluation,
    log_panels,
    start_hparams,
    trackers,
)


class Trainer:
    """One training run of `cfg`, continuing from the newest complete checkpoint when there is one.

    `preemption` is the flag SLURM's warning signal sets; it must exist before any thread does (see
    training/preemption.py), so the entry point makes it first.
    """

    def __init__(self, cfg: TrainConfig, preemption: PreemptionFlag) -> None:
        self.cfg, self.preemption = cfg, preemption
        launch = start_processes(cfg.dist_timeout)
        self.out_dir = _agree_on_output_dir(launch, cfg.output_dir)
        resume_from, self.state = resume_point(cfg, self.out_dir, launch)
        extended_from = 0  # a finished run given a larger budget: the total it had
        self.already_finished = self.state.finished and not budget_grew(cfg, self.state)
        if self.already_finished:
            if launch.is_main_process:
                print(f"{self.out_dir}: this run already finished (step {self.state.step}); nothing to do")
            return
        if self.state.finished:
            extended_from, self.state.finished = self.state.total_steps, False
        self._set_up(launch, resume_from, extended_from)

    # -----------------------------------------------------------------------------------------------------------
    # Set-up

    def _set_up(self, launch: PartialState, resume_from: Path | None, extended_from: int) -> None:
        """Everything the loop needs, in the order that makes a seed reproduce a run: the accelerator and seed,
        the data, the model's initial weights, the optimizer and EMA, the checkpoint's state; then the run
        directory's config, trackers and the plan's lines."""
        cfg = self.cfg
        self.accelerator = accelerator = self._accelerator(launch)
        splits, val_count, kept = self.load_data()
        # Tiles then equal the whole image up to float rounding (inference/tiles.py).
        self.tile_overlap = exact_overlap(cfg.model)
        val_dl, test_dl, train_dl = self._loaders(splits)

        # ---- model and optimizer (Adam, as the seed); the learning rate is set per step by lr_at
        model = build_model(cfg)
        if cfg.init_from and not resume_from:  # a resumed run continues from its checkpoint's weights
            self.cfg = cfg = _start_from(model, cfg, accelerator.print)
        optimizer = make_optimizer(model.parameters(), cfg.lr, cfg.adam_beta2)  # fused: skips a bad step in-kernel
        # EMA (--ema-decay): a float32 copy outside accelerate's wrappers; it is what gets validated and saved,
        # and its state is part of every checkpoint.
        self.ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay else None
        eval_dls = [val_dl] if test_dl is None else [val_dl, test_dl]
        if cfg.streaming:  # not prepared: the stream is already this rank's share
            model, optimizer, *eval_dls = accelerator.prepare(model, optimizer, *eval_dls)
        else:
            model, optimizer, train_dl, *eval_dls = accelerator.prepare(model, optimizer, train_dl, *eval_dls)
        self.model, self.optimizer = model, optimizer  # as prepared: evaluation, EMA and saving use `model`
        self.val_dl, self.test_dl = eval_dls[0], eval_dls[1] if len(eval_dls) > 1 else None
        self.test_ids = splits.test["id"] if splits.test is not None else None
        if self.ema is not None:  # saved and loaded by training/checkpoint.py, as safetensors: never pickled
            self.ema.module.to(accelerator.device)
        self.bad_steps = faults.BadSteps(accelerator, optimizer, cfg.max_bad_steps)  # non-finite steps, fp16's skips
        if cfg.compile:  # inductor's default is a compile worker per core for every rank: share the cores instead
            torch._inductor.config.compile_threads = cfg.cpu_threads or cores_per_local_process(
                accelerator.num_processes
            )
        if resume_from:  # weights, Adam moments, scaler, every rank's RNG, the EMA
            checkpoint.load_checkpoint(accelerator, resume_from, self.ema, say=accelerator.print)

        if cfg.streaming:
            stream_steps = (
                math.ceil(cfg.epoch_samples / (cfg.batch_size * accelerator.num_processes * cfg.grad_accum))
                if cfg.epoch_samples
                else math.ceil(cfg.max_steps / cfg.epochs)
            )
            self.batches = StreamBatches(train_dl, grad_accum=cfg.grad_accum, steps_per_epoch=stream_steps)
        else:
            self.batches = EpochBatches(
                train_dl, grad_accum=cfg.grad_accum, skip_first_batches=accelerator.skip_first_batches
            )
        self.steps_per_epoch = self.batches.steps_per_epoch
        self.total_steps = total_steps_of(cfg, self.steps_per_epoch)
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        if resume_from:  # another process count or precision than the checkpoint's: say so, adapt the budget
            self.state, self.total_steps = continued(
                accelerator, self.state, cfg, self.steps_per_epoch, self.total_steps
            )
        self.state.steps_per_epoch, self.state.total_steps = self.steps_per_epoch, self.total_steps
        # Training runs through the compiled module; evaluation, EMA and saving use `model` itself.
        self.train_model = torch.compile(model) if cfg.compile else model
        self.first_step = self.state.step  # the step this process started from
        # When every rank reads the preemption flag and the checkpoint timer
        self.checks = StepChecks(
            every_step=accelerator.device.type != "cuda",
            checkpoint_minutes=cfg.checkpoint_every_minutes,
            step=self.state.step,
        )

        if accelerator.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out_dir / run_files.CONFIG)
            if resume_from:  # epochs after the checkpoint will be run (and recorded) again
                keep_epoch_records(self.out_dir / run_files.METRICS, before=self.state.epoch)
        accelerator.init_trackers(
            run_files.LOGS,
            init_kwargs={"mlflow": {"run_name": self.out_dir.name}, "wandb": {"name": self.out_dir.name}},
        )
        start_hparams(accelerator, cfg.hparams())  # settings + final val JM, speed, memory in the hparams tab
        self.panel_images = []  # (id, LR, HR) of the fixed validation images shown as panels; main process only
        if accelerator.is_main_process:
            images = EvalImages(splits.val, with_hr=True, pixels=splits.pixels)
            self.panel_images = [
                (splits.val[i]["id"], *images[i][1:]) for i in range(min(cfg.panel_images, len(splits.val)))
            ]
        self._say_plan(splits, val_count, kept, resume_from, extended_from)

    def _accelerator(self, launch: PartialState) -> Accelerator:
        """The accelerator in the precision to train in, this process's CPU threads, and the seed set."""
        cfg, cpu = self.cfg, launch.device.type == "cpu"
        precision, precision_note = resolve_precision(cfg.mixed_precision, cpu=cpu)
        accelerator = Accelerator(
            cpu=cpu,
            mixed_precision=precision,
            gradient_accumulation_steps=cfg.grad_accum,
            log_with=trackers(cfg.report_to),
            project_dir=str(self.out_dir),
            # non_blocking: the DataLoader pins the workers' batches (loaders.WindowBatch), so their copies to the
            # GPU overlap the step instead of syncing it.
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

    def load_data(self) -> tuple[Splits, int, list[int] | None]:
        """The splits (validation cut to --val-max-images), the validation set's full size, and the rows kept."""
        cfg, accelerator = self.cfg, self.accelerator
        given = sources.given_folders(cfg.to_dict())
        data = cfg.data or (None if given["train_hr"] or given["train_lr"] else str(ensure_demo_data()))
        columns = (cfg.lr_column, cfg.hr_column, cfg.id_column)
        # The main process builds the dataset caches first, the others reuse them.
        with accelerator.main_process_first():
            if cfg.streaming:  # read as the steps need it: only validation and test are loaded here
                self.streaming = stream.open_streaming(
                    data,
                    patch_size=cfg.patch_size,
                    batch_size=cfg.batch_size,
                    seed=cfg.seed,
                    val_size=cfg.val_size,
                    crops_per_decode=cfg.crops_per_decode,
                    shuffle_crops=cfg.shuffle_crops,
                    lanes=cfg.stream_lanes,
                    on_bad_sample=cfg.on_bad_sample,
                    retries=cfg.shard_retries,
                    scale=cfg.scale,
                    columns=columns,
                    folders=given,
                    lr_from_hr=cfg.lr_from_hr,
                    say=accelerator.print,
                )
                splits = self.streaming.splits
            else:
                splits = load_splits(
                    data,
                    val_fraction=cfg.val_fraction,
                    seed=cfg.seed,
                    scale=cfg.scale,
                    on_bad_sample=cfg.on_bad_sample,
                    patch_size=cfg.patch_size,
                    store_dir=cfg.store_dir,
                    store_gb=cfg.store_gb,
                    columns=columns,
                    folders=given,
                    lr_from_hr=cfg.lr_from_hr,
                    say=accelerator.print,
                )
        if splits.train is not None:
            check_patch_size(splits.train, cfg.patch_size, cfg.batch_size, splits.source)
        val_count = len(splits.val)
        kept = val_subset(val_count, cfg.val_max_images, cfg.seed)
        if kept is not None:  # the same rows on every rank: the split and the permutation are both seeded
            splits = dataclasses.replace(splits, val=splits.val.select(kept))
        return splits, val_count, kept

    def _loaders(self, splits: Splits) -> tuple[DataLoader, DataLoader | None, DataLoader | stream.StreamLoader]:
        """The validation and test loaders, and the training loader: a stream's, the device store's plans (the
        store itself becomes `device_pairs`), or the workers' crops."""
        cfg, accelerator = self.cfg, self.accelerator
        workers = dict(num_workers=cfg.num_workers, timeout=cfg.worker_timeout)
        val_dl = eval_loader(splits.val, with_hr=True, pixels=splits.pixels, **workers)
        test_dl = eval_loader(splits.test, with_hr=False, **workers) if splits.test is not None else None
        self.device_pairs, device_note = device_pairs(
            cfg.device_store,
            splits.train,
            splits.pixels,
            streaming=cfg.streaming,
            patch=cfg.patch_size,
            scale=cfg.scale,
            seed=cfg.seed,
            device=accelerator.device,
        )
        accelerator.print(device_note)
        if cfg.streaming:  # this rank's share, from the saved position when resuming
            train_dl = self.streaming.train_loader(
                rank=accelerator.process_index,
                world_size=accelerator.num_processes,
                num_workers=cfg.num_workers,
                state=self.state.stream,
                timeout=cfg.worker_timeout,
                say=_stream_lines(accelerator),
            )
        elif self.device_pairs is not None:  # the loader only plans: the crops are cut on the device
            plans = DevicePlans(self.device_pairs, length=cfg.epoch_samples)
            train_dl = DataLoader(
                plans, batch_size=cfg.batch_size, shuffle=True, drop_last=len(plans) >= cfg.batch_size
            )
        else:
            train_dl = train_loader(
                splits.train,
                batch_size=cfg.batch_size,
                cache_mb=cfg.decoded_cache_mb,
                pixels=splits.pixels,
                crops_per_decode=cfg.crops_per_decode,
                epoch_samples=cfg.epoch_samples,
                patch_size=cfg.patch_size,
                scale=cfg.scale,
                seed=cfg.seed,
                **workers,
            )
        return val_dl, test_dl, train_dl

    def _say_plan(
        self, splits: Splits, val_count: int, kept: list[int] | None, resume_from: Path | None, extended_from: int
    ) -> None:
        """The run's two opening lines: what it trains on, with what, for how long; and how it evaluates."""
        cfg, accelerator, state = self.cfg, self.accelerator, self.state
        accelerator.print(
            f"insanesr-dist: {splits.source}: {'streamed' if splits.train is None else len(splits.train)} train / "
            f"{len(splits.val)} val / "
            f"{len(splits.test) if splits.test is not None else 0} test images; model "
            f"{count_parameters(self.model):,} parameters; {accelerator.num_processes} process(es) on "
            f"{accelerator.device.type}, precision {accelerator.mixed_precision}; {self.epochs} epoch(s), "
            f"{self.total_steps} steps -> {self.out_dir}"
            + (f"\nresuming from {resume_from} (epoch {state.epoch}, step {state.step})" if resume_from else "")
            + (
                f"; the run had finished: its budget grows from {extended_from} to {self.total_steps} steps, the "
                f"learning rate follows the {cfg.schedule} schedule of the new total from step {state.step}"
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
                f"; images with an LR edge over {cfg.val_tile} in tiles of {cfg.val_tile} (overlap {self.tile_overlap})"
                if cfg.val_tile
                else "; whole images (no tiles)"
            )
        )

    # -----------------------------------------------------------------------------------------------------------
    # The loop

    def train(self) -> Path:
        """Every epoch from the one in progress to the last (or an early stop); returns the run directory."""
        if self.already_finished:
            return self.out_dir
        while self.state.epoch <= self.epochs:
            if self.end_epoch(self.train_epoch()):
                break
        self.accelerator.print(
            f"done: best JM {self.state.best_jm:.4f}; weights, submissions and logs in {self.out_dir}"
        )
        if isinstance(self.batches, StreamBatches):
            self.batches.close()
        end_hparams(self.accelerator)
        self.accelerator.end_training()
        return self.out_dir

    def train_epoch(self) -> dict:
        """The epoch's optimizer steps, from its first batch not yet trained on (a resumed run goes on where its
        checkpoint stood), with the mid-epoch evaluations, checkpoints and preemption checks between them;
        returns the epoch's training figures for its record."""
        cfg, accelerator, state = self.cfg, self.accelerator, self.state
        epoch, skip = state.epoch, state.batches_done  # skip: trained on before an interruption
        self.model.train()
        started = time.perf_counter()
        steps = min(self.steps_per_epoch, self.total_steps - (epoch - 1) * self.steps_per_epoch)  # --max-steps
        batches, epoch_batches = self.batches.of_epoch(epoch, skip, steps)
        bar = tqdm(
            total=steps,
            initial=skip // cfg.grad_accum,
            desc=f"epoch {epoch}/{self.epochs}",
            leave=False,
            dynamic_ncols=True,
            disable=not accelerator.is_local_main_process,
        )
        # The epoch's running loss, this rank's sum on the device (no sync per step); after an interruption,
        # the sum over the ranks that was saved, shared out again (the mean over ranks is the same).
        self.epoch_loss = torch.tensor(
            state.loss_sum / accelerator.num_processes if skip else 0.0, device=accelerator.device
        )
        if not skip:
            state.loss_batches = 0
        data_wait = DataWait()
        samples_per_batch = cfg.batch_size * accelerator.num_processes
        since_log = Interval(data_wait, state.loss_batches, samples_per_batch=samples_per_batch)
        eval_seconds = 0.0  # mid-epoch evaluations: not training time
        for batch in data_wait(batches):
            loss = self.train_step(batch)
            self.epoch_loss += loss.detach().nan_to_num(0.0, 0.0, 0.0)  # a skipped step's NaN must not poison it
            state.loss_batches += 1
            state.batches_done += 1
            if not accelerator.sync_gradients:
                continue  # within a gradient accumulation: no optimizer step yet
            bar.update()
            if cfg.compile and state.step == self.first_step + 1:
                _synchronize(accelerator.device)  # else the time is how long the host took to queue the step
                accelerator.print(
                    f"torch.compile: the first step took {time.perf_counter() - started:.1f} s (compilation included)"
                )
            if state.step % cfg.log_every == 0:  # the only per-step host sync besides the step checks
                self._log_step(loss, bar, since_log)
            if state.step >= self.total_steps:
                break  # --max-steps reached (mid-epoch)
            # --val-every-steps/--submit-every-steps before the epoch's last step (which the epoch end
            # evaluates): not in metrics.jsonl (a line per epoch), but in TensorBoard, the console, the weights
            # and a CSV.
            mid_epoch = state.batches_done < epoch_batches
            validating, submitting = (
                mid_epoch and due(state.step, every) for every in (cfg.val_every_steps, cfg.submit_every_steps)
            )
            if validating or submitting:
                scores, improved, took = self.evaluate(
                    validating=validating, submitting=submitting, submission=f"step_{state.step:07d}.csv"
                )
                log_evaluation(accelerator, scores, step=state.step, epoch=epoch, seconds=took, improved=improved)
                eval_seconds += took
                since_log.leave_out(took)  # the next samples/s reading counts training time only
                if state.out_of_patience(cfg.early_stop_patience):
                    break  # the epoch end finishes the run
            stop, timer_expired = (
                self.checks.read(accelerator, self.preemption, state.step)
                if self.checks.due(state.step)
                else (False, False)
            )
            if stop or timer_expired or due(state.step, cfg.checkpoint_every) or validating:
                self.save()
            if stop:
                bar.close()
                self._stop_for_preemption()
        bar.close()
        self.bad_steps.read(state.step, accelerator.print)  # before validation and any write of this epoch
        train_loss = accelerator.reduce(self.epoch_loss / max(1, state.loss_batches), "mean").item()
        seconds = time.perf_counter() - started - eval_seconds
        return {
            # the step budget (--max-steps) ended inside the epoch: its checkpoint keeps the epoch's place, so
            # that a larger budget goes on from there rather than from the next epoch
            "cut_short": state.step >= self.total_steps and state.batches_done < epoch_batches,
            "train_loss": train_loss,
            "seconds": seconds,
            "samples_per_s": (state.loss_batches - skip) * samples_per_batch / seconds,
            "data_wait_fraction": data_wait.seconds / seconds,
            "mid_epoch_eval_seconds": eval_seconds,
        }

    def train_step(self, batch) -> torch.Tensor:
        """One batch: forward and backward, then, at the end of a gradient accumulation (accelerate decides), the
        optimizer step at the learning rate of its step, the EMA's update and the step's count. Returns the
        batch's loss, on the device."""
        cfg, accelerator, model, optimizer = self.cfg, self.accelerator, self.model, self.optimizer
        lr_img, hr_img = model_inputs(batch, accelerator.device, self.device_pairs, cfg.channels_last)
        with accelerator.accumulate(model):
            loss = self.loss(self.train_model(lr_img), hr_img)
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(
                    self.state.step, peak=cfg.lr, warmup=cfg.warmup_steps, total=self.total_steps, schedule=cfg.schedule
                )
            if accelerator.sync_gradients:  # non-finite gradients turn this step into a no-op (training/faults.py)
                self.bad_steps.check(model.parameters())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if accelerator.sync_gradients:
            self.state.step += 1
            if self.ema is not None:
                self.ema.update(accelerator.unwrap_model(model))
        return loss

    def loss(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """The training objective of a batch's super-resolved images against their HR (--loss, --ssim-weight)."""
        return training_loss(self.cfg.loss, self.cfg.ssim_weight, sr, hr)

    def _log_step(self, loss: torch.Tensor, bar, interval: Interval) -> None:
        """Every --log-every steps: the loss (a reduction and a host sync), learning rate and speed; skipped steps."""
        accelerator, step = self.accelerator, self.state.step
        loss_now = accelerator.reduce(loss.detach(), "mean").item()
        # Read after the sync: the steps counted have then run, not only been queued.
        samples_per_s, wait_share = interval.rates(self.state.loss_batches)
        bar.set_postfix(loss=f"{loss_now:.6f}")
        accelerator.log(
            {
                "train/loss": loss_now,
                "train/lr": self.optimizer.param_groups[0]["lr"],
                "perf/train_samples_per_s": samples_per_s,
                "perf/data_wait_fraction": wait_share,
            },
            step=step,
        )
        self.bad_steps.read(step, accelerator.print)  # logs skipped steps; stops past --max-bad-steps

    def end_epoch(self, trained: dict) -> bool:
        """Validate and predict the test set as due, record the epoch (metrics.jsonl, TensorBoard, its line) and,
        when due, save its full state, from which a rerun continues with the next epoch (within this one when the
        step budget cut it short). Returns whether the run ends here (its last epoch or an early stop)."""
        cfg, accelerator, state = self.cfg, self.accelerator, self.state
        epoch = state.epoch
        stop, timer_expired = self.checks.read(accelerator, self.preemption, state.step)
        # Due at --val-every, --submit-every and their step forms, and always at the last epoch and at an early
        # stop, which ends the run like the last epoch; stopped right after a mid-epoch validation, its scores
        # stand for this epoch's.
        final = epoch == self.epochs or state.out_of_patience(cfg.early_stop_patience)
        validating = evaluates_at(epoch, cfg.val_every, self.epochs) or due(state.step, cfg.val_every_steps) or final
        submitting = (
            evaluates_at(epoch, cfg.submit_every, self.epochs) or due(state.step, cfg.submit_every_steps) or final
        )
        checkpointing = final or stop or self._checkpoint_due_at_epoch_end(timer_expired)
        scores, improved, eval_seconds = {}, False, 0.0
        if validating or submitting or checkpointing:  # latest.safetensors goes with each of them
            scores, improved, eval_seconds = self.evaluate(
                validating=validating and state.last_validation[0] != state.step,
                submitting=submitting and state.last_submission != state.step,
                submission=f"epoch_{epoch:03d}.csv",
            )
        if not final and state.out_of_patience(cfg.early_stop_patience):  # the run ends here, a CSV as its last
            final = True
            eval_seconds += self.evaluate(
                validating=False,
                submitting=state.last_submission != state.step,
                submission=f"epoch_{epoch:03d}.csv",
            )[2]
        # A record without validation keys at epochs that skip it (see tracking.log_epoch).
        record = {
            "epoch": epoch,
            "step": state.step,
            "train_loss": trained["train_loss"],
            **(scores or state.scores_now()),
            "seconds": trained["seconds"],
            "samples_per_s": trained["samples_per_s"],
            "data_wait_fraction": trained["data_wait_fraction"],
            "eval_seconds": trained["mid_epoch_eval_seconds"] + eval_seconds,
        }
        if cfg.streaming:  # pairs and shards left out so far (--on-bad-sample skip), over every rank's lanes
            problems = self.batches.loader.problems
            counts = torch.tensor([problems["bad"], problems["unreadable"]], device=accelerator.device)
            record["skipped_pairs"], record["skipped_shards"] = accelerator.reduce(counts, "sum").tolist()
        log_epoch(accelerator, self.out_dir, record, self.epochs, improved)

        if not trained["cut_short"]:
            state.next_epoch()
            self.epoch_loss.zero_()
        if checkpointing or final:
            self.save(finished=final)
        if final and epoch < self.epochs:
            accelerator.print(
                f"early stop: {state.stale_validations} validation(s) without a JM above "
                f"{state.stale_reference:.4f} + {cfg.early_stop_min_delta:g} (--early-stop-patience "
                f"{cfg.early_stop_patience}); the run is finished"
            )
            return True
        if epoch < self.epochs and stop:
            self._stop_for_preemption()
        return final

    def _checkpoint_due_at_epoch_end(self, timer_expired: bool) -> bool:
        """Without a cadence every epoch end saves; with --checkpoint-every (steps) or --checkpoint-every-minutes
        an epoch end saves only when one is due, so that short epochs (many GPUs, a small set) are not mostly
        saving."""
        cfg = self.cfg
        if not (cfg.checkpoint_every or cfg.checkpoint_every_minutes):
            return True
        steps_since = self.state.step - self.state.last_checkpoint
        return timer_expired or (bool(cfg.checkpoint_every) and steps_since >= cfg.checkpoint_every)

    # -----------------------------------------------------------------------------------------------------------
    # Evaluation and saving

    def evaluate(self, *, validating: bool, submitting: bool, submission: str) -> tuple[dict, bool, float]:
        """Score the validation set and/or write the submission `submission` with the current weights: every rank
        its shard, gathered everywhere; every rank takes the same decisions, so all call the collectives. Rank 0
        then writes the submission, latest.safetensors (with its scores when validated), best.safetensors when the
        JM improved, and the panels. Returns the scores ({} when not validating), whether they improved and the
        seconds it took."""
        cfg, accelerator, state = self.cfg, self.accelerator, self.state
        eval_started = time.perf_counter()
        self.model.eval()
        evaluated = self.ema.module if self.ema is not None else accelerator.unwrap_model(self.model)
        forward = float32_forward(accelerator, evaluated)
        tiling = (cfg.val_tile, self.tile_overlap)
        scores = score_images(forward, self.val_dl, accelerator, *tiling) if validating else {}
        pngs = (
            predict_pngs(forward, self.test_dl, accelerator, *tiling)
            if submitting and self.test_dl is not None
            else None
        )
        improved = validating and state.validated(scores, cfg.early_stop_min_delta)
        if pngs is not None:
            state.last_submission = state.step
        if accelerator.is_main_process:
            if pngs is not None:
                ids = self.test_ids
                write_submission(
                    self.out_dir / run_files.SUBMISSIONS / submission, ((ids[i], pngs[i]) for i in range(len(ids)))
                )
            # The scores of these weights: this call's, or a validation's at this same step (an early stop's CSV)
            shown = state.scores_now()
            meta = {
                "epoch": state.epoch,
                "step": state.step,
                **{k: shown[k] for k in ("jm", "psnr", "ssim") if k in shown},
            }
            save_weights(evaluated, self.out_dir / run_files.LATEST, **meta)  # the EMA weights when EMA is on
            if improved:
                save_weights(evaluated, self.out_dir / run_files.BEST, **meta)
            if validating and self.panel_images:
                log_panels(accelerator, self._panels(forward), state.step)
        if (validating or submitting) and torch.cuda.is_available():
            torch.cuda.empty_cache()  # whole images' activations: give them back rather than keep them cached
        self.model.train()
        return scores, improved, time.perf_counter() - eval_started

    def _panels(self, forward):
        """The fixed validation images with their SR, upscaled as validation does it (in tiles above --val-tile),
        one at a time: (id, LR, SR, HR), LR and SR on the device."""
        for image_id, lr, hr in self.panel_images:
            lr = lr.to(self.accelerator.device)
            yield image_id, lr, upscale_for_eval(forward, lr, tile=self.cfg.val_tile, overlap=self.tile_overlap), hr

    def save(self, finished: bool = False) -> None:
        """A full checkpoint: accelerate's state (weights, optimizer, scaler, RNGs), the EMA and `state`, from
        which the loop continues at the next batch."""
        # Each rank holds its own running loss; the sum over ranks, shared out again on resume, gives the same mean.
        self.state.loss_sum = self.accelerator.reduce(self.epoch_loss.clone(), "sum").item()
        self.state.finished = finished
        if self.cfg.streaming:  # every rank's lanes, after the same number of batches on each
            self.state.stream = stream.merge_states(gather_object([self.batches.loader.state_dict()]))
        checkpoint.save_checkpoint(
            self.accelerator, self.out_dir, self.state, keep=self.cfg.keep_checkpoints, ema=self.ema
        )
        self.state.last_checkpoint = self.state.step
        self.checks.saved()

    def _stop_for_preemption(self) -> typing.NoReturn:
        accelerator = self.accelerator
        accelerator.print(f"preempted: checkpoint saved at step {self.state.step}; the same command resumes from it")
        if accelerator.is_main_process and self.preemption.wants_requeue:
            requeue_if_slurm(os.environ.get("SLURM_JOB_ID"), say=accelerator.print)
        # No rank exits before the requeue: a rank that left first would fail its node's launcher, and
        # `srun --kill-on-bad-exit=1` would end the step, rank 0 with its requeue still to do included.
        accelerator.wait_for_everyone()
        accelerator.end_training()
        sys.exit(PREEMPTED_EXIT_CODE)


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


def _stream_lines(accelerator: Accelerator):
    """How the stream says its lines: its plan once (every rank's is the same), and the pairs each rank skips from
    every rank, since each reads other shards."""

    def say(line: str) -> None:
        if accelerator.is_main_process:
            print(line)
        elif line.startswith(("skipping", "more bad pairs")):
            print(f"rank {accelerator.process_index}: {line}")

    return say


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on a CPU, where every op is synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
