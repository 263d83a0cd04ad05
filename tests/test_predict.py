"""Prediction: tile layout and blending, x8 self-ensemble, and the real `predict` / `bench` command lines."""

from __future__ import annotations

import itertools

import cv2
import datasets
import numpy as np
import pytest
import torch

from conftest import (
    NO_WORKERS,
    TINY,
    accelerate_launch,
    assert_one_line_error,
    make_pair_folder,
    read_rgb,
    run_cli,
    write_png,
)
from insanesr_dist.errors import UserError
from insanesr_dist.inference.tiles import (
    RAMP,
    axis_weights,
    exact_overlap,
    layout,
    receptive_radius,
    self_ensemble,
    upscale_for_eval,
    upscale_image,
)
from insanesr_dist.model.architecture import InsaneSRNet, ModelConfig
from insanesr_dist.model.files import save_weights
from insanesr_dist.predict import list_inputs
from insanesr_dist.scoring.submission import read_submission
from insanesr_dist.tools.evaluate import evaluate_predictions

TINY_MODEL = dict(num_rrdb=1, channels=8, growth=8, layers_per_block=2)


def tiny_model(seed: int = 0) -> InsaneSRNet:
    torch.manual_seed(seed)
    return InsaneSRNet(**TINY_MODEL).eval()


