"""Where a training run stands besides its weights: one record, which the loop updates and a checkpoint holds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# In memory only: what this process has done since it started, which a resumed run starts afresh.
_NOT_SAVED = {"saved": False}

# Names older checkpoints wrote (train_state.json), and the field each one is now.
_FORMER_NAMES = {"passes": "loss_batches"}


@dataclass
class TrainState:
    """The optimizer steps taken, the epoch in progress and its counters, the best JM, the early stop's count,
    the stream's position; `state_dict()` is what a checkpoint holds (with accelerate's state it is enough to
    continue bit-for-bit), `load_state_dict()` reads it back, from checkpoints of earlier versions too."""

    epoch: int = 1  # the epoch in progress (1-based)
    batches_done: int = 0  # batches of that epoch already trained on
    step: int = 0  # optimizer steps taken
    best_jm: float = float("-inf")
    loss_sum: float = 0.0  # the epoch's running loss over its batches so far, summed over the ranks (at a save)
    loss_batches: int = 0  # this rank's batches summed in loss_sum
    finished: bool = False
    # How the checkpoint was written (0 / "" in checkpoints from before they were recorded): a resume
    # under other values continues, but not as the uninterrupted run would have, and says so.
    processes: int = 0
    precision: str = ""
    steps_per_epoch: int = 0
    total_steps: int = 0
    # --early-stop-patience: validations since the JM last rose above `stale_reference` + min delta
    stale_validations: int = 0
    stale_reference: float = float("-inf")
    stream: dict | None = None  # --streaming: where the next batch comes from (data/stream.py's state)
    last_validation: tuple[int, dict] = field(default=(-1, {}), metadata=_NOT_SAVED)  # its step and scores
    last_submission: int = field(default=-1, metadata=_NOT_SAVED)  # the step of the latest submission
    last_checkpoint: int = field(default=0, metadata=_NOT_SAVED)  # the step of the latest checkpoint or start

    def state_dict(self) -> dict[str, Any]:
        """The saved fields, JSON-able."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("saved", True)}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Take the saved fields (today's or an earlier version's names); fields a checkpoint predates keep their
        defaults. The in-memory fields start afresh: nothing was validated or saved by this process yet."""
        saved = {_FORMER_NAMES.get(k, k): v for k, v in saved.items()}
        known = {f.name for f in dataclasses.fields(self) if f.metadata.get("saved", True)}
        unknown = sorted(set(saved) - known)
        if unknown:
            raise ValueError(f"unknown training state field(s): {', '.join(unknown)}")
        for f in dataclasses.fields(self):
            setattr(self, f.name, saved.get(f.name, f.default) if f.name in known else f.default)
        self.last_checkpoint = self.step

    @classmethod
    def from_state_dict(cls, saved: dict[str, Any]) -> TrainState:
        state = cls()
        state.load_state_dict(saved)
        return state

    def validated(self, scores: dict, min_delta: float) -> bool:
        """Count a validation's scores in; returns whether they improved on the best JM."""
        improved = scores["jm"] > self.best_jm
        self.best_jm = max(self.best_jm, scores["jm"])
        self.last_validation = self.step, scores
        if scores["jm"] > self.stale_reference + min_delta:
            self.stale_validations, self.stale_reference = 0, scores["jm"]
        else:
            self.stale_validations += 1
        return improved

    def scores_now(self) -> dict:
        """The scores of the current weights: a validation's at this same step, else none."""
        return self.last_validation[1] if self.last_validation[0] == self.step else {}

    def out_of_patience(self, patience: int) -> bool:
        """--early-stop-patience: whether `patience` validations in a row have not improved enough."""
        return bool(patience) and self.stale_validations >= patience

    def next_epoch(self) -> None:
        """The epoch is over: the next one starts with no batches and no loss counted."""
        self.epoch, self.batches_done, self.loss_sum, self.loss_batches = self.epoch + 1, 0, 0.0, 0
