"""What a run reports, written by the main process only: TensorBoard, metrics.jsonl, console lines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from insanesr_dist import run_files
from insanesr_dist.atomic import append_line_atomic, write_text_atomic
from insanesr_dist.data.tensors import to_uint8
from insanesr_dist.errors import UserError
from insanesr_dist.training.host_memory import own_peak_rss_mb

VAL_SCALARS = ("psnr", "ssim", "jm", "psnr_piq", "ssim_piq")


def trackers(report_to: str) -> list[str]:
    """--report-to as accelerate's `log_with`: TensorBoard always (the panels and the hparams table are written to
    it), then the other trackers named. A name accelerate does not know, or whose package is not installed, is one
    line (accelerate itself would drop it with a warning)."""
    import accelerate.utils
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    names = list(dict.fromkeys(["tensorboard", *(n.strip() for n in report_to.split(",") if n.strip())]))
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise UserError(
                f"--report-to {report_to}: no tracker {name!r}; accelerate knows "
                f"{', '.join(sorted(LOGGER_TYPE_TO_CLASS))}"
            )
        if not getattr(accelerate.utils, f"is_{name}_available", lambda: False)():
            extra = " (pip install 'insanesr-dist[mlflow]')" if name == "mlflow" else ""
            raise UserError(f"--report-to {report_to}: {name} is not installed{extra}")
    return names


def peak_memory_mb() -> dict[str, float]:
    """This process's peak host memory (and peak CUDA memory allocated by torch, on a GPU), in MiB."""
    peaks = {"peak_cpu_mb": own_peak_rss_mb()}
    if torch.cuda.is_available():
        peaks["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peaks


def epoch_line(record: dict, epochs: int, improved: bool) -> str:
    scores = (
        f"PSNR {record['psnr']:.4f}  SSIM {record['ssim']:.4f}  JM {record['jm']:.4f}  "
        if "jm" in record
        else "(not validated)  "
    )
    evaluation = f" + {record['eval_seconds']:.1f}s eval" if record.get("eval_seconds") else ""
    return (
        f"epoch {record['epoch']}/{epochs}  step {record['step']}  loss {record['train_loss']:.6f}  {scores}"
        f"{record['seconds']:.1f}s{evaluation}  {record['samples_per_s']:.1f} samples/s"
        + (f"  data wait {100 * record['data_wait_fraction']:.0f}%" if "data_wait_fraction" in record else "")
        + ("  * best" if improved else "")
    )


def log_epoch(accelerator: Accelerator, out_dir: Path, record: dict, epochs: int, improved: bool) -> None:
    """Main process: one metrics.jsonl line, the epoch's TensorBoard scalars (validation, speed, memory and
    the mean training loss) and a summary line.

    An epoch that skipped validation (--val-every) has a record without the validation keys (psnr, ssim, jm,
    psnr_piq, ssim_piq, images) and writes no val/* scalars; readers of metrics.jsonl skip such records
    (`"jm" in record`) where they need scores. `seconds` is the training time; `eval_seconds` that of the
    validation, test-set prediction and rank-0 writes after it."""
    if not accelerator.is_main_process:
        return
    record = {**record, **peak_memory_mb()}
    # JSON has no infinity: a perfect image's PSNR is written as null.
    clean = {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in record.items()}
    append_line_atomic(out_dir / run_files.METRICS, json.dumps(clean))
    scalars = {f"val/{k}": record[k] for k in VAL_SCALARS if k in record}
    # The epoch's mean training loss at its last step: train/loss is only written every --log-every steps,
    # which runs with shorter epochs never reach.
    scalars["train/epoch_loss"] = record["train_loss"]
    scalars["perf/samples_per_s"] = record["samples_per_s"]
    scalars["perf/epoch_seconds"] = record["seconds"]
    if "data_wait_fraction" in record:  # of the epoch's training time spent waiting for batches (perf/data_wait_
        scalars["perf/epoch_data_wait_fraction"] = record["data_wait_fraction"]  # fraction: per --log-every steps)
    if "eval_seconds" in record:
        scalars["perf/eval_seconds"] = record["eval_seconds"]
    scalars.update({f"perf/{k}": v for k, v in record.items() if k.startswith("peak_")})
    accelerator.log(scalars, step=record["step"])
    accelerator.print(epoch_line(record, epochs, improved))


def log_evaluation(
    accelerator: Accelerator, scores: dict, *, step: int, epoch: int, seconds: float, improved: bool
) -> None:
    """Main process: a mid-epoch evaluation (--val-every-steps, --submit-every-steps): its val/* scalars at its
    step and a console line. metrics.jsonl keeps one line per epoch: these show in TensorBoard and the weights'
    metadata (best.safetensors, latest.safetensors) instead."""
    if not accelerator.is_main_process:
        return
    if scores:
        accelerator.log({f"val/{k}": scores[k] for k in VAL_SCALARS if k in scores}, step=step)
    shown = (
        f"PSNR {scores['psnr']:.4f}  SSIM {scores['ssim']:.4f}  JM {scores['jm']:.4f}  "
        if scores
        else "submission only  "
    )
    accelerator.print(f"step {step} (epoch {epoch})  {shown}{seconds:.1f}s eval" + ("  * best" if improved else ""))


@torch.no_grad()
def log_panels(accelerator: Accelerator, panels, step: int) -> None:
    """Main process: one TensorBoard image per fixed validation image, bilinear LR | SR | HR. `panels` yields
    (image id, LR, SR, HR) uint8 CHW tensors, the SR as validation upscales it (the loop makes it)."""
    if not accelerator.is_main_process:
        return
    writer = accelerator.get_tracker("tensorboard", unwrap=True)
    for image_id, lr, sr, hr in panels:
        shown = np.ascontiguousarray(panel(lr, sr, hr).cpu().numpy())  # only the finished panel goes to the host
        writer.add_image(f"panels/{image_id}", shown, step, dataformats="CHW")
    writer.flush()


def panel(lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """bilinear LR | SR | HR side by side: one 3xHx3W uint8 image from uint8 CHW ones, on the SR's device
    (where validation upscaled it; the LR and HR may come from elsewhere)."""
    lr = lr[None].to(sr.device).float() / 255
    upsampled = F.interpolate(lr, size=hr.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat([to_uint8(upsampled)[0], sr, hr.to(sr.device)], -1)


def keep_epoch_records(path: Path, *, before: int) -> None:
    """Drop metrics.jsonl lines of epochs >= `before`: a resumed run records them again."""
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        write_text_atomic(path, "".join(f"{line}\n" for line in lines if json.loads(line)["epoch"] < before))


# The hparams dashboard shows, beside each run's settings, the latest value of these scalars of the same run.
HPARAM_METRICS = ("val/jm", "val/psnr", "val/ssim", "perf/samples_per_s", "perf/peak_cpu_mb", "perf/peak_gpu_mb")


def start_hparams(accelerator: Accelerator, hparams: dict) -> None:
    """Main process: the run's settings for TensorBoard's hparams plugin, written into the run's own event
    files (not a sub-run, as `add_hparams` would), so the dashboard reads the final val JM, throughput and
    memory straight from the run's scalars, also while it trains or after a preemption. Other trackers
    (--report-to) get them as their run's parameters."""
    if not accelerator.is_main_process:
        return
    for tracker in accelerator.trackers:
        if tracker.name != "tensorboard":
            tracker.store_init_configuration(hparams)
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    metrics = [tag for tag in HPARAM_METRICS if tag != "perf/peak_gpu_mb" or torch.cuda.is_available()]
    experiment, session_start, _ = hparams_summaries(hparams, dict.fromkeys(metrics, 0.0))
    writer = accelerator.get_tracker("tensorboard", unwrap=True)
    writer.file_writer.add_summary(experiment)
    writer.file_writer.add_summary(session_start)
    writer.flush()


def end_hparams(accelerator: Accelerator) -> None:
    """Main process: mark the run finished (status success) in the hparams dashboard."""
    if not accelerator.is_main_process:
        return
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    writer = accelerator.get_tracker("tensorboard", unwrap=True)
    writer.file_writer.add_summary(hparams_summaries({}, {})[2])
    writer.flush()
