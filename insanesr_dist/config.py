"""`TrainConfig`: every training setting in one typed, validated dataclass.

The training CLI is generated from these fields (name -> `--kebab-case` option, help from the
field's `help`), so a setting is declared once. A YAML or JSON file (`--config FILE`) with the same
keys fills the fields the command line leaves unset; the resolved config is saved in each run.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import click

from insanesr_dist.commands import AliasedChoice
from insanesr_dist.model.settings import ModelConfig, OutputHead
from insanesr_dist.presets import PRESET_ALIASES, PRESETS, preset_help, preset_name

Precision = Literal["auto", "no", "fp16", "bf16"]
Loss = Literal["mse", "l1", "charbonnier"]
Schedule = Literal["constant", "cosine"]
Preset = Literal["report", "default"]
OnBadSample = Literal["error", "skip"]
DeviceStore = Literal["auto", "on", "off"]
LrFromHr = Literal["bicubic", "bicubic-antialias", "area"]  # degrade.KERNELS


def setting(default: Any, help: str) -> Any:
    """A config field with its one-line help (shown by `--help` and kept beside the value)."""
    return field(default=default, metadata={"help": help})


MODEL_SETTINGS = {f.name: f for f in dataclasses.fields(ModelConfig)}


def model_setting(name: str, *, preset: bool = False) -> Any:
    """ModelConfig's field `name` as a training setting, with its default and help; `preset`: no default here,
    --preset supplies it (the help says which)."""
    spec = MODEL_SETTINGS[name]
    if preset:
        return setting(None, spec.metadata["help"] + preset_help(name))
    return setting(spec.default, spec.metadata["help"])


@dataclass
class TrainConfig:
    # data
    data: str | None = setting(
        None,
        "Dataset: a DIR with train/LR, train/HR (and val/LR + val/HR, test/LR), a DIV2K-like folder "
        "(DIV2K_train_HR, DIV2K_train_LR_bicubic/X4, ...), a save_to_disk folder, a "
        "folder of parquet/arrow/jsonl/csv files (a hub dataset on disk), or a hub "
        "dataset id. Default: the embedded demo data.",
    )
    hr_dir: str | None = setting(
        None,
        "Folder of training HR images (sub-folders included), with --lr-dir: instead "
        "of --data, or in place of its HR folder.",
    )
    lr_dir: str | None = setting(
        None,
        "Folder of the training LR images: same names as the HR files, or with the "
        "scale suffix (0001x4.png for 0001.png).",
    )
    val_hr_dir: str | None = setting(
        None,
        "Folder of validation HR images, with --val-lr-dir: validate on them "
        "instead of splitting --val-fraction off the training pairs.",
    )
    val_lr_dir: str | None = setting(None, "Folder of the validation LR images.")
    test_lr_dir: str | None = setting(None, "Folder of test LR images for the submission CSVs.")
    lr_from_hr: LrFromHr | None = setting(
        None,
        "Make the training and validation LR images from the HR ones "
        "(HR-only sets; LR files are not read): bicubic (OpenCV INTER_CUBIC), "
        "bicubic-antialias (PIL-style), area (OpenCV INTER_AREA); see "
        "data/degrade.py. HR sizes are first cropped to a multiple of 4.",
    )
    lr_column: str = setting(
        "lr", "A dataset's column of LR images (images, file paths or encoded bytes); the test split's too."
    )
    hr_column: str = setting("hr", "A dataset's column of HR images (images, file paths or encoded bytes).")
    id_column: str = setting(
        "id", "A dataset's column of image ids (the submission's names); without one, ids are 00000.png, 00001.png, ..."
    )
    val_fraction: float = setting(0.1, "Share of the training pairs held out for validation (seeded split).")
    val_size: int = setting(
        0,
        "With --streaming: validation pairs held out from the head of the stream "
        "(never trained on) when the source has no validation split and no "
        "--val-hr-dir; else the first N pairs of that split; 0: all of them.",
    )
    patch_size: int = setting(
        None, "LR crop edge for training (HR crop is 4x); 0 trains on full images." + preset_help("patch_size")
    )
    streaming: bool = setting(
        False, "Stream the training pairs as an IterableDataset, sharded per rank; needs --max-steps."
    )
    num_workers: int = setting(1, "DataLoader worker processes per rank (image decoding happens there).")
    decoded_cache_mb: int = setting(
        1024,
        "Decoded training pairs each DataLoader worker keeps in memory (MB), "
        "so later epochs crop without decoding the PNGs again; 0 disables it.",
    )
    store_gb: float = setting(
        64.0,
        "Decode the training pairs once into a store on disk (GB at most; it must also fit "
        "the free space), memory-mapped by every worker and rank of a node, reused by "
        "later runs; 0: no store (workers decode, see --decoded-cache-mb).",
    )
    crops_per_decode: int = setting(
        0,
        "Crops cut from each decoded pair. With --streaming: mixed across images "
        "by --shuffle-crops; 0: by the pair's size, one per 4 HR crop areas, at "
        "most 32 (a 2K image 32, a 480-px packed tile 4 at --patch-size 32), so a "
        "decode is paid over many crops. Map-style without a decoded store (above "
        "--store-gb): every this many consecutive samples of a batch are crops of "
        "one pair; 0: 4. 1: one pair per sample.",
    )
    shuffle_crops: int = setting(
        1024,
        "With --streaming: each stream lane draws a batch's crops at random from a "
        "pool of pairs cut into this many crops, so a batch mixes crops of many "
        "images (memory: at most this many LR+HR crops per lane, 53 MB at "
        "--patch-size 32); 1: no mixing.",
    )
    stream_lanes: int = setting(
        0,
        "With --streaming: the stream's readers (lanes); the sample order depends "
        "on them, not on the processes, so a resumed run keeps it on any ranks x "
        "workers that divide them; 0: ranks x workers.",
    )
    shard_retries: int = setting(
        3,
        "With --streaming: a shard that cannot be read (404, cut short, reset) is "
        "tried again this many times (after 0.5 s, 1 s, 2 s, ...) before "
        "--on-bad-sample skips it or stops.",
    )
    store_dir: str | None = setting(
        None, "Folder of the decoded stores (a fast local disk). Default: beside the Hugging Face datasets cache."
    )
    device_store: DeviceStore = setting(
        "auto",
        "Keep the decoded training pairs on the GPU and cut each batch's "
        "crops there: auto does so on CUDA when they take at most a quarter "
        "of its memory; on (also on a CPU, in RAM); off.",
    )
    on_bad_sample: OnBadSample = setting(
        "error",
        "A bad file or pair (see insanesr-dist check-data): error "
        "stops before training, naming it; skip leaves it out, logged once.",
    )
    worker_timeout: float = setting(
        600,
        "Seconds to wait for a DataLoader worker's next batch before stopping with an "
        "error (a hung worker must not hang the run); 0 waits forever.",
    )
    dist_timeout: float = setting(
        3600,
        "Seconds a process waits for the others at a collective (e.g. while rank 0 "
        "prepares the dataset caches on a first run) before stopping with an error; "
        "raise it for a first run on a very large dataset.",
    )
    cpu_threads: int | None = setting(
        None,
        "Torch threads per process on CPU. Default: this machine's cores "
        "shared among the local processes (accelerate launch pins 1).",
    )
    # optimisation
    epochs: int = setting(10, "Passes over the training pairs (with --streaming: evaluation rounds).")
    epoch_samples: int = setting(
        0,
        "Training samples (crops) per epoch, whatever the number of processes: the training pairs "
        "are repeated, each repeat with crops of its own (or cut short) to this many; 0: one pass "
        "over the pairs. For small sets on many GPUs, whose epochs would otherwise be a few steps.",
    )
    max_steps: int | None = setting(None, "Stop after this many optimizer steps (overrides --epochs).")
    batch_size: int = setting(None, "Samples per rank per forward pass." + preset_help("batch_size"))
    grad_accum: int = setting(1, "Forward passes accumulated into one optimizer step.")
    # recipe: unset fields come from the preset (see presets.py), so explicit values always win
    preset: Preset = setting(
        "default",
        "Training recipe supplying the defaults marked 'from --preset': report (the "
        "seed report's exactly; 'seed', its former name, is accepted too) or default "
        "(the model-quality study's winner).",
    )
    lr: float = setting(None, "Peak learning rate of Adam." + preset_help("lr"))
    schedule: Schedule = setting(
        None, "Learning-rate schedule after warmup: constant or cosine to 0." + preset_help("schedule")
    )
    warmup_steps: int = setting(
        None, "Linear warmup from 0 over this many optimizer steps." + preset_help("warmup_steps")
    )
    loss: Loss = setting(None, "Pixel loss: mse, l1 or charbonnier." + preset_help("loss"))
    ssim_weight: float = setting(
        None, "Add this weight times (1 - SSIM) to the pixel loss; 0 disables it." + preset_help("ssim_weight")
    )
    ema_decay: float = setting(
        None,
        "Keep an exponential moving average of the weights with this decay and "
        "validate, save and predict with it; 0 disables it." + preset_help("ema_decay"),
    )
    adam_beta2: float = setting(
        0.999,
        "Adam's beta2, the decay of its squared-gradient average (beta1 stays 0.9): 0.999 is Adam's and the "
        "seed's; 0.99 adapts faster to changing gradient scales.",
    )
    max_grad_norm: float = setting(0.0, "Clip the gradient norm to this value; 0 disables clipping (seed).")
    max_bad_steps: int = setting(
        20,
        "Optimizer steps with a non-finite loss or gradient are skipped; stop the "
        "run after this many in a row (checked every --log-every steps).",
    )
    mixed_precision: Precision = setting(
        "auto",
        "auto: the accelerate config's fp16/bf16 if it sets one, else bf16 "
        "autocast where the hardware has native bf16 (AMX/AVX512-BF16 CPUs, "
        "Ampere+ GPUs), else float32; no: float32; fp16 (CUDA, with gradient "
        "scaling); bf16. Validation and submissions always run in float32.",
    )
    channels_last: bool = setting(
        True,
        "Train in channels-last memory format (faster convolutions on CPUs "
        "and tensor cores); the weights files are the same either way.",
    )
    compile: bool = setting(
        False,
        "torch.compile the training forward/backward (the compile time is printed); "
        "off by default, as compiling costs time at every start that a CPU run need not win back.",
    )
    seed: int = setting(0, "Seed for the split, the shuffling, the crops and the initial weights.")
    # model: ModelConfig's fields, declared there (default, help); `scale` is fixed, see below
    num_rrdb: int = model_setting("num_rrdb")
    channels: int = model_setting("channels")
    growth: int = model_setting("growth")
    layers_per_block: int = model_setting("layers_per_block")
    output_head: OutputHead = model_setting("output_head", preset=True)
    # starting point and stopping
    init_from: str | None = setting(
        None,
        "Start from these weights (a run directory: its best.safetensors; a "
        ".safetensors file; an exported model folder; a hub id) with a fresh "
        "optimizer and schedule. config.json records the file used.",
    )
    init_strict: bool = setting(
        True,
        "With --init-from: every tensor must fit the model; --no-init-strict copies "
        "those that fit and lists the rest, left at their initial value.",
    )
    early_stop_patience: int = setting(
        0,
        "Stop (as finished) after this many validations without a JM above the "
        "best so far + --early-stop-min-delta; 0: never.",
    )
    early_stop_min_delta: float = setting(0.0, "The JM gain that counts as better for --early-stop-patience.")
    # checkpoints
    resume: str = setting(
        "auto",
        "auto: continue from the newest complete checkpoint in the output dir; "
        "none: start fresh (never over an existing run); or a checkpoint path.",
    )
    checkpoint_every: int = setting(
        0,
        "Save the full training state every N optimizer steps; epoch ends then save only when N steps "
        "have passed since the last save (0, with --checkpoint-every-minutes 0: at every epoch end).",
    )
    checkpoint_every_minutes: float = setting(
        0.0,
        "Save the full training state once this many minutes have passed since the last save (checked "
        "every few seconds and at epoch ends); epoch ends then save only when due. 0: off.",
    )
    keep_checkpoints: int = setting(2, "Complete checkpoints kept; older ones are deleted (the newest never).")
    # outputs
    output_dir: str | None = setting(None, "Run directory. Default: runs/<timestamp>.")
    log_every: int = setting(10, "Optimizer steps between loss readings (progress bar, TensorBoard).")
    report_to: str = setting(
        "tensorboard",
        "Trackers, comma-separated, as accelerate's log_with (mlflow, wandb, "
        "comet_ml, aim, clearml, dvclive, ...): the same scalars and settings; "
        "TensorBoard is always written (panels, hparams).",
    )
    panel_images: int = setting(4, "Fixed validation images shown as LR|SR|HR panels in TensorBoard.")
    # evaluation cadence and size (the last epoch always validates and writes its submission)
    val_every: int = setting(
        1,
        "Validate (scores, best.safetensors, panels) every N epochs and at the last; "
        "other epochs still save latest weights, the checkpoint and the training loss.",
    )
    submit_every: int = setting(1, "Write the test-set submission CSV every N epochs and at the last.")
    val_every_steps: int = setting(
        0,
        "Also validate every N optimizer steps, mid-epoch too, for long or streaming "
        "epochs (0: off); each such validation also saves the checkpoint.",
    )
    submit_every_steps: int = setting(
        0, "Also write a submission CSV (submissions/step_NNNNNNN.csv) every N optimizer steps (0: off)."
    )
    val_max_images: int = setting(
        0,
        "Validate on this many images of the validation split, the same seeded subset "
        "every epoch and run; 0: all of them.",
    )
    val_tile: int = setting(
        512,
        "Validation and test images with an LR edge over this are upscaled in tiles of this "
        "edge (float32, overlap wide enough to equal the whole-image result); 0: never tile.",
    )

    scale: typing.ClassVar[int] = 4  # the competition's factor; the data checks HR == 4 x LR

    def __post_init__(self) -> None:
        self.preset = preset_name(self.preset)
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        checks = [
            (0 < self.val_fraction < 1, "val_fraction must be between 0 and 1"),
            (self.patch_size >= 0, "patch_size must be >= 0"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.decoded_cache_mb >= 0, "decoded_cache_mb must be >= 0"),
            (self.store_gb >= 0, "store_gb must be >= 0"),
            (self.crops_per_decode >= 0, "crops_per_decode must be >= 0"),
            (self.shuffle_crops >= 1, "shuffle_crops must be >= 1"),
            (self.stream_lanes >= 0, "stream_lanes must be >= 0"),
            (self.shard_retries >= 0, "shard_retries must be >= 0"),
            (self.val_size >= 0, "val_size must be >= 0"),
            (self.worker_timeout >= 0, "worker_timeout must be >= 0"),
            (self.dist_timeout > 0, "dist_timeout must be > 0"),
            (self.cpu_threads is None or self.cpu_threads >= 1, "cpu_threads must be >= 1"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.ssim_weight >= 0, "ssim_weight must be >= 0"),
            (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
            (0 < self.adam_beta2 < 1, "adam_beta2 must be in (0, 1)"),
            (self.max_grad_norm >= 0, "max_grad_norm must be >= 0"),
            (self.max_bad_steps >= 1, "max_bad_steps must be >= 1"),
            (min(self.num_rrdb, self.channels, self.growth, self.layers_per_block) >= 1, "model sizes must be >= 1"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
            (self.checkpoint_every_minutes >= 0, "checkpoint_every_minutes must be >= 0"),
            (self.epoch_samples >= 0, "epoch_samples must be >= 0"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (self.panel_images >= 0, "panel_images must be >= 0"),
            (self.val_every >= 1, "val_every must be >= 1"),
            (self.submit_every >= 1, "submit_every must be >= 1"),
            (self.val_every_steps >= 0, "val_every_steps must be >= 0"),
            (self.early_stop_patience >= 0, "early_stop_patience must be >= 0"),
            (self.early_stop_min_delta >= 0, "early_stop_min_delta must be >= 0"),
            (self.submit_every_steps >= 0, "submit_every_steps must be >= 0"),
            (self.val_max_images >= 0, "val_max_images must be >= 0"),
            (self.val_tile >= 0, "val_tile must be >= 0"),
            (not self.streaming or self.max_steps is not None, "streaming trains by steps: give max_steps"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        for f in dataclasses.fields(self):
            choices = typing.get_args(_field_type(f.name))
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(choices)}, got {value!r}")

    @property
    def model(self) -> ModelConfig:
        """The model these settings train (ModelConfig's fields, read off this config)."""
        return ModelConfig(**{name: getattr(self, name) for name in MODEL_SETTINGS})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hparams(self) -> dict[str, int | float | str | bool]:
        """Flat scalar dict for TensorBoard's hparams plugin (None shown as 'default')."""
        return {k: ("default" if v is None else v) for k, v in self.to_dict().items()}


def _field_type(name: str) -> Any:
    """The field's type with `X | None` reduced to X (Literal types keep their choices)."""
    hint = typing.get_type_hints(TrainConfig)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def field_specs() -> list[tuple[str, Any, Any, str]]:
    """(name, type, default, help) of each setting, for building the CLI; --preset's type is a click choice that
    also takes the presets' former names."""
    return [
        (
            f.name,
            AliasedChoice(typing.get_args(Preset), PRESET_ALIASES) if f.name == "preset" else _field_type(f.name),
            f.default,
            f.metadata["help"],
        )
        for f in dataclasses.fields(TrainConfig)
    ]


def saved_settings(values: dict[str, Any]) -> dict[str, Any]:
    """A run's saved settings (its config.json) in today's names, so that they compare equal to the same
    settings given now: a preset's former name becomes its name."""
    if isinstance(values.get("preset"), str):
        values = {**values, "preset": preset_name(values["preset"])}
    return values


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a YAML or JSON file; keys may use dashes or underscores. Raises ValueError."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        values = json.loads(text)
    else:
        import yaml

        values = yaml.safe_load(text) or {}
    if not isinstance(values, dict):
        raise ValueError("expected a mapping of setting names to values")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
    return values


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    from insanesr_dist.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(cfg.to_dict(), indent=2) + "\n")


def config_options(command):
    """One click option per TrainConfig field (the train command's flags); unset options (None) leave the file's
    or the default value."""
    for name, kind, default, help_text in reversed(field_specs()):
        flag = "--" + name.replace("_", "-")
        shown = f"{help_text} [default: {default}]" if default is not None else help_text
        if kind is bool:
            option = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=shown)
        elif typing.get_origin(kind) is typing.Literal:
            option = click.option(flag, name, type=click.Choice(typing.get_args(kind)), default=None, help=shown)
        else:
            option = click.option(flag, name, type=kind, default=None, help=shown)
        command = option(command)
    return command


def config_from_options(config_file: str | None, given: dict[str, Any]) -> TrainConfig:
    """The settings of a --config file (if any) overridden by the flags given (None: not given); a bad file or
    value is a click usage error, which click shows as one line."""
    values = {}
    if config_file:
        try:
            values = read_config_file(config_file)
        except (ValueError, OSError) as e:
            raise click.BadParameter(f"{config_file}: {e}", param_hint="--config") from None
    values.update({k: v for k, v in given.items() if v is not None})
    try:
        return TrainConfig(**values)
    except (TypeError, ValueError) as e:
        raise click.UsageError(f"invalid settings: {e}") from None