def textured(height: int, width: int, seed: int) -> np.ndarray:
    """An image none of the models has seen: smooth colour noise with sharp edges on top."""
    rng = np.random.default_rng(seed)
    image = cv2.resize(
        rng.integers(0, 256, (height // 4 + 2, width // 4 + 2, 3), dtype=np.uint8),
        (width, height),
        interpolation=cv2.INTER_CUBIC,
    )
    cv2.rectangle(image, (width // 5, height // 4), (width // 2, height - 3), (250, 30, 20), 2)
    return image


def chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_weights(tiny_model(), path, epoch=1)
    return path


@pytest.fixture(scope="module")
def lr_folder(tmp_path_factory):
    """Unseen LR images of uneven sizes and three file types (lossless ones, so pixels are known exactly)."""
    root = tmp_path_factory.mktemp("lr")
    for i, (size, suffix) in enumerate(
        [((23, 31), ".png"), ((40, 26), ".bmp"), ((17, 17), ".png"), ((30, 45), ".tiff"), ((12, 20), ".png")]
    ):
        write_png(root / f"im{i}{suffix}", textured(*size, seed=100 + i))
    (root / "notes.txt").write_text("not an image")
    return root


# ---------------------------------------------------------------------------------------------
# Tiles


@pytest.mark.parametrize("tile,overlap", [(1, 0), (7, 3), (16, 5), (64, 16), (10, 20)])
def test_layout_covers_each_axis_with_blend_weights_that_sum_to_one(tile, overlap):
    for length in itertools.chain(range(1, 80), [130, 257, 1000]):
        axis = layout(length, tile, overlap)
        assert all(s >= 0 and s + axis.window <= length for s in axis.starts)
        if len(axis.starts) > 1:
            assert axis.window == tile + 2 * overlap
            assert all(a + axis.window - b >= 2 * overlap for a, b in zip(axis.starts, axis.starts[1:]))
            assert len(layout(length, tile, overlap).starts) - 1 < (length - 2 * overlap) / tile  # no spare tile
        weights = axis_weights(axis, length, 4, overlap * RAMP)
        total = torch.zeros(4 * length)
        for start, w in zip(axis.starts, weights):
            total[4 * start : 4 * (start + axis.window)] += w
            # Every output pixel a tile contributes to is >= 3/4 overlap LR pixels inside its window
            # (image borders aside): what makes tiling exact once that covers the receptive radius.
            centres = (torch.nonzero(w > 0).flatten().double() + 0.5) / 4 + start
            if start > 0:
                assert (centres - start).min() >= overlap * (1 - RAMP / 2)
            if start + axis.window < length:
                assert (start + axis.window - centres).min() >= overlap * (1 - RAMP / 2)
        torch.testing.assert_close(total, torch.ones(4 * length))


@pytest.mark.parametrize(
    "config", [ModelConfig(**TINY_MODEL), ModelConfig(num_rrdb=2, channels=4, growth=4, layers_per_block=3, scale=2)]
)
def test_receptive_radius_is_where_the_gradient_ends(config):
    torch.manual_seed(0)
    model = InsaneSRNet(config).double()
    radius = receptive_radius(config)
    n = 2 * radius + 9
    reach = 0
    for k in range(config.scale):  # every output pixel of the centre LR pixel
        x = torch.rand(1, 3, n, n, dtype=torch.float64, requires_grad=True)
        model(x)[0, :, (n // 2) * config.scale + k, (n // 2) * config.scale + k].sum().backward()
        reach = max(reach, (torch.nonzero(x.grad.abs().sum((0, 1)) > 0) - n // 2).abs().max().item())
    assert reach == radius
    assert receptive_radius(ModelConfig()) == 79  # the default model: a 159x159 LR-pixel receptive field


def test_tiles_equal_the_whole_image_once_the_overlap_covers_the_receptive_field():
    model = tiny_model()
    lr = chw(textured(45, 70, seed=1))
    full = upscale_image(model, lr, quantize=False)
    exact_from = exact_overlap(model.config)
    assert exact_from == 14  # receptive radius 10 / (1 - RAMP / 2)
    for tile, overlap, batch in [(8, exact_from, 3), (16, exact_from + 3, 1), (5, exact_from, 64)]:
        tiled = upscale_image(model, lr, tile=tile, overlap=overlap, batch_size=batch, quantize=False)
        assert (tiled - full).abs().max() < 1e-5
        assert (upscale_image(model, lr, tile=tile, overlap=overlap).int() - to_u8(full)).abs().max() <= 1
    # The test can fail: with too little context the tiles differ from the whole image.
    assert (upscale_image(model, lr, tile=8, overlap=2, quantize=False) - full).abs().max() > 1e-4


def test_validation_upscales_and_composes_panels_on_the_images_device():
    """Training validates on the accelerator: the SR (whole or tiled) and the LR | SR | HR panel stay on the image's
    device, not the host. On torch's `meta` device any trip through the host raises, as a mix of devices
    would on a GPU."""
    from insanesr_dist.training.tracking import panel

    model = InsaneSRNet(**TINY_MODEL).eval().to("meta")
    lr = torch.empty(3, 20, 28, dtype=torch.uint8, device="meta")
    assert (len(layout(20, 8, 2).starts), len(layout(28, 8, 2).starts)) == (2, 3)  # tile 8: really tiled
    for tile in (0, 8):
        sr = upscale_for_eval(model, lr, tile=tile, overlap=2)
        assert (sr.device.type, sr.dtype, sr.shape) == ("meta", torch.uint8, (3, 80, 112))
        hr = torch.zeros(3, 80, 112, dtype=torch.uint8)  # the panel images' HR stay on the host (train._panels)
        shown = panel(lr, sr, hr)
        assert (shown.device.type, shown.dtype, shown.shape) == ("meta", torch.uint8, (3, 80, 336))


def to_u8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def test_x8_self_ensemble_equals_the_hand_computed_average():
    model = tiny_model()
    x = torch.from_numpy(textured(13, 19, seed=2).transpose(2, 0, 1).copy())[None].float() / 255
    with torch.no_grad():
        outputs = [model(x), model(x.flip(-1)).flip(-1)]
        for k in (1, 2, 3):
            outputs.append(torch.rot90(model(torch.rot90(x, k, (2, 3))), -k, (2, 3)))
            outputs.append(torch.rot90(model(torch.rot90(x, k, (2, 3)).flip(-1)).flip(-1), -k, (2, 3)))
        expected = torch.stack(outputs).mean(0)
        got = self_ensemble(model)(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert (expected - model(x)).abs().max() > 1e-3  # the ensemble is not the plain prediction


# ---------------------------------------------------------------------------------------------
# The command line


def test_predict_writes_pngs_and_a_csv_that_match(tiny_weights, lr_folder, tmp_path):
    out, csv_path = tmp_path / "pred", tmp_path / "sub.csv"
    result = run_cli(
        "insanesr-dist",
        "predict",
        "--checkpoint",
        str(tiny_weights),
        "--input",
        str(lr_folder),
        "--output-dir",
        str(out),
        "--csv",
        str(csv_path),
        "--tile",
        "8",
        "--tile-overlap",
        "20",
        "--batch-size",
        "3",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "predicted 5 images" in result.stdout
    inputs = sorted(p.name for p in lr_folder.iterdir() if p.suffix != ".txt")
    assert sorted(p.name for p in out.iterdir()) == sorted(n.rsplit(".", 1)[0] + ".png" for n in inputs)
    rows = read_submission(csv_path)
    assert list(rows) == inputs  # ids are the input file names, in order, each once
    model = tiny_model()
    for name, image in rows.items():
        lr = read_rgb(lr_folder / name)
        assert np.array_equal(read_rgb(out / (name.rsplit(".", 1)[0] + ".png")), image)
        plain = upscale_image(model, chw(lr)).permute(1, 2, 0).numpy()
        assert image.shape == (4 * lr.shape[0], 4 * lr.shape[1], 3)
        assert np.abs(image.astype(int) - plain).max() <= 1
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.slow
def test_predict_tta_and_bf16_through_the_command_line(tiny_weights, lr_folder, tmp_path):
    result = run_cli(
        "insanesr-dist",
        "predict",
        "--checkpoint",
        str(tiny_weights),
        "--input",
        str(lr_folder),
        "--output-dir",
        str(tmp_path / "tta"),
        "--tta",
        "--tile",
        "8",
        "--tile-overlap",
        "20",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model = tiny_model()
    for path in sorted((tmp_path / "tta").iterdir()):
        lr = read_rgb(next(lr_folder.glob(path.stem + ".*")))
        with torch.no_grad():
            expected = to_u8(self_ensemble(model)(chw(lr)[None].float() / 255))[0].permute(1, 2, 0).numpy()
        diff = np.abs(read_rgb(path).astype(int) - expected)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    result = run_cli(
        "insanesr-dist",
        "predict",
        "--checkpoint",
        str(tiny_weights),
        "--input",
        str(lr_folder),
        "--csv",
        str(tmp_path / "half.csv"),
        "--mixed-precision",
        "fp16",
        "--tile",
        "0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bf16" in result.stdout  # fp16 needs CUDA; the note says what ran instead
    for name, image in read_submission(tmp_path / "half.csv").items():
        plain = upscale_image(model, chw(read_rgb(lr_folder / name))).permute(1, 2, 0).numpy()
        assert np.abs(image.astype(int) - plain).mean() < 4


@pytest.mark.slow
def test_tta_raises_the_jm_of_a_trained_model_on_unseen_images(pair_folder, tmp_path):
    # A short real training run; its x8 ensemble must score higher on images from another generator seed.
    # (Measured on the demo data with longer runs: +0.30 JM for the default model, +0.30 for a small one.)
    run = tmp_path / "run"
    # The report recipe: the default one starts as the bilinear skip and keeps an EMA of the weights, so after
    # 10 steps its output is still too close to bilinear for an ensemble to change it measurably.
    result = run_cli(
        "insanesr-dist",
        "train",
        "--data",
        str(pair_folder),
        "--epochs",
        "2",
        "--output-dir",
        str(run),
        *TINY,
        *NO_WORKERS,
        "--preset",
        "report",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    unseen = make_pair_folder(tmp_path / "unseen", num_train=6, num_test=0, lr_size=(24, 24), seed=100)
    scores = {}
    for flag in ("--no-tta", "--tta"):
        result = run_cli(
            "insanesr-dist",
            "predict",
            "--checkpoint",
            str(run / "best.safetensors"),
            "--input",
            str(unseen / "train" / "LR"),
            "--output-dir",
            str(tmp_path / flag),
            flag,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        scores[flag] = evaluate_predictions(tmp_path / flag, unseen / "train" / "HR")["jm"]
    assert scores["--tta"] > scores["--no-tta"] + 0.02, scores


@pytest.mark.slow
def test_tile_64_overlap_16_matches_untiled_with_the_default_model(tmp_path):
    torch.manual_seed(0)
    save_weights(InsaneSRNet(), tmp_path / "default.safetensors")
    write_png(tmp_path / "lr" / "big.png", textured(150, 170, seed=3))  # 2 x 3 tiles of 96x96
    args = [
        "insanesr-dist",
        "predict",
        "--checkpoint",
        str(tmp_path / "default.safetensors"),
        "--input",
        str(tmp_path / "lr"),
    ]
    tiled = run_cli(*args, "--output-dir", str(tmp_path / "tiled"), "--tile", "64", "--tile-overlap", "16")
    whole = run_cli(*args, "--output-dir", str(tmp_path / "whole"), "--tile", "0")
    assert tiled.returncode == 0 and whole.returncode == 0, tiled.stderr[-2000:] + whole.stderr[-2000:]
    diff = np.abs(read_rgb(tmp_path / "tiled" / "big.png").astype(int) - read_rgb(tmp_path / "whole" / "big.png"))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_predict_reads_a_saved_dataset(tiny_weights, lr_folder, tmp_path):
    images = [cv2.imencode(".png", cv2.imread(str(p)))[1].tobytes() for p in sorted(lr_folder.glob("*.png"))]
    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"lr": [{"bytes": b, "path": None} for b in images[:1]]}),
            "test": datasets.Dataset.from_dict({"lr": [{"bytes": b, "path": None} for b in images]}),
        }
    ).cast_column("lr", datasets.Image())
    splits.save_to_disk(str(tmp_path / "ds"))
    result = run_cli(
        "insanesr-dist",
        "predict",
        "--checkpoint",
        str(tiny_weights),
        "--input",
        str(tmp_path / "ds"),
        "--csv",
        str(tmp_path / "ds.csv"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_submission(tmp_path / "ds.csv")
    assert list(rows) == [f"{i:05d}.png" for i in range(len(images))]  # the test split, ids from row numbers
    first = cv2.cvtColor(cv2.imdecode(np.frombuffer(images[0], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert rows["00000.png"].shape == (4 * first.shape[0], 4 * first.shape[1], 3)
    # A plain dataset with ids: those are the CSV ids; a repeated id is refused before any work.
    named = datasets.Dataset.from_dict(
        {"id": ["b.png", "a.png"], "lr": [{"bytes": b, "path": None} for b in images[:2]]}
    )
    named.cast_column("lr", datasets.Image()).save_to_disk(str(tmp_path / "named"))
    sources = list_inputs(tmp_path / "named", None)
    assert [s.id for s in sources] == ["b.png", "a.png"] and torch.equal(sources[0].decode(), chw(first))
    named.map(lambda row: {"id": "same.png"}).save_to_disk(str(tmp_path / "twice"))
    with pytest.raises(UserError, match=r"same\.png appears more than once"):
        list_inputs(tmp_path / "twice", None)


@pytest.mark.parametrize(
    "case,needles",
    [
        ("no-weights", ["missing.safetensors", "not found"]),
        ("text-weights", ["notes.safetensors", "not a readable safetensors"]),
        ("no-images", ["no images found"]),
        ("bad-image", ["broken.png", "cannot be decoded"]),
        ("collision", ["im0.png", "would overwrite"]),
        ("no-output", ["--output-dir, --csv or both"]),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(case, needles, tiny_weights, lr_folder, tmp_path):
    weights, inputs, outputs = tiny_weights, lr_folder, ["--output-dir", str(tmp_path / "out")]
    if case == "no-weights":
        weights = tmp_path / "missing.safetensors"
    if case == "text-weights":
        weights = tmp_path / "notes.safetensors"
        weights.write_text("hello")
    if case == "no-images":
        inputs = tmp_path / "empty"
        inputs.mkdir()
    if case in ("bad-image", "collision"):
        inputs = tmp_path / "in"
        write_png(inputs / "im0.png", textured(12, 12, seed=0))
        if case == "bad-image":
            (inputs / "broken.png").write_bytes(b"\x89PNG not really")
        else:
            write_png(inputs / "im0.bmp", textured(12, 12, seed=1))
    if case == "no-output":
        outputs = []
    result = run_cli("insanesr-dist", "predict", "--checkpoint", str(weights), "--input", str(inputs), *outputs)
    assert_one_line_error(result, *needles)


@pytest.mark.slow
def test_bench_predict_reports_speed_and_peak_memory(tiny_weights):
    result = run_cli(
        "insanesr-dist",
        "bench",
        "predict",
        "--size",
        "48",
        "--untiled-size",
        "16",
        "--tile",
        "16",
        "--tile-overlap",
        "4",
        "--checkpoint",
        str(tiny_weights),
        "--threads",
        "1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tiled, whole = (line for line in result.stdout.splitlines() if line.startswith(("tiled", "untiled")))
    assert "48x48 LR -> 192x192" in tiled and "LR MP/s" in tiled and "(OK: limit 3072 MB)" in tiled
    assert float(tiled.split("peak RSS ")[1].split()[0]) > 50
    assert "16x16 LR" in whole and "LR MP/s" in whole


@pytest.mark.slow
def test_two_processes_share_the_images_and_rank_0_writes_each_once(tiny_weights, lr_folder, tmp_path):
    # 5 images over 2 ranks: uneven shares; the ids must come out once each, in order.
    launch = [
        *accelerate_launch(2, target=("-m", "insanesr_dist.predict")),
        "--checkpoint",
        str(tiny_weights),
        "--tile",
        "8",
        "--tile-overlap",
        "20",
    ]
    result = run_cli(
        *launch,
        "--input",
        str(lr_folder),
        "--output-dir",
        str(tmp_path / "out"),
        "--csv",
        str(tmp_path / "two.csv"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "2 process(es)" in result.stdout
    rows = read_submission(tmp_path / "two.csv")
    assert list(rows) == sorted(p.name for p in lr_folder.iterdir() if p.suffix != ".txt")
    assert len(list((tmp_path / "out").iterdir())) == 5
    model = tiny_model()
    for name, image in rows.items():
        plain = upscale_image(model, chw(read_rgb(lr_folder / name))).permute(1, 2, 0).numpy()
        assert np.abs(image.astype(int) - plain).max() <= 1
    # A bad image on one rank stops both ranks with its name, instead of leaving the other waiting.
    bad = tmp_path / "bad"
    for i in range(3):
        write_png(bad / f"ok{i}.png", textured(12, 12, seed=i))
    (bad / "ok1.png").write_bytes(b"garbage")
    result = run_cli(*launch, "--input", str(bad), "--csv", str(tmp_path / "bad.csv"), timeout=300)
    assert result.returncode != 0
    assert "ok1.png: cannot be decoded" in result.stderr
    assert not (tmp_path / "bad.csv").exists()
