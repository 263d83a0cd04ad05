"""inference.forward: the IEEE float32 forward of validation, submissions and `predict --mixed-precision no`, and
predict's autocast forward."""

from __future__ import annotations

import contextlib

import pytest
import torch

from insanesr_dist.model.architecture import InsaneSRNet

TINY_MODEL = dict(num_rrdb=1, channels=8, growth=8, layers_per_block=2)


def tiny_model(seed: int = 0) -> InsaneSRNet:
    torch.manual_seed(seed)
    return InsaneSRNet(**TINY_MODEL).eval()


# ---------------------------------------------------------------------------------------------
# IEEE float32: validation, submissions and `predict --mixed-precision no` never use TF32


def _precisions() -> list[str]:
    b = torch.backends
    return [k.fp32_precision for k in (b.cudnn.conv, b.cuda.matmul, b.mkldnn.conv, b.mkldnn.matmul)]


@contextlib.contextmanager
def tf32_everywhere():
    """torch's GPU default (TF32 cuDNN convolutions) plus TF32 matmuls and oneDNN, restored after."""
    b = torch.backends
    knobs = (b.cudnn.conv, b.cuda.matmul, b.mkldnn.conv, b.mkldnn.matmul)
    before = [k.fp32_precision for k in knobs]
    for k in knobs:
        k.fp32_precision = "tf32"
    try:
        yield ["tf32"] * 4
    finally:
        for k, v in zip(knobs, before):
            k.fp32_precision = v


def spy_on_precisions(monkeypatch) -> list:
    """The precision settings each model forward runs under, read inside the forward."""
    seen, real = [], InsaneSRNet.forward
    monkeypatch.setattr(InsaneSRNet, "forward", lambda self, x: (seen.append(_precisions()), real(self, x))[1])
    return seen


@pytest.mark.parametrize("which", ["float32_forward", "model_forward"])
def test_the_float32_forward_is_ieee_inside_and_restores_the_settings_after(which, monkeypatch):
    from types import SimpleNamespace

    from insanesr_dist.inference.forward import float32_forward, model_forward

    model = tiny_model()
    x = torch.rand(2, 3, 9, 11)
    if which == "float32_forward":  # training's validation and submissions; unwrap_model as for one process
        forward = float32_forward(SimpleNamespace(unwrap_model=lambda m: m), model)
    else:  # predict's --mixed-precision no (its input goes channels-last)
        forward = model_forward(model, torch.device("cpu"), "no")
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = model(x)  # torch's default settings, without the scope
    seen = spy_on_precisions(monkeypatch)
    with tf32_everywhere() as settings, torch.no_grad():
        got = forward(x)
        assert seen == [["ieee"] * 4]
        assert _precisions() == settings  # restored: --mixed-precision no training keeps TF32
    assert torch.equal(got, expected)  # and on a CPU nothing changes numerically


def test_the_settings_are_restored_when_the_forward_fails():
    from insanesr_dist.inference.forward import ieee_float32

    with tf32_everywhere() as settings:
        with pytest.raises(RuntimeError), ieee_float32():
            assert _precisions() == ["ieee"] * 4
            raise RuntimeError("out of memory")
        assert _precisions() == settings


def test_bf16_predict_is_left_to_autocast(monkeypatch):
    from insanesr_dist.inference.forward import model_forward

    seen = spy_on_precisions(monkeypatch)
    with tf32_everywhere() as settings, torch.no_grad():
        model_forward(tiny_model(), torch.device("cpu"), "bf16")(torch.rand(1, 3, 8, 8))
    assert seen == [settings]


def test_float32_forward_bypasses_a_wrapper_installed_on_the_instance():
    """accelerate's prepare() wraps `model.forward` in autocast; validation must run the class's own forward."""
    from types import SimpleNamespace

    from insanesr_dist.inference.forward import float32_forward

    model = tiny_model()
    x = torch.rand(1, 3, 8, 10)
    with torch.no_grad():
        expected = model(x)
        model.forward = lambda batch: torch.zeros(1)  # what a wrapper on the instance would be
        unwrapped = []
        forward = float32_forward(SimpleNamespace(unwrap_model=lambda m: unwrapped.append(m) or m), model)
        assert unwrapped == [model]
        assert torch.equal(forward(x), expected)


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_model_forward_gives_float32_batches_from_a_channels_last_input(precision, monkeypatch):
    from insanesr_dist.inference.forward import PRECISIONS, model_forward

    assert set(PRECISIONS) == {"no", "bf16", "fp16"}
    model = tiny_model()
    x = torch.rand(2, 3, 9, 11)
    with torch.no_grad():
        expected = model(x)
    seen = []
    real = InsaneSRNet.forward
    monkeypatch.setattr(
        InsaneSRNet,
        "forward",
        lambda self, batch: (
            seen.append((batch.is_contiguous(memory_format=torch.channels_last), torch.is_autocast_enabled("cpu"))),
            real(self, batch),
        )[1],
    )
    with torch.no_grad():
        got = model_forward(model, torch.device("cpu"), precision)(x)
    assert got.dtype == torch.float32 and got.shape == (2, 3, 36, 44)
    assert seen == [(True, precision == "bf16")]
    if precision == "no":
        assert torch.allclose(got, expected, atol=1e-5)
    else:  # bf16 autocast: close to float32, not equal
        assert 0 < (got - expected).abs().max() < 0.05
