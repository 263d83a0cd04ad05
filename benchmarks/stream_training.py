"""`insanesr-dist bench stream-training`: issue 24's training-level targets for `train --streaming`, measured on
real `accelerate launch --num_processes 1 -m insanesr_dist.train --streaming` processes reading parquet shards of
DIV2K-sized PNG pairs from a loopback HTTP server (shard_server.py, Range requests, every byte it sends counted
with its time):

 1. the time from the process start to the first optimizer step, streaming the large set vs the small one
    (target: at most 1.2x);
 2. the bytes fetched from the server before that step (target: at most 2 shards per DataLoader worker), and the
    size of the run's datasets cache, HF_HOME, after it (target: no copy of the training set);
 3. resuming from a checkpoint taken at 90 % of the stream's first pass over the large set: the time to the first
    step against a fresh start's (target: at most 1.2x);
 4. the peak RSS of the whole process tree (launcher, rank, DataLoader worker and its fork server), small set vs
    large set, for the same number of steps (target: within 10 %).

The pairs are made once (cached in --work-dir): photographs of scikit-image composited with a little noise, so a
2040x1344 HR PNG is about as large as a DIV2K one (~5 MB), written as `pack` writes shards (its ShardWriter: ~256 MB
files, row groups of at most a quarter of that). The large set is the small set's shard files served under
--copies times more names (symbolic links): only the counts of pairs and shards matter to these figures.

Each run reports the time of its first step from its own TensorBoard scalars (`--log-every 1`: the wall time of
the first `train/loss` it writes); the runs of a repeat are made one after the other, so their ratios are read
side by side on a machine that others share. Validation reads a tiny image folder (--val-hr-dir), so that what is
timed is the training stream's.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click

from insanesr_dist.tools.children import failure_line
from process_tree import kill_tree
from shard_server import ShardServer

TINY_MODEL = ["--num-rrdb", "1", "--channels", "8", "--growth", "8", "--layers-per-block", "2"]
RESUME_AT = 0.9  # of the stream's first pass over the large set
PASS_TARGETS = {"first_step_ratio": 1.2, "shards_per_worker": 2, "resume_ratio": 1.2, "rss_ratio": 1.1}


# ---------------------------------------------------------------------------------------------
# The data


def photo_pair(rng, hr_size: tuple[int, int], noise: float = 1.5):
    """(LR, HR) RGB uint8: an HR canvas (width, height) tiled with scikit-image's photographs at random scales
    and flips, plus Gaussian noise (a camera's: it gives the PNG a natural image's entropy); LR is its bicubic
    quarter."""
    import cv2
    import numpy as np
    import skimage.data

    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    width, height = hr_size
    canvas = np.zeros((height, width, 3), np.float32)
    y = 0
    while y < height:
        row_height, x = int(rng.integers(max(8, height // 4), max(9, height // 2))), 0
        while x < width:
            photo = photos[rng.integers(len(photos))]
            tile_width = max(8, int(photo.shape[1] * row_height / photo.shape[0] * rng.uniform(0.8, 1.2)))
            tile = cv2.resize(photo, (tile_width, row_height), interpolation=cv2.INTER_CUBIC)
            if rng.random() < 0.5:
                tile = tile[:, ::-1]
            h, w = min(row_height, height - y), min(tile_width, width - x)
            canvas[y : y + h, x : x + w] = tile[:h, :w]
            x += tile_width
        y += row_height
    canvas += rng.normal(0, noise, canvas.shape).astype(np.float32)
    hr = np.clip(canvas, 0, 255).astype(np.uint8)
    lr = cv2.resize(hr, (width // 4, height // 4), interpolation=cv2.INTER_CUBIC)
    return lr, hr


def build_shards(work: Path, pairs: int, hr_size: tuple[int, int], shard_mb: float) -> list[Path]:
    """The `pairs` distinct pairs as parquet shards (pack's writer and layout), made once per settings in `work`."""
    import numpy as np

    from insanesr_dist.data.images import encode_png
    from insanesr_dist.tools.pack import ShardWriter

    folder = work / f"pairs-{pairs}-{hr_size[0]}x{hr_size[1]}-{shard_mb:g}mb"
    done = folder / "shards.json"
    if done.is_file():
        return [folder / name for name in json.loads(done.read_text())]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    writer = ShardWriter(folder, "train", int(shard_mb * 2**20))
    rng = np.random.default_rng(0)
    for n in range(pairs):
        lr, hr = photo_pair(rng, hr_size)
        cells = {name: {"bytes": encode_png(image), "path": None} for name, image in (("lr", lr), ("hr", hr))}
        writer.add({"id": f"{n:04d}.png", **cells})
    written = writer.close()
    done.write_text(json.dumps([path.name for path in written]))
    return written


def serve_as(root: Path, name: str, files: list[Path], copies: int) -> str:
    """`files` linked `copies` times under hub-style names in root/name; the brace range naming them, relative
    to the server's root."""
    folder = root / name
    folder.mkdir(parents=True)
    total = len(files) * copies
    for i in range(total):
        (folder / f"train-{i:05d}-of-{total:05d}.parquet").symlink_to(files[i % len(files)].resolve())
    return f"{name}/train-{{{0:05d}..{total - 1:05d}}}-of-{total:05d}.parquet"


def val_folder(root: Path) -> Path:
    """Two small validation pairs: the runs validate once, at their end, and that is not what is measured."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(1)
    for n in range(2):
        lr, hr = photo_pair(rng, (128, 128))
        for kind, image in (("LR", lr), ("HR", hr)):
            (root / kind).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / kind / f"{n}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return root


# ---------------------------------------------------------------------------------------------
# A run


def launch_command(train_args: list[str]) -> list[str]:
    accelerate = Path(sys.executable).parent / "accelerate"
    launcher = [str(accelerate)] if accelerate.exists() else [sys.executable, "-m", "accelerate.commands.launch"]
    # Precision and dynamo are said, so that no accelerate config on the machine changes the run.
    return [
        *launcher,
        *("launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no"),
        *("--dynamo_backend", "no", "-m", "insanesr_dist.train", *train_args),
    ]


class TreeRSS:
    """The peaks over time of the summed RSS and PSS of a process and all its descendants, polled every `every` s.
    The RSS sum counts the pages that forked processes share (torch's, the fork server's) once per process; the
    PSS sum shares them out, so it is the memory the tree takes."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid, self.every, self.peak, self.peak_pss = pid, every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        import psutil

        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.pid)
            while not self._stop.is_set():
                rss = pss = 0
                for each in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                        memory = each.memory_full_info()
                        rss, pss = rss + memory.rss, pss + memory.pss
                self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)
                self._stop.wait(self.every)

    def stop(self) -> tuple[float, float]:
        """The peaks in MB: (RSS, PSS)."""
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20, self.peak_pss / 2**20


