"""training.ema: the update finds the model's tensors once, and still updates exactly what the per-step walk
of parameters() and buffers() did, through moves, casts and loads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from insanesr_dist.model.architecture import InsaneSRNet
from insanesr_dist.training.ema import WeightEMA


class Walked(nn.Sequential):
    """A model that counts the walks over its module tree: parameters(), buffers(), state_dict() and
    modules() all go through named_modules() on the model itself."""

    walks = 0

    def named_modules(self, *args, **kwargs):
        Walked.walks += 1
        return super().named_modules(*args, **kwargs)


def model(seed: int = 0) -> nn.Module:
    """Convs, an InsaneSRNet and a BatchNorm: floating parameters and buffers, and an integer buffer."""
    torch.manual_seed(seed)
    return Walked(InsaneSRNet(num_rrdb=1, channels=8, growth=4, layers_per_block=2), nn.BatchNorm2d(3))


def uncached_update(ema: nn.Module, live: nn.Module, updates: int, decay: float) -> None:
    """The update as a fresh walk of both models each time: one lerp per floating tensor, a copy of the rest."""
    d = min(decay, (1 + updates) / (10 + updates))
    with torch.no_grad():
        for e, t in zip((*ema.parameters(), *ema.buffers()), (*live.parameters(), *live.buffers())):
            if t.dtype.is_floating_point:
                e.lerp_(t, 1 - d)
            else:
                e.copy_(t)


def train_step(live: nn.Module, seed: int) -> None:
    """What an optimizer step and a training forward change: the parameters, and BatchNorm's statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in live.parameters():
            p.add_(torch.randn(p.shape, generator=generator).to(p), alpha=0.01)
        live.train()(torch.rand(2, 3, 8, 8, generator=generator).to(next(live.parameters())))


def assert_same(ema: WeightEMA, reference: nn.Module) -> None:
    got, expected = ema.module.state_dict(), reference.state_dict()
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].dtype == expected[name].dtype and torch.equal(got[name], expected[name]), name


def run(steps: range, live, ema, reference, decay=0.999):
    for step in steps:
        train_step(live, step)
        ema.update(live)
        uncached_update(reference, live, ema.updates, decay)
        assert_same(ema, reference)


def test_the_update_walks_the_models_once():
    live = model()
    ema = WeightEMA(live, decay=0.999)
    ema.update(live)
    walks = Walked.walks
    for _ in range(3):
        ema.update(live)
    assert Walked.walks == walks


@pytest.mark.parametrize("overwrite_params", [False, True])
def test_the_cached_update_equals_a_fresh_walk_through_moves_casts_and_loads(overwrite_params):
    # With the overwrite flag, `.to()` replaces Parameters too (not only their data): a kept tensor would go stale.
    previous = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(overwrite_params)
    try:
        live = model()
        ema = WeightEMA(live, decay=0.999)
        reference = WeightEMA(live, decay=0.999).module
        ema.module.to("cpu")  # as the training loop does (to its device) before the first update
        reference.to("cpu")
        run(range(3), live, ema, reference)
        # moved and cast after the first update: every floating tensor and buffer is a new one
        for module in (live, ema.module, reference):
            module.to(torch.float64).to(memory_format=torch.channels_last)
        run(range(3, 6), live, ema, reference)
        # a resume: the average loaded from a checkpoint's state
        train_step(reference, 99)  # the loaded state differs from what the average held
        weights = {k: v.clone() for k, v in reference.state_dict().items()}
        ema.load_state_dict({"updates": ema.updates, "decay": ema.decay, "weights": weights})
        assert_same(ema, reference)
        run(range(6, 9), live, ema, reference)
        assert ema.updates == 9
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(previous)


def test_the_cached_update_follows_a_load_that_assigns_new_tensors():
    live = model()
    ema = WeightEMA(live, decay=0.9)
    reference = WeightEMA(live, decay=0.9).module
    run(range(2), live, ema, reference, decay=0.9)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    for module in (ema.module, reference):  # assign=True puts the given tensors in place of the old ones
        module.load_state_dict({k: v.clone() for k, v in state.items()}, assign=True)
    run(range(2, 5), live, ema, reference, decay=0.9)


def test_a_model_with_other_tensors_is_refused():
    ema = WeightEMA(model(), decay=0.9)
    ema.update(model(1))  # a model of the same structure is fine
    with pytest.raises(ValueError, match="do not match"):
        ema.update(nn.Sequential(nn.Conv2d(3, 3, 3)))
