import pytest
import torch
from torch import nn

from insanesr_dist.model.architecture import InsaneSRNet, ModelConfig, UpscaleBlock, count_parameters
from insanesr_dist.model.files import read_metadata, save_weights
from insanesr_dist.model.weights import load_model


def test_default_parameter_count_matches_the_seed():
    assert count_parameters(InsaneSRNet()) == 3_319_075


def test_state_dict_keys_follow_the_seed_listing():
    keys = set(InsaneSRNet().state_dict())
    for key in [
        "head.weight",
        "trunk.4.rdb3.layers.4.weight",
        "trunk.0.rdb1.conv_1x1.bias",
        "trunk_conv.weight",
        "upscale1.conv.weight",
        "upscale2.conv.bias",
        "tail.weight",
    ]:
        assert key in keys
    assert len(keys) == 2 * (1 + 5 * 3 * 6 + 1 + 2 + 1)  # weight+bias per conv


def test_output_is_4x_in_unit_range_and_starts_near_the_bilinear_skip():
    torch.manual_seed(0)
    model = InsaneSRNet(num_rrdb=1, channels=8, growth=4).eval()
    x = torch.rand(2, 3, 7, 11)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 3, 28, 44)
    assert y.min() >= 0 and y.max() <= 1
    skip = torch.sigmoid(torch.nn.functional.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False))
    assert torch.corrcoef(torch.stack([y.flatten(), skip.flatten()]))[0, 1] > 0.5


def test_constructor_takes_a_config_and_settings_by_keyword_and_checks_scale():
    with pytest.raises(TypeError):
        InsaneSRNet(5)
    with pytest.raises(TypeError):
        InsaneSRNet(depth=5)  # not a ModelConfig field
    with pytest.raises(ValueError):
        InsaneSRNet(scale=3)
    with pytest.raises(ValueError):
        ModelConfig(output_head="tanh")
    assert len(InsaneSRNet(num_rrdb=1, channels=8, growth=4, scale=8).upscalers()) == 3
    config = ModelConfig(num_rrdb=1, channels=8, growth=4)
    assert InsaneSRNet(config).config == config
    assert InsaneSRNet(config, growth=8).config == ModelConfig(num_rrdb=1, channels=8, growth=8)
    assert InsaneSRNet().config == ModelConfig()


def test_train_options_are_the_model_settings():
    # ModelConfig declares each model setting once; TrainConfig has the same fields (scale fixed at 4), their
    # defaults and help, and its `model` reads them back.
    import typing
    from dataclasses import fields

    from insanesr_dist.config import TrainConfig, field_specs

    own, model = typing.get_type_hints(TrainConfig), typing.get_type_hints(ModelConfig)
    specs = {name: (default, help_text) for name, _, default, help_text in field_specs()}
    for f in fields(ModelConfig):
        if f.name == "scale":
            assert typing.get_origin(own["scale"]) is typing.ClassVar and TrainConfig.scale == f.default
            continue
        assert own[f.name] in (model[f.name], model[f.name] | None), f.name
        assert specs[f.name][1].startswith(f.metadata["help"]), f.name
        assert specs[f.name][0] in (f.default, None), f.name  # None: --preset supplies it
    cfg = TrainConfig(num_rrdb=2, channels=16, growth=8, layers_per_block=3, output_head="residual")
    assert cfg.model == ModelConfig(
        num_rrdb=2, channels=16, growth=8, layers_per_block=3, scale=4, output_head="residual"
    )


def test_the_model_package_exports_the_documented_api():
    import insanesr_dist.model as package

    assert package.InsaneSRNet is InsaneSRNet and package.ModelConfig is ModelConfig
    assert package.load_model is load_model and package.save_weights is save_weights
    assert package.read_metadata is read_metadata and package.count_parameters is count_parameters


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_upscale_block_is_the_seed_conv_pixel_shuffle_lrelu(memory_format):
    torch.manual_seed(0)
    block = UpscaleBlock(channels=8).to(memory_format=memory_format)
    x = torch.randn(2, 8, 5, 7).to(memory_format=memory_format).requires_grad_()
    seed = nn.Sequential(block.conv, nn.PixelShuffle(2), nn.LeakyReLU(0.2))
    ours, reference = block(x), seed(x)
    assert ours.shape == (2, 8, 10, 14) and ours.is_contiguous(memory_format=memory_format)
    assert torch.equal(ours, reference)
    grads = torch.autograd.grad(ours.square().sum(), [x, block.conv.weight, block.conv.bias])
    reference_grads = torch.autograd.grad(reference.square().sum(), [x, block.conv.weight, block.conv.bias])
    for ours_grad, reference_grad in zip(grads, reference_grads):
        torch.testing.assert_close(ours_grad, reference_grad)