def first_step_time(out: Path, since: float) -> tuple[float, int]:
    """(wall time, step) of the first `train/loss` the run written to `out` since `since` logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from insanesr_dist import run_files

    found = []
    for events in (out / run_files.LOGS).rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        if "train/loss" in accumulator.Tags()["scalars"]:
            found += [(e.wall_time, e.step) for e in accumulator.Scalars("train/loss") if e.wall_time >= since]
    if not found:
        raise click.ClickException(f"{out}: the run logged no train/loss (see its .stdout beside it)")
    return min(found)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def run_training(server: ShardServer, data: str, out: Path, steps: int, common: list[str], timeout: float) -> dict:
    """One real training run to `steps` in `out` (a rerun of a run there resumes it): its first step, the bytes
    the server sent before it and in all, its datasets cache, its process tree's peak RSS."""
    caches = Path(tempfile.mkdtemp(prefix="stream-training-caches-"))
    env = {**os.environ, "HF_HOME": str(caches / "hf"), "XDG_CACHE_HOME": str(caches / "xdg"), "HF_HUB_OFFLINE": "1"}
    args = ["--data", f"{server.url}/{data}", "--output-dir", str(out), "--max-steps", str(steps), *common]
    out.mkdir(parents=True, exist_ok=True)
    logs = out.parent / f"{out.name}-{time.time():.0f}"
    try:
        with open(f"{logs}.stdout", "w") as stdout, open(f"{logs}.stderr", "w") as stderr:
            started = time.time()
            process = subprocess.Popen(
                launch_command(args), stdout=stdout, stderr=stderr, env=env, start_new_session=True
            )
            rss = TreeRSS(process.pid)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_tree(process)
                raise click.ClickException(f"a training run took over {timeout:.0f} s (log: {logs}.stderr)") from None
            finally:
                peak = rss.stop()
            ended = time.time()
        if process.returncode != 0:
            raise click.ClickException(f"training run failed: {failure_line(Path(f'{logs}.stderr').read_text())}")
        first, step = first_step_time(out, started)
        return {
            "first_step_s": first - started,
            "first_step": step,
            "bytes_before_first_step": server.bytes_between(started, first),
            "bytes_total": server.bytes_between(started, ended),
            "hf_home_bytes": folder_bytes(caches / "hf") if (caches / "hf").exists() else 0,
            "peak_tree_rss_mb": peak[0],
            "peak_tree_pss_mb": peak[1],
            "seconds": ended - started,
        }
    finally:
        shutil.rmtree(caches, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The benchmark


def measure(spec: dict) -> dict:
    """Every run of the benchmark (see the module's doc) as `spec` says; the figures of each and their summary."""
    work = Path(spec["work_dir"])
    hr_size = tuple(spec["hr_size"])
    files = build_shards(work, spec["pairs"], hr_size, spec["shard_mb"])
    shard_bytes = [path.stat().st_size for path in files]
    small, large = spec["pairs"], spec["pairs"] * spec["copies"]
    batch = spec["batch_size"]
    from insanesr_dist.data import stream

    settings = stream.StreamSettings(spec["patch_size"], batch, crops_per_decode=spec["crops_per_decode"])
    crops = stream.crops_per_pair(settings, hr_size)  # the pairs are all one size
    pass_steps = large * crops // batch  # the large set's first pass, in steps
    resume_step = max(1, int(RESUME_AT * pass_steps))
    common = [
        # An epoch (an evaluation round) ends at the checkpoint step: the checkpoint run validates once, at its
        # end, and its rerun with a larger --max-steps goes on into the next epoch.
        "--streaming", "--epoch-samples", str(resume_step * batch), "--log-every", "1", "--panel-images", "0",
        "--batch-size", str(batch), "--patch-size", str(spec["patch_size"]),
        "--num-workers", str(spec["workers"]),
        *(TINY_MODEL if spec["model"] == "tiny" else []),
    ]  # fmt: skip
    kept = spec.get("runs_dir")
    if kept:
        Path(kept).mkdir(parents=True, exist_ok=True)
    # The runs' folders and logs: kept in --runs-dir when given, to be read after.
    with (
        contextlib.nullcontext(tempfile.mkdtemp(prefix="stream-training-", dir=kept))
        if kept
        else (tempfile.TemporaryDirectory(prefix="stream-training-")) as tmp
    ):
        root = Path(tmp)
        served = root / "served"
        sets = {small: serve_as(served, "small", files, 1), large: serve_as(served, "large", files, spec["copies"])}
        val = val_folder(root / "val")
        common += ["--val-hr-dir", str(val / "HR"), "--val-lr-dir", str(val / "LR")]
        runs, timeout = [], spec["run_timeout"]
        with ShardServer(served) as server:
            # The checkpoint at 90 % of the large set's first pass: a run that stops there (its end saves it).
            checkpointed = root / "checkpointed"
            at_90 = run_training(server, sets[large], checkpointed, resume_step, common, timeout)
            at_90.update(kind="checkpoint run", pairs=large, steps=resume_step)
            for repeat in range(spec["repeats"]):
                # Alternate the order, so that neither set always runs first after the others' load changes.
                order = [small, large] if repeat % 2 == 0 else [large, small]
                for pairs in order:
                    figures = run_training(
                        server, sets[pairs], root / f"fresh-{pairs}-{repeat}", spec["steps"], common, timeout
                    )
                    runs.append({"kind": "fresh", "pairs": pairs, "repeat": repeat, "steps": spec["steps"], **figures})
                resumed = root / f"resumed-{repeat}"
                shutil.copytree(checkpointed, resumed, symlinks=True)
                steps = resume_step + spec["resume_steps"]
                figures = run_training(server, sets[large], resumed, steps, common, timeout)
                runs.append({"kind": "resumed", "pairs": large, "repeat": repeat, "steps": steps, **figures})
    return {
        "device": device_name(),
        "command": " ".join(launch_command(["--data", "http://127.0.0.1:PORT/<set>", *common_shown(common)])),
        "model": spec["model"],
        "set": {
            "pairs": small,
            "large_pairs": large,
            "hr_size": list(hr_size),
            "shards": len(files),
            "large_shards": len(files) * spec["copies"],
            "shard_mb": [round(b / 2**20, 1) for b in shard_bytes],
            "mb_per_pair": sum(shard_bytes) / small / 2**20,
            "workers": spec["workers"],
        },
        "pass_steps": pass_steps,
        "resume_step": resume_step,
        "checkpoint_run": at_90,
        "runs": runs,
        "summary": summarize(runs, small, large, sum(shard_bytes) / len(files), spec["workers"]),
    }


def common_shown(common: list[str]) -> list[str]:
    """The training flags as printed: the temporary validation folder's path left out."""
    shown, skip = [], False
    for arg in common:
        if skip:
            shown.append("<val>")
            skip = False
            continue
        shown.append(arg)
        skip = arg in ("--val-hr-dir", "--val-lr-dir")
    return shown


def summarize(runs: list[dict], small: int, large: int, mean_shard: float, workers: int) -> dict:
    """Per repeat: the ratios the targets are about; and the worst of the runs' bytes and caches."""
    repeats = sorted({run["repeat"] for run in runs})

    def one(kind: str, pairs: int, repeat: int) -> dict:
        return next(r for r in runs if r["kind"] == kind and r["pairs"] == pairs and r["repeat"] == repeat)

    rows = []
    for repeat in repeats:
        fresh_small, fresh_large, resumed = (
            one("fresh", small, repeat),
            one("fresh", large, repeat),
            one("resumed", large, repeat),
        )
        rows.append(
            {
                "first_step_ratio": fresh_large["first_step_s"] / fresh_small["first_step_s"],
                "resume_ratio": resumed["first_step_s"] / fresh_large["first_step_s"],
                "rss_ratio": fresh_large["peak_tree_rss_mb"] / fresh_small["peak_tree_rss_mb"],
                "pss_ratio": fresh_large["peak_tree_pss_mb"] / fresh_small["peak_tree_pss_mb"],
            }
        )
    fresh = [r for r in runs if r["kind"] == "fresh"]
    return {
        "per_repeat": rows,
        "max_shards_per_worker_before_first_step": max(r["bytes_before_first_step"] for r in fresh)
        / mean_shard
        / workers,
        "max_hf_home_bytes": max(r["hf_home_bytes"] for r in runs),
        "mean_shard_bytes": mean_shard,
    }


def device_name() -> str:
    import psutil

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"


def describe(result: dict) -> str:
    """The figures as a small table: a column per repeat, the target at the right."""
    s, runs, summary = result["set"], result["runs"], result["summary"]
    small, large = s["pairs"], s["large_pairs"]
    repeats = sorted({r["repeat"] for r in runs})
    mb = 2**20

    def cells(kind: str, pairs: int, key: str, scale: float = 1.0, fmt: str = "{:.1f}") -> list[str]:
        return [
            fmt.format(next(r for r in runs if (r["kind"], r["pairs"], r["repeat"]) == (kind, pairs, n))[key] / scale)
            for n in repeats
        ]

    def ratio(key: str) -> list[str]:
        return [f"{row[key]:.2f}x" for row in summary["per_repeat"]]

    shard = summary["mean_shard_bytes"]
    lines = [
        f"bench stream-training: {result['device']}",
        f"command: {result['command']}",
        f"model: {'tiny (' + ' '.join(TINY_MODEL) + ')' if result['model'] == 'tiny' else 'the default InsaneSRNet'}",
        (
            f"data: {small} vs {large} pairs of HR {s['hr_size'][0]}x{s['hr_size'][1]} PNG ({s['mb_per_pair']:.1f} MB "
            f"a pair) in {s['shards']} vs {s['large_shards']} parquet shards of "
            f"{', '.join(map(str, s['shard_mb']))} MB, served over loopback HTTP; {s['workers']} DataLoader worker(s)"
        ),
        "",
        f"{'':44}" + "".join(f"{'run ' + str(n + 1):>10}" for n in repeats) + "   target",
        (
            f"{'1. first step, ' + str(small) + ' pairs (s)':44}"
            + "".join(f"{c:>10}" for c in cells("fresh", small, "first_step_s"))
        ),
        f"{'   first step, ' + str(large) + ' pairs (s)':44}"
        + "".join(f"{c:>10}" for c in cells("fresh", large, "first_step_s")),
        f"{'   ratio':44}" + "".join(f"{c:>10}" for c in ratio("first_step_ratio")) + "   <= 1.2x",
    ]
    for pairs in (small, large):
        lines.append(
            f"{('2.' if pairs == small else '  ') + ' MB fetched before the first step, ' + str(pairs):44}"
            + "".join(f"{c:>10}" for c in cells("fresh", pairs, "bytes_before_first_step", mb))
            + f"   <= {2 * s['workers'] * shard / mb:.1f} (2 shards/worker)"
        )
    for pairs in (small, large):
        lines.append(
            f"{'   HF_HOME after the run (MB), ' + str(pairs):44}"
            + "".join(f"{c:>10}" for c in cells("fresh", pairs, "hf_home_bytes", mb, "{:.2f}"))
            + "   no copy of the set"
        )
    lines += [
        f"{'3. first step resumed at step ' + str(result['resume_step']) + '/' + str(result['pass_steps']) + ' (s)':44}"
        + "".join(f"{c:>10}" for c in cells("resumed", large, "first_step_s")),
        f"{'   ratio to the fresh start, ' + str(large) + ' pairs':44}"
        + "".join(f"{c:>10}" for c in ratio("resume_ratio"))
        + "   <= 1.2x",
        f"{'   MB fetched before it':44}"
        + "".join(f"{c:>10}" for c in cells("resumed", large, "bytes_before_first_step", mb)),
    ]
    for pairs in (small, large):
        lines.append(
            f"{('4.' if pairs == small else '  ') + ' peak RSS of the tree, ' + str(pairs) + ' pairs (MB)':44}"
            + "".join(f"{c:>10}" for c in cells("fresh", pairs, "peak_tree_rss_mb", 1.0, "{:.0f}"))
        )
    lines.append(f"{'   ratio':44}" + "".join(f"{c:>10}" for c in ratio("rss_ratio")) + "   within 10 %")
    for pairs in (small, large):
        lines.append(
            f"{'   peak PSS of the tree, ' + str(pairs) + ' pairs (MB)':44}"
            + "".join(f"{c:>10}" for c in cells("fresh", pairs, "peak_tree_pss_mb", 1.0, "{:.0f}"))
        )
    lines.append(f"{'   ratio':44}" + "".join(f"{c:>10}" for c in ratio("pss_ratio")))
    steps = next(r["steps"] for r in runs if r["kind"] == "fresh")
    at_90 = result["checkpoint_run"]
    lines.append(
        f"({steps} steps a fresh run; the checkpoint run took {at_90['seconds']:.0f} s to step "
        f"{result['resume_step']}, its first step {at_90['first_step_s']:.1f} s)"
    )
    return "\n".join(lines)
