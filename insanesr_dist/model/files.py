"""The model's two file formats, for any module with a `config` dataclass: the safetensors weights file (tensors,
the config as JSON metadata, scores beside it) and the Hugging Face-style model folder (config.json +
model.safetensors, the model card beside them, downloadable from the Hub).

It knows no network class: architecture.py builds InsaneSRNet from what is read here (`from_pretrained`) and
weights.py loads every kind of weights into it, so both import this module and neither imports the other's user.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from insanesr_dist import __version__, run_files
from insanesr_dist.atomic import atomic_path, write_text_atomic
from insanesr_dist.errors import UserError

CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, ONNX_FILE = "config.json", "model.safetensors", "README.md", "model.onnx"
MODEL_TYPE = "insanesr"


def save_weights(model: torch.nn.Module, path: str | os.PathLike, **metadata: object) -> None:
    """Write the model's weights and config to one safetensors file, atomically.

    `metadata` (epoch, step, jm, ...) is stored as JSON strings beside the config.
    """
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    header = {"insanesr_config": json.dumps(asdict(model.config))}
    header.update({k: json.dumps(v) for k, v in metadata.items()})
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata=header)


def read_metadata(path: str | os.PathLike) -> dict[str, object]:
    """The JSON metadata of a weights file (config under `insanesr_config`), without loading tensors."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a readable safetensors weights file ({e})") from None
    return {k: json.loads(v) for k, v in raw.items()}


def hub_id(path: str | os.PathLike) -> bool:
    """`owner/name` that is no local path: a model folder on the Hugging Face Hub."""
    text = os.fspath(path)
    return (
        not os.path.exists(text)
        and text.count("/") == 1
        and not text.startswith((".", "/", "~"))
        and not text.endswith(".safetensors")
    )


def save_folder(model: torch.nn.Module, folder: str | os.PathLike, **metadata: object) -> None:
    """config.json (model_type, architectures, the config's fields) and model.safetensors (`metadata` as for
    `save_weights`) in `folder`."""
    folder = Path(folder)
    config = {
        "model_type": MODEL_TYPE,
        "architectures": [type(model).__name__],
        **asdict(model.config),
        "insanesr_dist_version": __version__,
    }
    save_weights(model, folder / WEIGHTS_FILE, **metadata)
    write_text_atomic(folder / CONFIG_FILE, json.dumps(config, indent=2) + "\n")


def _hub_snapshot(repo_id: str) -> Path:
    """A Hub model repository's folder files, downloaded into (or found in) the Hugging Face cache."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE, CARD_FILE]))
    except Exception as e:  # many network/auth/offline error types; the user needs one line
        raise UserError(
            f"{repo_id}: no such folder here, and not downloadable from the Hugging Face Hub ({type(e).__name__})"
        ) from None


def read_folder(folder: str | os.PathLike) -> tuple[dict, Path, Path]:
    """A model folder (or a Hub repo id, downloaded) checked: its config.json as a dict, that file's path and its
    weights file's path; a UserError names what is missing or unreadable."""
    path = Path(folder)
    if hub_id(folder):
        path = _hub_snapshot(os.fspath(folder))
    if not path.is_dir():
        raise UserError(f"{folder}: model folder not found")
    weights, config_file = path / WEIGHTS_FILE, path / CONFIG_FILE
    if not weights.is_file() or not config_file.is_file():
        hint = (
            "; this is a training run: pass RUN/best.safetensors or run `insanesr-dist export` on it"
            if (path / run_files.BEST).is_file()
            else ""
        )
        raise UserError(f"{path}: not an exported model folder (needs {CONFIG_FILE} and {WEIGHTS_FILE}){hint}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{config_file}: not readable JSON ({e})") from None
    if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE:
        raise UserError(f"{config_file}: model_type is not {MODEL_TYPE!r}; not an InsaneSRNet folder")
    return config, config_file, weights


def load_folder_weights(model: torch.nn.Module, weights: Path) -> None:
    """A folder's weights file into `model`, built from its config.json; one line when they do not fit."""
    try:
        model.load_state_dict(load_file(os.fspath(weights)))
    except (SafetensorError, RuntimeError, OSError) as e:
        first_line = str(e).strip().splitlines()[0]
        raise UserError(f"{weights}: weights do not fit {CONFIG_FILE} ({first_line})") from None
