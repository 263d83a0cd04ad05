"""`insanesr-dist export`: a trained model as a folder to hand on, Hugging Face style.

OUT_DIR/config.json        model_type, architectures and the InsaneSRNet settings (what `from_pretrained` builds)
OUT_DIR/model.safetensors  the weights (its metadata also carries the config, so `load_model` reads it alone)
OUT_DIR/README.md          a model card: validation metrics per epoch, the training settings, how to use it
OUT_DIR/model.onnx         with --onnx: float32 NCHW in [0, 1], dynamic batch/height/width, checked with onnxruntime
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import click
import numpy as np
import torch

from insanesr_dist import __version__, run_files
from insanesr_dist.atomic import atomic_path, write_text_atomic
from insanesr_dist.commands import Command
from insanesr_dist.config import saved_settings
from insanesr_dist.errors import UserError
from insanesr_dist.model.architecture import InsaneSRNet, count_parameters
from insanesr_dist.model.files import CARD_FILE, CONFIG_FILE, ONNX_FILE, WEIGHTS_FILE, read_metadata
from insanesr_dist.model.weights import load_model

ONNX_TOLERANCE = 1e-4  # max abs difference from the PyTorch output, on [0, 1] pixels
TRACE_SIZE = (32, 32)  # height, width of the image the ONNX export traces; both stay dynamic


# ---------------------------------------------------------------------------------------------
# Model folders: save and load


# ---------------------------------------------------------------------------------------------
# What to export: a run directory or a weights file


def resolve_source(source: Path, which: str) -> tuple[Path, Path | None]:
    """(weights file, run directory or None) for a run directory, an exported folder or a weights file."""
    if source.is_dir():
        if (
            (source / WEIGHTS_FILE).is_file()
            and (source / CONFIG_FILE).is_file()
            and not (source / run_files.METRICS).exists()
        ):
            return source / WEIGHTS_FILE, None  # an exported folder: re-export (e.g. to add --onnx)
        weights = source / f"{which}.safetensors"
        if not weights.is_file():
            raise UserError(
                f"{source}: no {weights.name}; not a training run directory (or it has not finished an epoch yet)"
            )
        return weights, source
    if not source.is_file():
        raise UserError(f"{source}: no such run directory or weights file")
    run = source.parent
    return source, (run if (run / run_files.METRICS).is_file() and (run / run_files.CONFIG).is_file() else None)


def _read_run(run: Path | None) -> tuple[dict, list[dict]]:
    if run is None:
        return {}, []
    try:
        settings = saved_settings(json.loads((run / run_files.CONFIG).read_text(encoding="utf-8")))
        records = [
            json.loads(line)
            for line in (run / run_files.METRICS).read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    except (OSError, ValueError) as e:
        raise UserError(f"{run}: unreadable config.json or metrics.jsonl ({e})") from None
    return settings, records


# ---------------------------------------------------------------------------------------------
# The model card


def _number(value: object, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def model_card(
    model: InsaneSRNet, meta: dict, settings: dict, records: list[dict], name: str, onnx_note: str | None
) -> str:
    config = asdict(model.config)
    lines = [
        "---",
        "library_name: insanesr-dist",
        "pipeline_tag: image-to-image",
        "tags: [super-resolution, image-upscaling, insanesr-dist, safetensors" + (", onnx]" if onnx_note else "]"),
        "---",
        "",
        f"# {name}: InsaneSRNet x{config['scale']} super-resolution",
        "",
        (
            f"An InsaneSRNet ({count_parameters(model):,} parameters) trained with insanesr-dist {__version__}, "
            f"a distributed super-resolution training toolkit. It upscales RGB images "
            f"{config['scale']}x in each direction; input and output pixels are in [0, 1]."
        ),
        "",
        "## Validation metrics",
        "",
    ]
    if "jm" in meta:
        lines += [
            (
                f"These weights: epoch {meta.get('epoch')}, step {meta.get('step')}, "
                f"**JM {_number(meta['jm'])}** (PSNR {_number(meta.get('psnr'))} dB, "
                f"SSIM {_number(meta.get('ssim'))}); "
                "JM = 40·SSIM + PSNR, grader-exact on uint8 images."
            ),
            "",
        ]
    if records:
        lines += ["| epoch | step | train loss | PSNR | SSIM | JM | samples/s |", "|---|---|---|---|---|---|---|"]
        for r in records:
            mark = " ← exported" if r.get("epoch") == meta.get("epoch") else ""
            lines.append(
                f"| {r['epoch']}{mark} | {r['step']} | {_number(r.get('train_loss'), 6)} | "
                f"{_number(r.get('psnr'))} | {_number(r.get('ssim'))} | {_number(r.get('jm'))} | "
                f"{_number(r.get('samples_per_s'), 1)} |"
            )
        lines.append("")
    elif "jm" not in meta:
        lines += ["No metrics were stored with these weights.", ""]
    lines += ["## Model", "", "| setting | value |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in config.items()]
    lines.append("")
    if settings:
        lines += [
            "## Training settings",
            "",
            (
                "Saved as JSON, these reproduce the run: `insanesr-dist train --config settings.json` "
                "(adjust `data` and `output_dir`)."
            ),
            "",
            "```json",
            json.dumps(settings, indent=2),
            "```",
            "",
        ]
    lines += [
        "## Use",
        "",
        "```bash",
        "pip install -e .          # in an insanesr-dist checkout",
        "insanesr-dist predict --checkpoint THIS_FOLDER --input LR/ --output-dir SR/",
        "```",
        "",
        "```python",
        "from insanesr_dist.model import InsaneSRNet",
        'model = InsaneSRNet.from_pretrained("THIS_FOLDER").eval()  # a local folder or a Hub repo id',
        "sr = model(lr)  # lr: float32 N x 3 x H x W in [0, 1] -> N x 3 x 4H x 4W",
        "```",
        "",
    ]
    if onnx_note:
        lines += [
            "### ONNX",
            "",
            (
                f"`{ONNX_FILE}`: input `lr` (float32, N x 3 x H x W, RGB in [0, 1], any H and W), output `sr` "
                f"(N x 3 x {config['scale']}H x {config['scale']}W). {onnx_note}"
            ),
            "",
            "```python",
            "import onnxruntime",
            f'session = onnxruntime.InferenceSession("THIS_FOLDER/{ONNX_FILE}")',
            'sr = session.run(["sr"], {"lr": lr})[0]',
            "```",
            "",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# ONNX


def _onnx_modules():
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
        import onnxruntime
    except ImportError:
        raise UserError(
            "--onnx needs the onnx extra (onnx, onnxscript, onnxruntime): pip install -e '.[onnx]' in "
            "the insanesr-dist checkout, or pip install 'insanesr-dist[onnx]'"
        ) from None
    return onnxruntime


def export_onnx(model: InsaneSRNet, path: Path) -> None:
    """Export with torch's exporter; batch, height and width stay dynamic (traced on a TRACE_SIZE image)."""
    _onnx_modules()
    from torch.export import Dim

    shapes = {
        "x": {0: Dim("batch", min=1, max=1024), 2: Dim("height", min=2, max=16384), 3: Dim("width", min=2, max=16384)}
    }
    with atomic_path(path) as tmp, torch.no_grad():
        torch.onnx.export(
            model.eval().float(),
            (torch.rand(1, 3, *TRACE_SIZE),),
            tmp,
            dynamo=True,
            external_data=False,
            input_names=["lr"],
            output_names=["sr"],
            dynamic_shapes=shapes,
            verbose=False,
        )


