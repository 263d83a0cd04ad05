"""`insanesr-dist predict` (also `accelerate launch -m insanesr_dist.predict`): a folder, an image or a saved
dataset's LR images upscaled into PNG files and/or a submission CSV, through the forward and tiling that
validation uses (inference/).

Every rank upscales its share of the images (tiled, optionally x8 self-ensembled), one image per rank per
round; each round's PNGs are gathered and the main process writes them, so no image is missing or
duplicated and host memory holds at most one round of encoded images.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from insanesr_dist.atomic import atomic_path
from insanesr_dist.commands import Command
from insanesr_dist.data.images import encode_png
from insanesr_dist.data.tensors import to_chw, to_hwc
from insanesr_dist.errors import UserError
from insanesr_dist.inference.forward import PRECISIONS, model_forward
from insanesr_dist.inference.tiles import exact_overlap, self_ensemble, upscale_image
from insanesr_dist.scoring.submission import write_submission
from insanesr_dist.training.precision import runnable_precision
from insanesr_dist.training.runtime import cores_per_local_process

# ---------------------------------------------------------------------------------------------
# Inputs: a folder of images or a `save_to_disk` dataset with an `lr` column


@dataclass(frozen=True)
class InputImage:
    """One input image: its id (the file name, the CSV's `id`), where it is (for messages), its bytes."""

    id: str
    name: str
    read: Callable[[], object]

    def decode(self) -> torch.Tensor:
        from insanesr_dist.data.images import decode_rgb

        return to_chw(decode_rgb(self.read(), self.name))


def list_inputs(path: Path, split: str | None) -> list[InputImage]:
    from insanesr_dist.data.images import IMAGE_SUFFIXES
    from insanesr_dist.data.pairs import is_saved_dataset, some_image_files

    if is_saved_dataset(path):
        return _dataset_inputs(path, split)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return [InputImage(path.name, str(path), path.read_bytes)]
    if not path.is_dir():
        raise UserError(f"{path}: not an image, a folder of images nor a saved dataset")
    return [InputImage(p.name, str(p), p.read_bytes) for p in some_image_files(path)]


def _dataset_inputs(path: Path, split: str | None) -> list[InputImage]:
    import datasets

    from insanesr_dist.data.sources import row_ids

    try:
        table = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises many types for damaged folders; the user needs one line
        raise UserError(f"{path}: cannot be loaded as a dataset ({type(e).__name__}: {e})") from None
    if isinstance(table, datasets.DatasetDict):
        split = split or ("test" if "test" in table else next(iter(table)) if len(table) == 1 else None)
        if split not in table:
            raise UserError(f"{path}: has splits {', '.join(table)}; choose one with --split")
        table, where = table[split], f"{path} ({split})"
    else:
        where = str(path)
    if "lr" not in table.column_names:
        raise UserError(f"{where}: needs an image column 'lr'; has {', '.join(table.column_names)}")
    try:
        table = table.cast_column("lr", datasets.Image(decode=False))
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: column 'lr' does not hold images ({e})") from None
    ids = list(table["id"]) if "id" in table.column_names else row_ids(len(table))
    if not ids:
        raise UserError(f"{where}: no rows")
    seen = set()
    for image_id in ids:
        if image_id in seen:
            raise UserError(f"{where}: id {image_id} appears more than once; a submission needs unique ids")
        seen.add(image_id)
    return [InputImage(str(i), f"{where} row {n} ({i})", lambda n=n: table[n]["lr"]) for n, i in enumerate(ids)]


def output_names(images: list[InputImage]) -> list[str]:
    """The PNG file each prediction is written to: the input's name with a .png suffix."""
    names, seen = [], {}
    for image in images:
        if Path(image.id).name != image.id or image.id in ("", ".", ".."):
            raise UserError(f"{image.name}: id {image.id!r} is not a plain file name")
        name = Path(image.id).stem + ".png"
        if name in seen:
            raise UserError(f"{image.name}: its prediction {name} would overwrite that of {seen[name]}")
        seen[name] = image.id
        names.append(name)
    return names


# ---------------------------------------------------------------------------------------------
# Sharded prediction


def predicted_rows(
    images: list[InputImage], upscale: Callable[[torch.Tensor], torch.Tensor], accelerator: Accelerator
) -> Iterator[tuple[int, bytes]]:
    """(index, PNG bytes) of every image, in order, on every rank; rank r predicts r, r+P, r+2P, ...

    Every rank must iterate to the end: each round is a collective. A bad image fails on its rank and is
    reported through the same gather, so every rank stops with the same error instead of hanging.
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    # Only on a terminal: in a log, a bar's carriage returns would glue an error onto its last line.
    with tqdm(
        total=len(images),
        desc="predict",
        leave=False,
        dynamic_ncols=True,
        disable=not (accelerator.is_local_main_process and sys.stderr.isatty()),
    ) as bar:
        for first in range(0, len(images), world):
            local = []
            if first + rank < len(images):
                try:
                    local = [(first + rank, encode_png(to_hwc(upscale(images[first + rank].decode()))), None)]
                except UserError as e:
                    local = [(first + rank, None, e.message)]
            got = gather_object(local) if world > 1 else local
            for index, png, problem in sorted(got, key=lambda row: row[0]):
                if problem:
                    raise UserError(problem)
                yield index, png
            bar.update(len(got))


def predict(
    *,
    checkpoint: Path,
    inputs: Path,
    output_dir: Path | None,
    csv: Path | None,
    split: str | None,
    tile: int,
    overlap: int,
    batch_size: int,
    tta: bool,
    precision: str,
    allow_pickle: bool = False,
) -> None:
    """Upscale every input, write the PNGs and/or the CSV (main process), print a one-line summary."""
    from insanesr_dist.model.weights import load_model

    started = time.perf_counter()
    cpu = not torch.cuda.is_available()
    accelerator = Accelerator(cpu=cpu, mixed_precision="no")  # autocast is ours: --mixed-precision
    runnable = runnable_precision(precision, cpu=cpu)
    note = " (fp16 needs a CUDA GPU: bf16 autocast on this CPU instead)" if runnable != precision else ""
    precision = runnable
    if cpu:  # `accelerate launch` sets OMP_NUM_THREADS=1; share the cores among this machine's processes
        torch.set_num_threads(cores_per_local_process(accelerator.num_processes))
    model = load_model(checkpoint, allow_pickle=allow_pickle)
    model = model.to(accelerator.device, memory_format=torch.channels_last).eval()
    images = list_inputs(inputs, split)
    names = output_names(images) if output_dir else []

    forward = model_forward(model, accelerator.device, precision)
    forward = self_ensemble(forward) if tta else forward

    def upscale(lr: torch.Tensor) -> torch.Tensor:
        return upscale_image(forward, lr, tile=tile, overlap=overlap, batch_size=batch_size, device=accelerator.device)

    main = accelerator.is_main_process
    rows = predicted_rows(images, upscale, accelerator)

    def written(rows):  # the main process writes each PNG as its round arrives
        for index, png in rows:
            if output_dir and main:
                with atomic_path(output_dir / names[index]) as tmp:
                    Path(tmp).write_bytes(png)
            yield images[index].id, png

    if csv and main:
        write_submission(csv, written(rows))
    else:
        for _ in written(rows):
            pass
    tiling = f"tile {tile} overlap {overlap} (exact from {exact_overlap(model.config)})" if tile else "tile off"
    accelerator.print(
        f"predicted {len(images)} images -> {' and '.join(str(p) for p in (output_dir, csv) if p)} in "
        f"{time.perf_counter() - started:.1f}s ({accelerator.num_processes} process(es) on {accelerator.device.type}, "
        f"precision {precision}{note}, {tiling}, TTA {'x8' if tta else 'off'})"
    )
    accelerator.wait_for_everyone()
    accelerator.end_training()  # leaves the process group cleanly, so every rank exits 0


@click.command("predict", cls=Command, context_settings={"max_content_width": 110})
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(path_type=Path),
    help="A .safetensors weights file (best.safetensors or latest.safetensors; the model config is in it), "
    "or a model folder written by `insanesr-dist export`.",
)
@click.option(
    "--input",
    "inputs",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="A folder of LR images (or one image), or a save_to_disk dataset with an 'lr' image column "
    "(and optionally 'id').",
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write one PNG per input here, named like the input with a .png suffix.",
)
@click.option(
    "--csv",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a submission CSV (id = the input file name, Encoded Image = base64 PNG).",
)
@click.option("--split", help="Which split of a saved DatasetDict to predict. [default: test, if present]")
@click.option(
    "--tile",
    default=128,
    show_default=True,
    type=click.IntRange(0),
    help="Tile edge in LR pixels; 0 upscales each image whole.",
)
@click.option(
    "--tile-overlap",
    "overlap",
    default=16,
    show_default=True,
    type=click.IntRange(0),
    help="LR pixels of context each tile reads beyond its share on every side; seams are blended over "
    "half of it. From 106 (default model; 4/3 of its receptive radius of 79) tiles give the untiled "
    "result exactly; 16 stays within 1/255 in practice.",
)
@click.option(
    "--batch-size", default=4, show_default=True, type=click.IntRange(1), help="Tiles per forward pass (per process)."
)
@click.option(
    "--tta/--no-tta",
    default=False,
    show_default=True,
    help="x8 self-ensemble: average over the 4 rotations of the image and of its mirror (8x slower).",
)
@click.option(
    "--mixed-precision",
    "precision",
    default="no",
    show_default=True,
    type=click.Choice(list(PRECISIONS)),
    help="no = float32 forward (IEEE: no TF32 on GPUs); bf16/fp16 autocast (fp16 needs CUDA; on a CPU "
    "it becomes bf16).",
)
@click.option(
    "--allow-pickle",
    is_flag=True,
    help="Also accept a PyTorch pickle state_dict (.pth/.pt): pickles can run code, so only trusted files.",
)
def main(
    checkpoint: Path,
    inputs: Path,
    output_dir: Path | None,
    csv: Path | None,
    split: str | None,
    tile: int,
    overlap: int,
    batch_size: int,
    tta: bool,
    precision: str,
    allow_pickle: bool,
) -> None:
    """Upscale LR images x4 with a trained InsaneSRNet: PNG files and/or a submission CSV.

    \b
    Examples:
      insanesr-dist predict --checkpoint runs/a/best.safetensors --input data/test/LR --csv submission.csv
      insanesr-dist predict --checkpoint best.safetensors --input LR/ --output-dir pred/ --tta --tile 256
      insanesr-dist predict --checkpoint models/insanesr-a --input LR/ --output-dir pred/   # an exported folder
      accelerate launch --multi_gpu --num_processes 2 -m insanesr_dist.predict --checkpoint W --input LR/ --csv s.csv
    """
    if not output_dir and not csv:
        raise click.UsageError("nothing to write: give --output-dir, --csv or both")
    try:
        predict(
            checkpoint=checkpoint,
            inputs=inputs,
            output_dir=output_dir,
            csv=csv,
            split=split,
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            tta=tta,
            precision=precision,
            allow_pickle=allow_pickle,
        )
    except UserError:
        if not PartialState().is_main_process:
            raise SystemExit(1) from None  # the main process prints the one error line
        raise


if __name__ == "__main__":
    main()
