"""`insanesr-dist export`: a model folder that loads, predicts the run's pixels, and an ONNX model that matches."""

import json
import re

import cv2
import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, read_rgb, run_cli, write_png
from insanesr_dist.errors import UserError
from insanesr_dist.model.architecture import InsaneSRNet
from insanesr_dist.model.files import read_metadata
from insanesr_dist.model.weights import load_model
from insanesr_dist.tools.export import export

# Every test reads one ONNX export of the shared run (several seconds of exporter start-up).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(finished_run, tmp_path_factory):
    """The shared short run exported through the real command line, with --onnx."""
    run, _ = finished_run
    out = tmp_path_factory.mktemp("export") / "insanesr-tiny"
    result = run_cli("insanesr-dist", "export", str(run), str(out), "--onnx")
    assert result.returncode == 0, result.stderr[-3000:]
    return run, out, result.stdout


def test_folder_holds_config_weights_and_a_model_card(exported):
    run, out, _ = exported
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.onnx", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "insanesr" and config["architectures"] == ["InsaneSRNet"]
    assert (config["channels"], config["num_rrdb"], config["scale"]) == (8, 1, 4)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: insanesr-dist\n")
    best = read_metadata(run / "best.safetensors")
    assert f"**JM {best['jm']:.4f}**" in card
    for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        assert f"| {record['jm']:.4f} |" in card  # every epoch's validation JM
    # The training settings, as a JSON block that `train --config` reads back.
    settings = json.loads(re.search(r"```json\n(.*?)\n```", card, re.S).group(1))
    assert settings == json.loads((run / "config.json").read_text())


def test_from_pretrained_loads_the_best_weights(exported):
    run, out, _ = exported
    loaded, best = InsaneSRNet.from_pretrained(out), load_model(run / "best.safetensors")
    assert loaded.config == best.config
    state, expected = loaded.state_dict(), best.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)


def test_predict_on_the_folder_gives_the_pixels_of_the_best_weights(exported, pair_folder, tmp_path):
    run, out, _ = exported
    lr_dir = pair_folder / "test" / "LR"
    for checkpoint, pred in [(out, tmp_path / "folder"), (run / "best.safetensors", tmp_path / "weights")]:
        result = run_cli(
            "insanesr-dist",
            "predict",
            "--checkpoint",
            str(checkpoint),
            "--input",
            str(lr_dir),
            "--output-dir",
            str(pred),
        )
        assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "weights").iterdir())
    assert names == sorted(p.with_suffix(".png").name for p in lr_dir.iterdir())
    for name in names:
        assert np.array_equal(read_rgb(tmp_path / "folder" / name), read_rgb(tmp_path / "weights" / name))


def test_onnx_matches_pytorch_on_unseen_sizes(exported, pair_folder):
    import onnxruntime

    _, out, stdout = exported
    reported = float(re.search(r"max abs diff (\S+)\.$", stdout, re.M).group(1))
    assert 0 <= reported <= 1e-4
    model = InsaneSRNet.from_pretrained(out).eval()
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    test_image = read_rgb(next(iter(sorted((pair_folder / "test" / "LR").iterdir()))))  # 16x20, traced at 32x32
    odd = cv2.resize(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8), (53, 37), interpolation=cv2.INTER_CUBIC)
    for lr in [test_image, odd]:
        x = np.ascontiguousarray(lr.transpose(2, 0, 1)[None], dtype=np.float32) / 255
        got = session.run(["sr"], {"lr": x})[0]
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        assert got.shape == (1, 3, 4 * lr.shape[0], 4 * lr.shape[1])
        assert np.abs(got - expected).max() <= 1e-4


def test_bad_sources_and_targets_are_one_line_errors(exported, tmp_path):
    run, out, _ = exported
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a training run directory"):
        export(tmp_path / "empty", tmp_path / "x")
    with pytest.raises(UserError, match="not empty"):
        export(run, out)  # never overwrites a folder without --overwrite
    with pytest.raises(UserError, match="this is a training run"):
        InsaneSRNet.from_pretrained(run)
    write_png(tmp_path / "lr" / "a.png", np.zeros((8, 8, 3), np.uint8))
    # A run directory given to predict: one line that says what to pass instead.
    result = run_cli(
        "insanesr-dist",
        "predict",
        "--checkpoint",
        str(run),
        "--input",
        str(tmp_path / "lr"),
        "--output-dir",
        str(tmp_path / "pred"),
    )
    assert_one_line_error(result, str(run), "best.safetensors")