def onnx_max_abs_diff(model: InsaneSRNet, path: Path, lr: np.ndarray) -> float:
    """Largest |onnxruntime - PyTorch| over the output pixels of one HxWx3 uint8 image, both float32."""
    onnxruntime = _onnx_modules()
    x = np.ascontiguousarray(lr.transpose(2, 0, 1)[None], dtype=np.float32) / 255
    with torch.no_grad():
        expected = model.eval().float()(torch.from_numpy(x)).numpy()
    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    got = session.run(["sr"], {"lr": x})[0]
    if got.shape != expected.shape:
        raise UserError(f"{path}: ONNX output is {got.shape}, PyTorch's {expected.shape}")
    return float(np.abs(got - expected).max())


def check_image(path: Path | None) -> np.ndarray:
    """The image the ONNX model is checked on: the user's, or a seeded smooth one of a size not traced."""
    if path is not None:
        from insanesr_dist.data.images import decode_rgb

        return decode_rgb(path.read_bytes(), str(path))
    rng = np.random.default_rng(0)
    import cv2

    return cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (61, 45), interpolation=cv2.INTER_CUBIC)


# ---------------------------------------------------------------------------------------------
# The command


def export(
    source: Path,
    out_dir: Path,
    *,
    which: str = "best",
    onnx: bool = False,
    check: Path | None = None,
    overwrite: bool = False,
) -> str:
    """Write the model folder; returns the summary line."""
    weights, run = resolve_source(source, which)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(f"{out_dir}: exists and is not empty; choose another folder or pass --overwrite")
    if onnx:
        _onnx_modules()  # fail before writing anything
    model = load_model(weights).eval()
    meta = {k: v for k, v in read_metadata(weights).items() if k != "insanesr_config"}
    settings, records = _read_run(run)
    onnx_note = None
    if onnx:
        image = check_image(check)
        export_onnx(model, out_dir / ONNX_FILE)
        diff = onnx_max_abs_diff(model, out_dir / ONNX_FILE, image)
        what = check.name if check else "a seeded test image"
        unseen = ", a size not used at export" if image.shape[:2] != TRACE_SIZE else ""
        onnx_note = (
            f"Checked with onnxruntime {_onnx_modules().__version__} against PyTorch on "
            f"{what} ({image.shape[1]}x{image.shape[0]}{unseen}): max abs diff {diff:.2e}."
        )
        if diff > ONNX_TOLERANCE:
            (out_dir / ONNX_FILE).unlink()
            raise UserError(
                f"{out_dir / ONNX_FILE}: ONNX output differs from PyTorch by up to {diff:.2e} "
                f"(> {ONNX_TOLERANCE:g}); not kept"
            )
    if not onnx and (out_dir / ONNX_FILE).exists():
        (out_dir / ONNX_FILE).unlink()  # --overwrite without --onnx: no stale ONNX beside new weights
    model.save_pretrained(out_dir, **meta)
    write_text_atomic(out_dir / CARD_FILE, model_card(model, meta, settings, records, out_dir.name, onnx_note))
    files = [CONFIG_FILE, WEIGHTS_FILE, CARD_FILE] + ([ONNX_FILE] if onnx else [])
    scores = f" (epoch {meta['epoch']}, JM {meta['jm']:.4f})" if "jm" in meta and "epoch" in meta else ""
    return f"exported {weights}{scores} -> {out_dir}: {', '.join(files)}" + (f"\n{onnx_note}" if onnx_note else "")


