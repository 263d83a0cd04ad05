"""The network and its files: ModelConfig (settings.py), InsaneSRNet (architecture.py), the weights-file and
model-folder formats (files.py), and loading any weights into the network (weights.py).

The public API, as the docs use it (docs/run-directory.md, docs/export.md)::

    from insanesr_dist.model import InsaneSRNet, load_model
    model = InsaneSRNet.from_pretrained("models/insanesr-first")   # an exported folder or a Hub repo id
    model = load_model("runs/first/best.safetensors")               # a weights file, a folder or a Hub id

Imports point one way inside the package: weights -> architecture -> files, settings; none of them imports
training, inference or the commands.
"""

from insanesr_dist.model.settings import ModelConfig

__all__ = ["InsaneSRNet", "ModelConfig", "count_parameters", "load_model", "read_metadata", "save_weights"]


def __getattr__(name: str) -> object:
    """The names backed by torch, imported on first use: importing any module of this package runs this file,
    and settings.py's users (config.py, so every command that builds a TrainConfig) must not pay for torch."""
    if name in ("InsaneSRNet", "count_parameters"):
        from insanesr_dist.model import architecture as module
    elif name in ("read_metadata", "save_weights"):
        from insanesr_dist.model import files as module
    elif name == "load_model":
        from insanesr_dist.model import weights as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
