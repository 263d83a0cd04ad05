"""Loading any weights into InsaneSRNet: `load_model` (our safetensors file, an exported model folder or Hub id,
or a plain PyTorch `state_dict` such as the seed report's `torch.save(model.state_dict(), 'best.pth')`),
`init_weights` for `train --init-from`, and naming exactly how a file's tensors differ from a model's.

Pickle files can run arbitrary code while they are read, so they are refused unless the user says
`--allow-pickle`; even then they are read with `torch.load(weights_only=True)`, which only accepts
tensors and plain containers. The file formats themselves (writing weights, metadata, folders) are files.py's,
and are imported from there.
"""

from __future__ import annotations

import os
import re

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from insanesr_dist import run_files
from insanesr_dist.errors import UserError
from insanesr_dist.model.architecture import InsaneSRNet, model_from_config
from insanesr_dist.model.files import WEIGHTS_FILE, hub_id, read_metadata

PICKLE_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt", ".pkl", ".pickle", ".tar"}


def is_pickle(path: str | os.PathLike) -> bool:
    """A torch.save / pickle file, by its first bytes (zip archive or pickle opcode) or by its name."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return True
    return os.path.splitext(os.fspath(path))[1].lower() in PICKLE_SUFFIXES and not _looks_safetensors(path)


def _looks_safetensors(path: str | os.PathLike) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header starting with '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path)


def load_pickled_state(path: str | os.PathLike, allow_pickle: bool, map_location) -> dict[str, torch.Tensor]:
    """The state_dict inside a torch.save file; refused without `allow_pickle`."""
    if not allow_pickle:
        raise UserError(
            f"{path}: is a pickle (torch.save) file, which can run code when loaded; use a .safetensors "
            "weights file, or pass --allow-pickle if you trust this file"
        )
    try:
        obj = torch.load(os.fspath(path), map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for foreign or damaged pickles; the user needs one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: cannot be read as a PyTorch state_dict ({first})") from None
    for key in ("state_dict", "model_state_dict", "model", "params", "params_ema"):  # common checkpoint layouts
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: holds no state_dict of tensors")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in obj.items()}


def config_from_state(state: dict[str, torch.Tensor], path: str | os.PathLike) -> dict[str, int]:
    """InsaneSRNet's sizes read off a state_dict's key names and shapes (a .pth carries no config)."""
    try:
        trunk = {int(m.group(1)) for k in state if (m := re.match(r"trunk\.(\d+)\.", k))}
        layers = {int(m.group(1)) for k in state if (m := re.match(r"trunk\.0\.rdb1\.layers\.(\d+)\.weight", k))}
        upscalers = {k for k in state if re.match(r"upscale\d+\.conv\.weight", k)}
        return {
            "num_rrdb": len(trunk),
            "channels": state["head.weight"].shape[0],
            "growth": state["trunk.0.rdb1.layers.0.weight"].shape[0],
            "layers_per_block": len(layers),
            "scale": 2 ** len(upscalers),
        }
    except KeyError as e:
        raise UserError(f"{path}: not InsaneSRNet weights (no {e.args[0]} tensor)") from None


def mismatch(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """How `state` fails to fit `model`, naming the first differing tensors, or None when it fits."""
    own = model.state_dict()
    problems = []
    for key in sorted(set(own) | set(state)):
        if key not in state:
            problems.append(f"{key} missing from the file")
        elif key not in own:
            problems.append(f"{key} in the file but not in the model")
        elif tuple(own[key].shape) != tuple(state[key].shape):
            problems.append(f"{key} is {list(state[key].shape)} in the file but {list(own[key].shape)} in the model")
    if not problems:
        return None
    return "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")


def init_source(source: str | os.PathLike) -> str:
    """The weights --init-from means: a run directory's best.safetensors (latest.safetensors before its first
    validation), an exported model folder's weights file; a weights file or a hub id as given."""
    path = os.fspath(source)
    if not os.path.isdir(path):
        return path
    for name in (WEIGHTS_FILE, run_files.BEST, run_files.LATEST):
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise UserError(
        f"{path}: neither a run directory with best.safetensors or latest.safetensors nor an exported "
        f"model folder ({WEIGHTS_FILE})"
    )


def init_weights(model: torch.nn.Module, source: str | os.PathLike, *, strict: bool = True) -> list[str]:
    """Copy the weights of `source` (see init_source; already resolved) into `model`. Strict: every tensor must
    exist with its shape, or one line names the first that does not. Not strict: the tensors that fit are
    copied; returns the names of those left at their initial value (missing from the file, or shaped otherwise).
    """
    state = load_model(source).state_dict()
    own = model.state_dict()
    problem = mismatch(model, state)
    if problem and strict:
        raise UserError(
            f"{source}: does not fit this model ({problem}); --no-init-strict copies the tensors "
            "that fit and leaves the rest at their initial value"
        )
    fits = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(fits, strict=False)
    return sorted(k for k in own if k not in fits)


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", *, allow_pickle: bool = False
) -> InsaneSRNet:
    """Rebuild an InsaneSRNet from one weights file written by `save_weights`, or from an exported folder.

    A pickle (`torch.save`) state_dict is refused unless `allow_pickle` (see above); its sizes are
    then read off the tensors' shapes."""
    if os.path.isdir(path) or hub_id(path):
        return InsaneSRNet.from_pretrained(path).to(map_location)
    if not os.path.isfile(path):
        raise UserError(f"{path}: weights file not found")
    if is_pickle(path):
        state = load_pickled_state(path, allow_pickle, map_location)
        model = InsaneSRNet(**config_from_state(state, path))
        problem = mismatch(model, state)
        if problem:
            raise UserError(f"{path}: not InsaneSRNet weights ({problem})")
        model.load_state_dict(state)
        return model.to(map_location)
    config = read_metadata(path).get("insanesr_config")
    if not isinstance(config, dict):
        raise UserError(f"{path}: no InsaneSRNet config in the file's metadata")
    model = model_from_config(config, f"{path}: unusable model config in the file's metadata")
    try:
        state = load_file(os.fspath(path), device=str(map_location))
    except (SafetensorError, RuntimeError, OSError) as e:
        first_line = str(e).strip().splitlines()[0]
        raise UserError(f"{path}: not a readable safetensors weights file ({first_line})") from None
    problem = mismatch(model, state)
    if problem:
        raise UserError(f"{path}: weights do not fit the model config stored in the file: {problem}")
    model.load_state_dict(state)
    return model