@click.command("export", cls=Command, context_settings={"max_content_width": 110})
@click.argument("source", metavar="RUN_OR_WEIGHTS", type=click.Path(exists=True, path_type=Path))
@click.argument("out_dir", metavar="OUT_DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--weights",
    "which",
    type=click.Choice(["best", "latest"]),
    default="best",
    show_default=True,
    help="Which weights of a run directory to export.",
)
@click.option(
    "--onnx",
    is_flag=True,
    help="Also write model.onnx (dynamic batch/height/width) and check it against "
    "PyTorch with onnxruntime; needs the onnx extra: pip install -e '.[onnx]'.",
)
@click.option(
    "--check-image",
    "check",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Image the ONNX model is checked on. [default: a seeded 61x45 image]",
)
@click.option("--overwrite", is_flag=True, help="Write into OUT_DIR even if it is not empty.")
def export_command(source: Path, out_dir: Path, which: str, onnx: bool, check: Path | None, overwrite: bool) -> None:
    """Write a trained model as a folder to share: config.json, model.safetensors and a model card README.md
    with the metrics and training settings (and model.onnx with --onnx).

    RUN_OR_WEIGHTS is a run directory (its best.safetensors is exported) or a .safetensors weights file.
    The folder loads with InsaneSRNet.from_pretrained(OUT_DIR) and works as `predict --checkpoint OUT_DIR`.

    \b
    Examples:
      insanesr-dist export runs/a models/insanesr-a
      insanesr-dist export runs/a/latest.safetensors models/a-latest --onnx
      insanesr-dist predict --checkpoint models/insanesr-a --input LR/ --output-dir SR/
      hf upload me/insanesr-a models/insanesr-a      # share it on the Hugging Face Hub
    """
    click.echo(export(source, out_dir, which=which, onnx=onnx, check=check, overwrite=overwrite))
