"""Which precision a process computes in: what was asked for (the train flag, or `accelerate launch`), what the
hardware does natively, and what it can do at all (fp16 autocast is a CUDA recipe)."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def native_bf16(cpu: bool) -> bool:
    """Whether the training device (the CPU, else the GPU) computes bf16 natively (fast), not by emulation."""
    if not cpu:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    try:  # AMX tiles (Sapphire Rapids+) or AVX512-BF16 (Cooper Lake, Zen 4); private but stable helpers
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    except AttributeError:
        return False


def launch_precision() -> str | None:
    """The mixed precision `accelerate launch` was asked for (`no`, `fp16`, `bf16`), or None when nobody asked.

    `accelerate launch` always exports ACCELERATE_MIXED_PRECISION, and exports `no` when neither a config
    file nor `--mixed_precision` said anything, so `no` alone does not tell "float32, please" from "not
    said". The launcher's own command line does: we read it (our parent process) as accelerate would.
    """
    exported = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if exported != "no":
        return exported
    return "no" if _launcher_request() else None


def _launcher_request() -> bool:
    """Whether the `accelerate launch` that started this process set a mixed precision: by flag, or through
    a config file (given, or accelerate's default one) whose `mixed_precision` is set."""
    import psutil  # an accelerate dependency

    try:
        parent = psutil.Process(os.getppid())
        argv, cwd = parent.cmdline(), parent.cwd()
    except (psutil.Error, OSError):
        return False
    if "launch" not in argv:
        return False
    from accelerate.commands.config import default_config_file
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    args, _ = launch_command_parser().parse_known_args(argv[argv.index("launch") + 1 :])
    if args.mixed_precision is not None:
        return True
    config = args.config_file and str(Path(cwd, args.config_file))
    if config is None and (args.cpu or not os.path.isfile(default_config_file)):
        return False  # accelerate reads no config file either (see its `_validate_launch_command`)
    try:
        return load_config_from_file(config).mixed_precision is not None
    except (OSError, ValueError, TypeError):
        return False


def resolve_precision(requested: str, *, cpu: bool) -> tuple[str, str | None]:
    """The precision to train in and a note saying why, when it is not simply what was asked for.

    `auto` keeps a choice made for `accelerate launch` (flag or config file: fp16, bf16, or `no` for
    float32), else picks bf16 where it is native (Ampere and later GPUs, AMX/AVX512-BF16 CPUs: fp32's exponent
    range, no gradient scaler), else on a GPU fp16 with gradient scaling (the seed report's AMP), else float32.
    fp16 autocast with gradient scaling is a CUDA recipe; on a CPU, bf16 gives the speed-up instead.
    """
    precision, note = requested, None
    if requested == "auto":
        precision = launch_precision()
        if precision is None:
            precision = "bf16" if native_bf16(cpu) else "no" if cpu else "fp16"
            if precision != "no":
                note = (
                    f"mixed precision: {precision} autocast ("
                    + ("native on this hardware" if precision == "bf16" else "no native bf16 on this GPU")
                    + "; --mixed-precision no for float32)"
                )
    if runnable_precision(precision, cpu=cpu) != precision:
        return "bf16", "fp16 needs a CUDA GPU; training in bf16 autocast on this CPU instead"
    return precision, note


def runnable_precision(precision: str, *, cpu: bool) -> str:
    """`precision` (`no`, `fp16`, `bf16`) as this device can run it: fp16 autocast with gradient scaling is a
    CUDA recipe; on a CPU, bf16 gives the speed-up with fp32's exponent range and no scaler. Callers say so
    when the answer differs from what was asked for."""
    return "bf16" if precision == "fp16" and cpu else precision
