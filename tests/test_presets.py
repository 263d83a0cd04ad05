"""Recipes: `--preset report` is the seed report's recipe exactly (`seed`, its former name, still accepted),
`default` the study's winner; the residual head, the losses, EMA (what gets saved) and loading weights written
before the head type existed."""

import json

import piq
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from conftest import NO_WORKERS, run_cli
from insanesr_dist.config import TrainConfig
from insanesr_dist.model.architecture import InsaneSRNet, ModelConfig, count_parameters
from insanesr_dist.model.files import read_metadata
from insanesr_dist.model.weights import load_model
from insanesr_dist.presets import PRESETS
from insanesr_dist.training.ema import WeightEMA
from insanesr_dist.training.losses import pixel_loss, training_loss
from insanesr_dist.training.optimizer import lr_at

TINY_MODEL = ["--num-rrdb", "1", "--channels", "8", "--growth", "8", "--layers-per-block", "2", "--panel-images", "0"]


def _bilinear(x):
    return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)


def test_report_preset_builds_the_report_model_loss_and_optimizer():
    cfg = TrainConfig(preset="report")
    # Model: the report's InsaneSRNet(num_rrdb=5, channels=64) with `torch.sigmoid(tail + bilinear skip)`.
    torch.manual_seed(0)
    model = InsaneSRNet(cfg.model).eval()
    assert cfg.model == ModelConfig(
        num_rrdb=5, channels=64, growth=32, layers_per_block=5, scale=4, output_head="sigmoid"
    )
    assert count_parameters(model) == 3_319_075
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        features = model.trunk_conv(model.trunk(model.head(x)))
        expected = torch.sigmoid(model.tail(model.upscale2(model.upscale1(features))) + _bilinear(x))
        assert torch.equal(model(x), expected)
    # Loss: nn.MSELoss, nothing added.
    sr, hr = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    assert cfg.loss == "mse" and cfg.ssim_weight == 0
    assert torch.equal(training_loss(cfg.loss, cfg.ssim_weight, sr, hr), F.mse_loss(sr, hr))
    # Optimizer: Adam(lr=1e-4), flat: no warmup, no schedule, no clipping, no EMA; whole images.
    assert [lr_at(s, peak=cfg.lr, warmup=cfg.warmup_steps, total=100, schedule=cfg.schedule) for s in (0, 50, 99)] == [
        1e-4
    ] * 3
    assert (cfg.max_grad_norm, cfg.ema_decay, cfg.patch_size, cfg.epochs) == (0, 0, 0, 10)


def test_default_preset_is_the_documented_recipe_and_explicit_settings_win():
    cfg = TrainConfig()
    assert cfg.preset == "default"
    assert {k: getattr(cfg, k) for k in PRESETS["default"]} == PRESETS["default"]
    assert cfg.model.output_head == "residual" and cfg.ema_decay > 0 and cfg.ssim_weight > 0
    mixed = TrainConfig(preset="report", lr=3e-4, output_head="residual", patch_size=24)
    assert (mixed.lr, mixed.output_head, mixed.patch_size) == (3e-4, "residual", 24)
    assert (mixed.loss, mixed.schedule, mixed.ema_decay) == ("mse", "constant", 0.0)  # the rest from the preset
    with pytest.raises(ValueError, match="preset must be one of"):
        TrainConfig(preset="fast")


def test_residual_head_starts_as_the_bilinear_skip_and_stays_in_range():
    torch.manual_seed(0)
    model = InsaneSRNet(num_rrdb=1, channels=8, growth=4, output_head="residual").eval()
    x = torch.rand(2, 3, 7, 9)
    with torch.no_grad():
        assert torch.equal(model(x), _bilinear(x).clamp(0, 1))
        model.tail.bias.fill_(5.0)
        assert model(x).max() == 1.0
    with pytest.raises(ValueError, match="output_head"):
        InsaneSRNet(output_head="tanh")


def test_weights_written_before_the_head_type_existed_load_as_the_seed_sigmoid_head(tmp_path):
    torch.manual_seed(0)
    old = InsaneSRNet(num_rrdb=1, channels=8, growth=4).eval()
    config = {"num_rrdb": 1, "channels": 8, "growth": 4, "layers_per_block": 5, "scale": 4}  # the old metadata
    save_file(
        {k: v.contiguous() for k, v in old.state_dict().items()},
        tmp_path / "old.safetensors",
        metadata={"insanesr_config": json.dumps(config), "epoch": "3"},
    )
    loaded = load_model(tmp_path / "old.safetensors").eval()
    assert loaded.config.output_head == "sigmoid"
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), old(x))
    save_file({}, tmp_path / "bad.safetensors", metadata={"insanesr_config": json.dumps({"output_head": "tanh"})})
    from insanesr_dist.errors import UserError

    with pytest.raises(UserError, match="output_head"):
        load_model(tmp_path / "bad.safetensors")


