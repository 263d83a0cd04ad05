"""The network and its files: InsaneSRNet and ModelConfig (architecture.py), the weights-file and model-folder
formats (files.py), and loading any weights into the network (weights.py).

The public API, as the docs use it (docs/run-directory.md, docs/export.md)::

    from insanesr_dist.model import InsaneSRNet, load_model
    model = InsaneSRNet.from_pretrained("models/insanesr-first")   # an exported folder or a Hub repo id
    model = load_model("runs/first/best.safetensors")               # a weights file, a folder or a Hub id

Imports point one way inside the package: weights -> architecture -> files; none of them imports training,
inference or the commands.
"""

from insanesr_dist.model.architecture import InsaneSRNet, ModelConfig, count_parameters
from insanesr_dist.model.files import read_metadata, save_weights
from insanesr_dist.model.weights import load_model

__all__ = ["InsaneSRNet", "ModelConfig", "count_parameters", "load_model", "read_metadata", "save_weights"]
