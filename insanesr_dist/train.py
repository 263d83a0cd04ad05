"""Training: `accelerate launch -m insanesr_dist.train [options]` (also `insanesr-dist train`).

The entry: flags (one per TrainConfig field) -> `TrainConfig` -> `Trainer(cfg).train()` (trainer.py, the loop)
-> the failures a user can act on as one-line errors.
"""

from __future__ import annotations

import multiprocessing
import signal
from pathlib import Path

import click
from tqdm.auto import tqdm

from insanesr_dist.commands import Command
from insanesr_dist.config import TrainConfig, config_from_options, config_options
from insanesr_dist.data.loaders import start_worker_server
from insanesr_dist.errors import UserError
from insanesr_dist.trainer import Trainer
from insanesr_dist.training import faults
from insanesr_dist.training.preemption import PreemptionFlag
from insanesr_dist.training.runtime import stall_message


def train(cfg: TrainConfig, trainer_class: type[Trainer] = Trainer) -> Path:
    """Train with `cfg` (a `trainer_class` trainer: a subclass for tools and tests), continuing from the newest
    complete checkpoint when there is one; returns the run directory."""
    # The DataLoader workers' fork server first: starting it (and multiprocessing's resource tracker with it)
    # unblocks SIGTERM in this process, so the preemption flag's signal block must come after it. The server
    # itself keeps the stop signals blocked (see data/workers.py).
    if cfg.num_workers:
        start_worker_server(blocking=PreemptionFlag.SIGNALS)
    # Then, before any thread exists: threads inherit the signal block (and so do workers, see data/workers.py).
    preemption = PreemptionFlag()
    try:
        out_dir = trainer_class(cfg, preemption).train()
        _end_workers()
        return out_dir
    except BaseException as e:
        _end_workers()
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


def _end_workers() -> None:
    """DataLoader workers have SIGTERM blocked (see PreemptionFlag): the polite shutdown at interpreter exit
    would wait for any still running (a persistent loader's, or one whose loader is only freed by the garbage
    collector) forever. They hold nothing worth keeping. Without torch's SIGCHLD handler first, their deaths
    would be reported as failures (tracebacks) while exiting."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for worker in multiprocessing.active_children():
        worker.kill()


@click.command("train", cls=Command, context_settings={"max_content_width": 110})
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML or JSON file with the same settings; the command line overrides it.",
)
@config_options
@click.pass_context
def main(ctx: click.Context, config_file: str | None, **given) -> None:
    """Train InsaneSRNet: per-epoch validation (JM = 40*SSIM + PSNR), best/latest weights,
    submission CSVs and TensorBoard logs.

    \b
    Examples:
      accelerate launch -m insanesr_dist.train                      # demo data, a few minutes on a CPU
      accelerate launch -m insanesr_dist.train --data DIR --epochs 20 --output-dir runs/a
      accelerate launch --multi_gpu --num_processes 2 -m insanesr_dist.train --mixed-precision fp16
    """
    # `main(obj=SomeTrainer)`: a script runs its Trainer subclass behind the real command line.
    train(config_from_options(config_file, given), trainer_class=ctx.obj or Trainer)


if __name__ == "__main__":
    main()