def test_losses():
    torch.manual_seed(0)
    hr = torch.rand(2, 3, 24, 24)
    sr = (hr + 0.1 * torch.randn_like(hr)).clamp(0, 1)
    assert torch.equal(pixel_loss("l1", sr, hr), (sr - hr).abs().mean())
    charbonnier = pixel_loss("charbonnier", sr, hr)
    assert pixel_loss("l1", sr, hr) < charbonnier < pixel_loss("l1", sr, hr) + 1e-3
    ssim = piq.ssim(sr, hr, data_range=1.0, kernel_size=7, downsample=False)
    assert 0 < ssim < 0.99
    combined = training_loss("l1", 0.5, sr, hr)
    assert combined == pytest.approx(float(pixel_loss("l1", sr, hr) + 0.5 * (1 - ssim)), abs=1e-6)
    assert training_loss("mse", 0.5, hr, hr) == pytest.approx(0.0, abs=1e-6)
    # The SSIM term sends gradient to the prediction.
    sr.requires_grad_(True)
    training_loss("l1", 0.5, sr, hr).backward()
    assert sr.grad.abs().sum() > 0


def test_ema_follows_the_weights_with_a_warm_up_ramp():
    live = torch.nn.Linear(2, 1)
    ema = WeightEMA(live, decay=0.999)
    start = live.weight.detach().clone()
    with torch.no_grad():
        live.weight.add_(1.0)
    ema.update(live)  # first update: d = 2/11
    assert torch.allclose(ema.module.weight, start + 1.0 * (1 - 2 / 11))
    assert not ema.module.weight.requires_grad
    restored = WeightEMA(torch.nn.Linear(2, 1), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 1 and restored.decay == 0.999
    assert torch.equal(restored.module.weight, ema.module.weight)


def test_the_former_preset_name_seed_still_names_the_report_recipe():
    # `--seed` is the random seed; the recipe's former name still works on the command line and in a file.
    from insanesr_dist.train import main

    assert main.make_context("train", ["--preset", "seed"]).params["preset"] == "report"
    assert TrainConfig(preset="seed") == TrainConfig(preset="report")
    assert "--preset [report|default]" in main.get_help(main.make_context("train", []))


@pytest.mark.slow
def test_a_report_preset_run_from_a_config_file_finishes_records_its_recipe_and_continues(pair_folder, tmp_path):
    config = tmp_path / "report.yaml"
    config.write_text("preset: seed\nlr: 0.0003\nbatch-size: 1\n")  # the recipe's former name
    out = tmp_path / "report"
    command = ["insanesr-dist", "train", "--data", str(pair_folder), "--output-dir", str(out), *TINY_MODEL, *NO_WORKERS]
    result = run_cli(*command, "--config", str(config), "--max-steps", "2", "--lr", "0.0002")
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((out / "config.json").read_text())
    assert saved["preset"] == "report" and saved["lr"] == 0.0002  # the command line beats the file
    assert saved["batch_size"] == 1  # the file beats the preset
    assert (saved["loss"], saved["patch_size"], saved["output_head"], saved["ema_decay"]) == ("mse", 0, "sigmoid", 0)
    assert read_metadata(out / "latest.safetensors")["insanesr_config"]["output_head"] == "sigmoid"
    # A run saved under the former name continues under the new one as with the same settings.
    (out / "config.json").write_text(json.dumps({**saved, "preset": "seed"}))
    more = ("--preset", "report", "--lr", "0.0002", "--batch-size", "1", "--max-steps", "3")
    continued = run_cli(*command, *more)
    assert continued.returncode == 0, continued.stderr[-3000:]
    assert "changed settings" not in continued.stdout, continued.stdout
    assert json.loads((out / "config.json").read_text())["preset"] == "report"


@pytest.mark.slow
def test_a_default_preset_run_saves_the_ema_weights(pair_folder, tmp_path):
    out = tmp_path / "default"
    result = run_cli(
        "insanesr-dist",
        "train",
        "--data",
        str(pair_folder),
        "--output-dir",
        str(out),
        "--max-steps",
        "3",
        "--patch-size",
        "8",
        "--batch-size",
        "4",
        *TINY_MODEL,
        *NO_WORKERS,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((out / "config.json").read_text())
    assert saved["preset"] == "default" and saved["output_head"] == "residual" and saved["ema_decay"] > 0
    latest = load_file(out / "latest.safetensors")
    final = sorted((out / "checkpoints").glob("step_*"))[-1]
    ema_weights = load_file(final / "ema.safetensors")  # the checkpoint's EMA: safetensors + JSON, no pickle
    live = load_file(final / "model.safetensors")
    assert json.loads((final / "ema.json").read_text())["updates"] == 3
    assert all(torch.equal(latest[k], ema_weights[k]) for k in latest)
    assert any(not torch.equal(latest[k], live[k]) for k in latest)  # the average, not the live weights
    assert read_metadata(out / "latest.safetensors")["insanesr_config"]["output_head"] == "residual"
