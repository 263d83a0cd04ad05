"""Full training state on disk: save, find the newest complete checkpoint, resume, prune, preempt.

A checkpoint is `OUT/checkpoints/step_NNNNNNNN/`: accelerate's `save_state` files (model, optimizer,
grad scaler, every rank's RNG states, sampler), the weight EMA as `ema.safetensors` + `ema.json`, our
`train_state.json` (training/state.py's TrainState: epoch, step, position in the epoch's batches, best JM, the
epoch's running loss, the stream's position, and the process count, precision and schedule it was written with),
and `COMPLETE`, written last by the main process once every rank has saved. `COMPLETE` lists each file's size, so
a truncated file is noticed too. Anything without a valid `COMPLETE` is ignored with a warning.

Nothing is unpickled on resume beyond what torch's `weights_only` loader allows (tensors, plain
containers, numbers, and the numpy arrays of the RNG states): the EMA is deliberately not an accelerate
"custom object", which accelerate would load with `weights_only=False`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from accelerate import Accelerator, PartialState
from accelerate.utils import gather_object
from accelerate.utils import load as accelerate_load
from safetensors.torch import load_file, save_file

from insanesr_dist import run_files
from insanesr_dist.atomic import write_text_atomic
from insanesr_dist.errors import UserError
from insanesr_dist.training.state import TrainState

MARKER = "COMPLETE"
STATE_FILE = "train_state.json"
EMA_WEIGHTS, EMA_COUNTERS = "ema.safetensors", "ema.json"
SCALER_FILE = "scaler.pt"  # accelerate's name for the GradScaler state (fp16 only)


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / run_files.CHECKPOINTS / f"step_{step:08d}"


def _is_complete(path: Path) -> str | None:
    """None when `path` is a complete checkpoint, else why not."""
    marker = path / MARKER
    if not marker.is_file():
        return "no COMPLETE marker (the save was interrupted)"
    try:
        sizes = json.loads(marker.read_text())
        json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as e:
        return f"unreadable ({e})"
    for name, size in sizes.items():
        actual = (path / name).stat().st_size if (path / name).is_file() else None
        if actual != size:
            return f"{name} is {'missing' if actual is None else f'{actual} bytes, expected {size}'}"
        try:  # present is not enough: another user's or a stale network mount's file may not open
            (path / name).open("rb").close()
        except OSError as e:
            return f"{name} cannot be read ({e.strerror or e})"
    return None


def complete_checkpoints(out_dir: Path, warn=print) -> list[Path]:
    """Complete checkpoints under OUT/checkpoints, oldest first; incomplete ones are reported."""
    root = out_dir / run_files.CHECKPOINTS
    found = []
    for path in sorted(root.glob("step_*")) if root.is_dir() else []:
        problem = _is_complete(path)
        if problem:
            warn(f"warning: skipping checkpoint {path}: {problem}")
        else:
            found.append(path)
    return found


def find_resume(resume: str, out_dir: Path, warn=print) -> Path | None:
    """The checkpoint to resume from: `auto` = newest complete one in OUT, `none`, or a path."""
    if resume == "none":
        return None
    if resume == "auto":
        found = complete_checkpoints(out_dir, warn)
        return found[-1] if found else None
    path = Path(resume)
    problem = _is_complete(path) if path.is_dir() else "not a directory"
    if problem:
        raise UserError(f"{path}: cannot resume from it: {problem}")
    return path


def read_state(path: Path) -> TrainState:
    return TrainState.from_state_dict(json.loads((path / STATE_FILE).read_text()))


def check_every_rank_can_read(launch: PartialState, path: Path) -> None:
    """Every rank continues from `path` (rank 0's choice): each checks it can read every file listed in
    COMPLETE, and all learn the outcome, so a rank that cannot fails on its own line and the others stop
    too instead of waiting for it in a collective. Every rank must call this."""
    problem = None if launch.is_main_process else _is_complete(path)  # rank 0 has just checked it
    problems = gather_object([problem]) if launch.num_processes > 1 else [problem]
    for rank, problem in enumerate(problems):
        if problem:
            raise UserError(
                f"{path}: rank {rank} cannot read this checkpoint, which rank 0 chose to resume "
                f"from: {problem}; every rank must see the run directory's files (a shared file system)"
            )


def _save_ema(ema, path: Path) -> None:
    """The EMA as safetensors (contiguous CPU copies: the module may be channels-last) and its counters as JSON."""
    weights = {k: v.detach().to("cpu").contiguous() for k, v in ema.module.state_dict().items()}
    save_file(weights, str(path / EMA_WEIGHTS))
    write_text_atomic(path / EMA_COUNTERS, json.dumps({"updates": ema.updates, "decay": ema.decay}))


def _load_ema(ema, path: Path) -> None:
    if not (path / EMA_WEIGHTS).is_file():
        raise UserError(
            f"{path}: the checkpoint holds no {EMA_WEIGHTS}, but this run has EMA on; "
            "resume with the --ema-decay it was written with, or use another --output-dir"
        )
    counters = json.loads((path / EMA_COUNTERS).read_text())
    ema.load_state_dict({**counters, "weights": load_file(str(path / EMA_WEIGHTS))})


def save_checkpoint(accelerator: Accelerator, out_dir: Path, state: TrainState, keep: int, ema=None) -> Path:
    """Every rank saves its part; the main process then writes the EMA and our state, marks the
    checkpoint complete and prunes.

    A rerun of an interrupted save starts the directory afresh, so stale files never mix in.
    """
    path = checkpoint_dir(out_dir, state.step)
    state = dataclasses.replace(state, processes=accelerator.num_processes, precision=accelerator.mixed_precision)
    if accelerator.is_main_process and path.exists():
        shutil.rmtree(path)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()  # every rank's files are on disk before the marker
    if accelerator.is_main_process:
        if ema is not None:  # the same on every rank (same weights, same updates): rank 0's copy is all of it
            _save_ema(ema, path)
        write_text_atomic(path / STATE_FILE, json.dumps(state.state_dict()))
        sizes = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}
        write_text_atomic(path / MARKER, json.dumps(sizes, indent=1))
        _prune(out_dir, keep)
    accelerator.wait_for_everyone()
    return path


def load_checkpoint(accelerator: Accelerator, path: Path, ema=None, say=print) -> None:
    """Every rank loads everything: weights, Adam moments, scaler, its own RNG states, and the EMA.

    accelerate would unpickle a custom object with `weights_only=False`; ours are never registered, and a
    checkpoint that has one (written by an older version) is refused rather than unpickled. A checkpoint
    written without fp16 has no GradScaler state, which accelerate's `load_state` insists on under fp16:
    the run starts a fresh scaler instead (what a new fp16 run does), and says so.
    """
    pickled = sorted(p.name for p in path.glob("custom_checkpoint_*.pkl"))
    if pickled:
        raise UserError(
            f"{path}: holds {', '.join(pickled)}, a pickled EMA state from an older insanesr-dist; "
            "it is not loaded, since unpickling can run code: resume with the version that wrote it, "
            "or start afresh in another --output-dir"
        )
    scaler = accelerator.scaler
    if scaler is not None and not (path / SCALER_FILE).is_file():
        say(f"note: {path} has no {SCALER_FILE} (it was not written in fp16): starting a fresh gradient scaler")
        accelerator.scaler = None  # only for the load: the optimizer keeps its own reference to the same scaler
    _check_random_states(path / f"random_states_{accelerator.process_index}.pkl", print)  # on the rank concerned
    try:  # weights_only is accelerate's default too; said here so that no version can quietly change it
        accelerator.load_state(str(path), load_kwargs={"weights_only": True})
    finally:
        accelerator.scaler = scaler
    if ema is not None:
        _load_ema(ema, path)


def _check_random_states(path: Path, say) -> None:
    """accelerate's load_state swallows any failure to load a rank's RNG states (an info-level log line)
    and goes on with the current ones, which quietly ends the bit-for-bit continuation: load them once
    here with the same weights_only loader, so that such a failure is at least said. A rank the checkpoint
    has none for (it was written by fewer processes) goes on with its seeded states, as the process-count
    warning says."""
    if not path.is_file():
        return
    try:
        accelerate_load(path)
    except Exception as e:
        say(
            f"warning: {path}: cannot load this rank's random states ({str(e).splitlines()[0]}); it continues "
            "with other ones: the result will differ from an uninterrupted run"
        )


def for_processes(state: TrainState, processes: int) -> TrainState:
    """`state` as `processes` ranks continue it. The seeded sampler deals the epoch's global batches out to the
    ranks in turn, so M ranks that each trained on b batches have used the first b*M of them: N ranks skip
    b*M/N each (rounded down: at most one batch per rank is trained on again) and count their loss batches alike,
    which keeps the running loss's mean (the sum over ranks is shared out again)."""
    if not state.processes or state.processes == processes:
        return state
    return dataclasses.replace(
        state,
        batches_done=state.batches_done * state.processes // processes,
        loss_batches=state.loss_batches * state.processes // processes,
        processes=processes,
    )


def _prune(out_dir: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints (never fewer than one); drop older leftovers."""
    complete = complete_checkpoints(out_dir, warn=lambda _: None)
    for path in complete[: -max(1, keep)]:
        shutil.rmtree(path, ignore_errors=True)
    newest = complete[-1].name if complete else ""
    for path in (out_dir / run_files.CHECKPOINTS).glob("step_*"):
        if path.name < newest and not (path / MARKER).is_file():
            shutil.rmtree(path, ignore_errors=True)  # an interrupted save older than a complete one
