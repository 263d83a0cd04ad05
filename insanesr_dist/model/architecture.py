"""InsaneSRNet, the seed report's x4 super-resolution network, built from a ModelConfig (settings.py).

The layer structure and parameter names follow the report's listing, so its `state_dict` keys
(`head.weight`, `trunk.0.rdb1.layers.0.weight`, ...) load unchanged. Reading and writing files is files.py's
(the formats) and weights.py's (loading any weights file); `from_pretrained` / `save_pretrained` use files.py.
"""

from __future__ import annotations

import dataclasses
import os
import typing

import torch
import torch.nn.functional as F
from torch import nn

from insanesr_dist.errors import UserError
from insanesr_dist.model import files
from insanesr_dist.model.settings import ModelConfig


class ResidualDenseBlock(nn.Module):
    """`layers` densely connected 3x3 convs, a 1x1 fusion back to `channels`, residual scaled by 0.2."""

    def __init__(self, *, channels: int, growth: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Conv2d(channels + i * growth, growth, kernel_size=3, padding=1) for i in range(layers)
        )
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        self.conv_1x1 = nn.Conv2d(channels + layers * growth, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in self.layers:
            features.append(self.lrelu(conv(torch.cat(features, 1))))
        return self.conv_1x1(torch.cat(features, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual: three dense blocks in sequence, the whole again residual scaled by 0.2."""

    def __init__(self, *, channels: int, growth: int, layers: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(channels=channels, growth=growth, layers=layers)
        self.rdb2 = ResidualDenseBlock(channels=channels, growth=growth, layers=layers)
        self.rdb3 = ResidualDenseBlock(channels=channels, growth=growth, layers=layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class UpscaleBlock(nn.Module):
    """conv to 4x the channels -> PixelShuffle(2) -> LeakyReLU: doubles height and width.

    The conv runs with its output channels reordered from PixelShuffle's (c, i, j) to (i, j, c), so that on
    a channels_last tensor the shuffle copies runs of 2 * channels contiguous values instead of gathering
    single ones. The stored weights keep the seed's order and names; the output is the same.
    """

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels * 4, kernel_size=3, padding=1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv.out_channels // 4
        weight = self.conv.weight.unflatten(0, (c, 4)).transpose(0, 1).flatten(0, 1)
        bias = self.conv.bias.view(c, 4).t().flatten()
        return _pixel_shuffle_ijc(self.lrelu(F.conv2d(x, weight, bias, padding=1)))


def _pixel_shuffle_ijc(y: torch.Tensor) -> torch.Tensor:
    """PixelShuffle(2) of a map whose channels are ordered (i, j, c): out[c, 2h+i, 2w+j] = y[(2i+j)C + c, h, w]."""
    n, c4, h, w = y.shape
    c = c4 // 4
    if y.is_contiguous(memory_format=torch.channels_last):
        # As stored, (n, h, w, i, j, c) -> (n, h, i, w, j, c): whole (j, c) runs move; channels_last out.
        rows = y.permute(0, 2, 3, 1).reshape(n, h, w, 2, 2, c).permute(0, 1, 3, 2, 4, 5)
        return rows.reshape(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)
    return y.reshape(n, 2, 2, c, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c, 2 * h, 2 * w)


class InsaneSRNet(nn.Module):
    """head conv -> RRDB trunk -> trunk conv -> PixelShuffle x2 blocks -> tail conv, plus a bilinear skip, then
    the seed's sigmoid or (output_head="residual") a clamp to [0, 1].

    Input and output are RGB in [0, 1]; the output is `scale` times larger in each direction.
    `InsaneSRNet(config)`, `InsaneSRNet(num_rrdb=2, channels=16)` (ModelConfig's fields by keyword, over the
    defaults) or both (the keywords replace those of `config`).
    """

    def __init__(self, config: ModelConfig | None = None, /, **settings: typing.Any) -> None:
        super().__init__()
        if config is not None and not isinstance(config, ModelConfig):
            raise TypeError(f"InsaneSRNet takes a ModelConfig, and its settings by keyword; got {config!r}")
        self.config = dataclasses.replace(config or ModelConfig(), **settings)
        channels, scale = self.config.channels, self.config.scale
        block = dict(channels=channels, growth=self.config.growth, layers=self.config.layers_per_block)
        self.head = nn.Conv2d(3, channels, kernel_size=3, padding=1)
        self.trunk = nn.Sequential(*(RRDB(**block) for _ in range(self.config.num_rrdb)))
        self.trunk_conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        # The seed has exactly two x2 blocks named upscale1/upscale2; other scales add more.
        for i in range(scale.bit_length() - 1):
            self.add_module(f"upscale{i + 1}", UpscaleBlock(channels=channels))
        self.tail = nn.Conv2d(channels, 3, kernel_size=3, padding=1)
        if self.config.output_head == "residual":
            # The output starts as the bilinear skip itself; the trunk only learns the correction.
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def upscalers(self) -> list[nn.Module]:
        return [module for name, module in self.named_children() if name.startswith("upscale")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = F.interpolate(x, scale_factor=self.config.scale, mode="bilinear", align_corners=False)
        out = self.trunk_conv(self.trunk(self.head(x)))
        for upscale in self.upscalers():
            out = upscale(out)
        if self.config.output_head == "residual":
            return (self.tail(out) + skip).clamp(0, 1)
        return torch.sigmoid(self.tail(out) + skip)

    # Hugging Face-style model folders (config.json + model.safetensors + README.md): see files.py and
    # tools/export.py.
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> InsaneSRNet:
        """Load a folder written by `save_pretrained` / `insanesr-dist export`, or a Hub repo id holding one;
        in eval mode, on the CPU."""
        config, config_file, weights = files.read_folder(folder)
        model = model_from_config(config, f"{config_file}: unusable model config", cls)
        files.load_folder_weights(model, weights)
        return model.eval()  # as Hugging Face's from_pretrained: ready for inference

    def save_pretrained(self, folder: str | os.PathLike, **metadata: object) -> None:
        """Write config.json and model.safetensors into `folder` (`metadata` as for `save_weights`)."""
        files.save_folder(self, folder, **metadata)


def model_from_config(config: dict, problem: str, cls: type[InsaneSRNet] = InsaneSRNet) -> InsaneSRNet:
    """The model a stored config describes (keys it does not know are ignored, e.g. a config.json's
    model_type); a config it cannot build is `problem` plus why, as one line."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    try:
        return cls(ModelConfig(**{k: v for k, v in config.items() if k in known}))
    except (TypeError, ValueError) as e:
        raise UserError(f"{problem} ({e})") from None


def count_parameters(model: nn.Module) -> int:
    """Trainable and frozen parameters of `model`, all counted."""
    return sum(p.numel() for p in model.parameters())
