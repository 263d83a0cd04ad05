"""Numerical faults: optimizer steps whose gradients are not finite are skipped, counted and logged,
and a run that keeps producing them stops with a clear message instead of training on NaNs.

In fp16 accelerate's GradScaler makes the skip and halves its scale; a skipped step is seen as that
halving (the scale after the step below the scale before it) and counted like any other, so a run
that never recovers stops too. Its first few skips are the scaler calibrating its scale: a handful,
well under --max-bad-steps. For bf16 and fp32 the skip is made by the optimizer itself: a fused
Adam reads a `found_inf` tensor and leaves weights, moments and step count untouched when it is
set (the mechanism GradScaler uses). Either way deciding costs no host synchronisation: the flags
stay on the device and are read only when the loop reads its loss anyway (every --log-every steps)
and at epoch ends.

Why the gradients decide and not the loss: a non-finite loss gives non-finite gradients, and DDP's
all-reduce hands them to every rank, so every rank skips the same steps without another collective
(a rank-local loss check could make ranks disagree and their weights drift apart).
"""

from __future__ import annotations

import torch
from accelerate import Accelerator

from insanesr_dist.errors import UserError


class BadSteps:
    """Flags, counts and (past `limit` in a row) stops on optimizer steps with non-finite gradients."""

    def __init__(self, accelerator: Accelerator, optimizer, limit: int) -> None:
        self.limit = limit
        scaler = accelerator.scaler
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None  # fp16: it skips itself
        self.inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        if self.scaler is None and not getattr(self.inner, "_step_supports_amp_scaling", False):
            raise ValueError("BadSteps needs an optimizer that accepts found_inf (a fused one)")
        device = accelerator.device
        self._one = torch.ones((), device=device)
        self.flag = torch.zeros((), device=device)  # 1.0 when this step's gradients are not finite
        self._state = torch.zeros(3, device=device)  # total skipped, current run, longest run since last read
        self.skipped = 0  # total, as of the last read
        self._scale_before = None  # fp16: the scaler's scale before the step not yet counted
        self._pending = False  # fp16: a step was taken whose outcome is not counted yet

    def check(self, parameters) -> None:
        """Call after backward (and clipping), before `optimizer.step()`, on steps that update weights."""
        if self.scaler is not None:
            self._count_scaler_step()  # the previous step's outcome: its update() has run since
            scale = self.scaler._scale  # (private, but get_scale() would sync with the device)
            self._scale_before = scale.clone() if self._scale_before is None else self._scale_before.copy_(scale)
            self._pending = True
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        self.flag.zero_()
        torch._amp_foreach_non_finite_check_and_unscale_(grads, self.flag, self._one)  # sets flag on inf/NaN
        self.inner.found_inf = self.flag  # read by the fused Adam step: a set flag makes it a no-op
        self._count()

    def _count_scaler_step(self) -> None:
        """fp16: GradScaler.update() multiplies the scale by its backoff factor (< 1) exactly when it
        skipped the step for non-finite gradients, and never lowers it otherwise."""
        if not self._pending:
            return
        torch.lt(self.scaler._scale, self._scale_before, out=self.flag)
        self._count()
        self._pending = False

    def _count(self) -> None:
        total, run, longest = self._state.unbind()
        total.add_(self.flag)
        run.add_(self.flag).mul_(self.flag)  # +1 on a bad step, back to 0 on a good one
        torch.maximum(longest, run, out=longest)

    def read(self, step: int, say) -> int:
        """Host-read the counters (one sync); log newly skipped steps and stop past the limit.

        Raises UserError on every rank alike (the flags agree, see the module docstring), before the
        loop writes anything, so the last complete checkpoint and best weights stay as they were.
        """
        if self.scaler is not None:
            self._count_scaler_step()  # the last step, taken since check()
        total, run, longest = (int(v) for v in self._state.tolist())
        new, self.skipped = total - self.skipped, total
        self._state[2] = run  # a run still going on keeps counting from here
        if new:
            say(
                f"warning: skipped {new} optimizer step(s) with non-finite loss or gradients "
                f"(up to step {step}; {total} in this run)"
            )
        if longest >= self.limit:
            raise UserError(
                f"training stopped at step {step}: {longest} optimizer steps in a row had a non-finite loss or "
                f"gradients (--max-bad-steps {self.limit}); weights were not updated by them, and the last "
                "complete checkpoint and best.safetensors are as they were. Lower --lr, set --max-grad-norm, "
                "or check the data"
            )
        return new


def io_failure(error: BaseException) -> str | None:
    """One line for an exception that is an I/O failure (a full disk, a quota, a read-only or vanished
    directory, a file-size limit, a broken connection), else None. safetensors and torch.save report these in their own
    exception types, so their messages are recognised too."""
    seen = []
    while error is not None and error not in seen:  # libraries wrap it (datasets: DatasetGenerationError)
        seen.append(error)
        if isinstance(error, ConnectionError):  # a socket, not a file: there is no room to make
            return (
                "a connection between this run's processes, or to a data server, broke "
                f"({error.strerror or error}); every file written before is intact (writes are atomic): rerun the "
                "same command to resume from the last complete checkpoint"
            )
        if isinstance(error, OSError) and error.errno is not None:
            where, what = error.filename or "a file", error.strerror or str(error)
            break
        if any(text in str(error) for text in ("I/O error", "failed writing file", "No space left")):
            where, what = "a file", str(error).strip().splitlines()[0]
            break
        error = error.__cause__ or error.__context__
    else:
        return None
    return (
        f"{where}: {what}; every file written before is intact (writes are atomic): make room and rerun "
        "the same command to resume from the last complete checkpoint"
    )
