"""Training recipes (`--preset`): `report` is the seed report's recipe exactly, `default` the winner of the
model-quality study (docs/study.md; `insanesr-dist study` reruns it).

A preset only supplies defaults: any setting given on the command line, in a `--config` file or to
`TrainConfig(...)` wins over it. The run directory's config.json records the preset and the resolved values.
"""

from __future__ import annotations

PRESETS: dict[str, dict[str, object]] = {
    # The report: InsaneSRNet with sigmoid(tail + bilinear skip), nn.MSELoss, Adam(lr=1e-4) with no schedule,
    # whole training images. Deviations: it states no batch size (16 is this toolkit's), and the toolkit's random
    # flips/90-degree rotations still apply to whole images (the report shows no augmentation).
    "report": dict(
        output_head="sigmoid",
        loss="mse",
        ssim_weight=0.0,
        lr=1e-4,
        schedule="constant",
        warmup_steps=0,
        ema_decay=0.0,
        patch_size=0,
        batch_size=16,
    ),
    "default": dict(
        output_head="residual",
        loss="l1",
        ssim_weight=0.5,
        lr=5e-4,
        schedule="cosine",
        warmup_steps=10,
        ema_decay=0.999,
        patch_size=32,
        batch_size=16,
    ),
}


# Former names, still accepted wherever a preset is named (the command line, --config files, the config.json of
# earlier runs), each read as the recipe it names now: `seed` read as much like --seed, the random seed, as like
# the seed report.
PRESET_ALIASES = {"seed": "report"}


def preset_name(name: str) -> str:
    """A preset's name, given that name or a former one (anything else is returned as it is)."""
    return PRESET_ALIASES.get(name, name)


def preset_help(name: str) -> str:
    """' From --preset when not given (report X, default Y).' for a setting's --help line."""
    values = ", ".join(f"{preset} {recipe[name]}" for preset, recipe in PRESETS.items())
    return f" From --preset when not given ({values})."
