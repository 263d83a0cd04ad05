"""Which checkpoint a run continues from, and how: the choice (rank 0's, shared with every rank), the settings
that may change on the way, and the step budget the continuation keeps.

checkpoint.py reads and writes the checkpoints; this module decides what to do with them.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list

from insanesr_dist import run_files
from insanesr_dist.config import TrainConfig, saved_settings
from insanesr_dist.data.loaders import AUTO_CROPS_PER_DECODE
from insanesr_dist.errors import UserError
from insanesr_dist.training import checkpoint
from insanesr_dist.training.state import TrainState

# Settings that may change between an interrupted run and its continuation without changing the result.
RESUMABLE = {
    "resume",
    "output_dir",
    "num_workers",
    "cpu_threads",
    "log_every",
    "epochs",
    "max_steps",
    "checkpoint_every",
    "checkpoint_every_minutes",
    "keep_checkpoints",
    "max_bad_steps",
    "decoded_cache_mb",
    "worker_timeout",
    "dist_timeout",
    "shard_retries",
    "stream_lanes",
    "val_every",
    "submit_every",
    "val_every_steps",
    "submit_every_steps",
    "val_tile",
    "store_dir",
    "device_store",
    "init_from",
    "init_strict",
    "report_to",
}


def total_steps_of(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The run's step budget: --epochs of `steps_per_epoch`, or --max-steps when that ends it first."""
    return min(cfg.max_steps or sys.maxsize, cfg.epochs * steps_per_epoch)


def resume_point(cfg: TrainConfig, out_dir: Path, launch: PartialState) -> tuple[Path | None, TrainState]:
    """The checkpoint to continue from and its state, as rank 0 chose and read them.

    Only rank 0 looks (a lagging or per-node file system must not let ranks continue from different
    steps); the others receive its choice, or its error, and check they can read the chosen files.
    """
    choice: list = [None, None, None]  # checkpoint path, its TrainState as a dict, a UserError's message
    if launch.is_main_process:
        try:
            path = _choose_checkpoint(cfg, out_dir)
            choice = [str(path), checkpoint.read_state(path).state_dict(), None] if path else choice
        except UserError as e:
            choice = [None, None, e.message]  # every rank raises it: none may go on
    if launch.num_processes > 1:
        broadcast_object_list(choice, from_process=0)
    path, state, error = choice
    if error:
        raise UserError(error)
    if path is None:
        return None, TrainState()
    checkpoint.check_every_rank_can_read(launch, Path(path))
    return Path(path), TrainState.from_state_dict(state)


def _choose_checkpoint(cfg: TrainConfig, out_dir: Path) -> Path | None:
    """Rank 0: the checkpoint to continue from, refusing to overwrite a run it cannot continue."""
    resume_from = checkpoint.find_resume(cfg.resume, out_dir)
    if resume_from is None and (out_dir / run_files.METRICS).exists():
        raise UserError(
            f"{out_dir}: already holds a run with no complete checkpoint to resume from "
            "(--resume none never overwrites one); choose another --output-dir"
        )
    if resume_from is None:
        return None
    saved = json.loads((out_dir / run_files.CONFIG).read_text()) if (out_dir / run_files.CONFIG).is_file() else {}
    saved = saved_settings(saved)
    if "ema_decay" in saved and bool(saved["ema_decay"]) != bool(cfg.ema_decay):
        raise UserError(
            f"{out_dir}: cannot resume with --ema-decay {cfg.ema_decay}: the checkpoint was written "
            f"with --ema-decay {saved['ema_decay']}; use that, or another --output-dir"
        )
    changed = changed_settings(saved, cfg.to_dict())
    if changed:
        print(
            f"warning: resuming with changed settings ({', '.join(changed)}): the result will differ "
            "from an uninterrupted run"
        )
    return resume_from


def changed_settings(saved: dict, now: dict) -> list[str]:
    """The settings that alter the result and differ between a run's saved config and this command's, compared
    as the run uses them: a map-style run's --crops-per-decode 0 is AUTO_CROPS_PER_DECODE, which runs written
    before 0 existed saved as that number."""

    def used(values: dict) -> dict:
        if values.get("crops_per_decode") == 0 and not values.get("streaming"):
            return {**values, "crops_per_decode": AUTO_CROPS_PER_DECODE}
        return values

    saved, now = used(saved), used(now)
    return sorted(k for k, v in now.items() if k in saved and saved[k] != v and k not in RESUMABLE)


def budget_grew(cfg: TrainConfig, state: TrainState) -> bool:
    """Whether a finished run's checkpoint is given more steps than it had (--epochs, --max-steps): the run
    then goes on (an extension); else it has nothing left to do."""
    planned = total_steps_of(cfg, state.steps_per_epoch) if state.steps_per_epoch else 0
    return planned > state.total_steps


def continued(
    accelerator: Accelerator, state: TrainState, cfg: TrainConfig, steps_per_epoch: int, total_steps: int
) -> tuple[TrainState, int]:
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
            "from an uninterrupted run"
        )
    if state.precision and state.precision != accelerator.mixed_precision:
        accelerator.print(
            f"warning: resuming in precision {accelerator.mixed_precision}; the checkpoint was written "
            f"in {state.precision}: the result will differ from an uninterrupted run"
        )
    return dataclasses.replace(state, processes=accelerator.num_processes), total_steps
