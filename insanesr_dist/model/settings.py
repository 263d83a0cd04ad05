"""ModelConfig, the one declaration of InsaneSRNet's settings (the training options, weights-file metadata and
model folders' config.json all use these fields).

Apart from architecture.py, and importing nothing heavy, because config.py declares the training options from
these fields: every command that builds a TrainConfig (check-data, the CLI's option parsing) would otherwise
import torch for a dataclass.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

OutputHead = Literal["sigmoid", "residual"]
OUTPUT_HEADS = typing.get_args(OutputHead)


def _setting(default: object, help: str) -> typing.Any:
    """A model setting with its one-line help (`insanesr-dist train --help` shows it)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Everything needed to rebuild an InsaneSRNet; stored in every weights file's metadata.

    TrainConfig's model options are these fields (their defaults and help), but for `scale`, fixed at 4.
    """

    num_rrdb: int = _setting(5, "RRDB blocks in the trunk.")
    channels: int = _setting(64, "Feature channels of the trunk.")
    growth: int = _setting(32, "Growth channels inside each dense block.")
    layers_per_block: int = _setting(5, "Conv layers per dense block.")
    scale: int = _setting(4, "Upscaling factor, a power of two (x2 blocks).")
    # "sigmoid": the seed's sigmoid(tail + skip); "residual": clamp(tail + skip, 0, 1) with a zero-initialised
    # tail, so an untrained model is exactly the bilinear skip. Files written before this field load as "sigmoid".
    output_head: OutputHead = _setting(
        "sigmoid",
        "sigmoid(tail + bilinear skip) as the seed, or residual: clamp(tail + skip) with a zero-initialised tail.",
    )

    def __post_init__(self) -> None:
        if self.scale < 2 or self.scale & (self.scale - 1):
            raise ValueError(f"scale must be a power of two >= 2, got {self.scale}")
        if self.output_head not in OUTPUT_HEADS:
            raise ValueError(f"output_head must be one of {', '.join(OUTPUT_HEADS)}, got {self.output_head!r}")
