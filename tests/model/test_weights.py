import pytest
import torch

from insanesr_dist.errors import UserError
from insanesr_dist.model.architecture import InsaneSRNet, ModelConfig
from insanesr_dist.model.files import read_metadata, save_weights
from insanesr_dist.model.weights import load_model


def test_one_safetensors_file_rebuilds_the_model(tmp_path):
    torch.manual_seed(0)
    model = InsaneSRNet(num_rrdb=2, channels=16, growth=8, layers_per_block=3).eval()
    save_weights(model, tmp_path / "w.safetensors", epoch=3, jm=51.5)
    meta = read_metadata(tmp_path / "w.safetensors")
    assert meta["epoch"] == 3 and meta["jm"] == 51.5
    loaded = load_model(tmp_path / "w.safetensors").eval()
    assert loaded.config == ModelConfig(num_rrdb=2, channels=16, growth=8, layers_per_block=3, scale=4)
    x = torch.rand(1, 3, 9, 9)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temp file left behind


def test_bad_weights_files_give_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="not a readable safetensors"):
        load_model(junk)
    # Shapes that do not fit the stored config: a file whose metadata lies about the width.
    from safetensors.torch import save_file

    small = InsaneSRNet(num_rrdb=1, channels=8, growth=4)
    state = {k: v.contiguous() for k, v in small.state_dict().items()}
    save_file(
        state,
        tmp_path / "lie.safetensors",
        metadata={"insanesr_config": '{"num_rrdb": 1, "channels": 16, "growth": 4}'},
    )
    with pytest.raises(UserError, match="do not fit"):
        load_model(tmp_path / "lie.safetensors")
