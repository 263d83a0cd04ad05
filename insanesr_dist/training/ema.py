"""Exponential moving average of the model's weights (BasicSR calls them `params_ema`).

The average is what gets validated, saved as latest/best and predicted for the submission when EMA is on.
Its state travels in the training checkpoint as a safetensors file plus a small JSON (checkpoint.py), never
as a pickle, so a resumed run continues it bit for bit without unpickling anything.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

Slot = tuple[dict, str]  # a submodule's parameter or buffer table, and a tensor's name in it


def _slots(module: nn.Module) -> tuple[list[Slot], list[Slot]]:
    """Where the module's floating and other tensors (parameters, then buffers, in a fixed order) live.

    Walking the module tree is host work that every update would repeat for the same answer, so it is done
    once and its result kept; but as places, not tensors: `module.to()` puts new buffers (and,
    under torch.__future__.set_overwrite_module_params_on_conversion, new Parameters) into these tables,
    where a kept tensor would go stale. Looking a tensor up in its table is a dict read. What the tables
    cannot follow is a change of the module's structure (a parameter, buffer or submodule added or
    removed), which nothing does to a model being trained.
    """
    floats, others = [], []
    for table_name, named in (("_parameters", module.named_parameters()), ("_buffers", module.named_buffers())):
        for name, tensor in named:  # shared tensors once, as parameters() and buffers() give them
            owner, _, key = name.rpartition(".")
            slot = (getattr(module.get_submodule(owner), table_name), key)
            (floats if tensor.dtype.is_floating_point else others).append(slot)
    return floats, others


def _lookup(slots: list[Slot]) -> list[torch.Tensor]:
    """The tensors in `slots` as they are now. Used as they are (no `.detach()` views): the update runs
    under no_grad."""
    return [table[key] for table, key in slots]


class WeightEMA:
    """ema = d * ema + (1 - d) * weights after each optimizer step, with d = min(decay, (1 + n) / (10 + n)):
    the ramp lets a short run's average follow the fast early progress instead of staying near the initial weights."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._live: nn.Module | None = None  # the model the slots below were found in
        self._slots: tuple[list[Slot], ...] = ()  # ema floats, ema others, live floats, live others

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One multi-tensor lerp over every floating tensor (one kernel launch per chunk on a GPU, instead
        of one per tensor and two state_dict()s); bit-identical to `ema.lerp_(live, 1 - d)` per tensor."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        if model is not self._live:  # the first update (or another model): find the tensors once
            ema_slots, live_slots = _slots(self.module), _slots(model)
            if any(len(e) != len(live) for e, live in zip(ema_slots, live_slots)):
                raise ValueError("WeightEMA.update: the model's tensors do not match the average's")
            self._live, self._slots = model, (*ema_slots, *live_slots)
        ema_floats, ema_others, live_floats, live_others = (_lookup(slots) for slots in self._slots)
        if ema_floats:
            torch._foreach_lerp_(ema_floats, live_floats, 1 - d)
        for ema, live in zip(ema_others, live_others):  # e.g. BatchNorm's step counter: copied, not averaged
            ema.copy_(live)

    def state_dict(self) -> dict:
        """Counters and weights; the checkpoint stores the weights as safetensors, the counters as JSON."""
        return {"updates": self.updates, "decay": self.decay, "weights": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates, self.decay = int(state["updates"]), float(state["decay"])
        self.module.load_state_dict(state["weights"])
        self._live = None  # found afresh at the next update, whatever loading did to the tensors
