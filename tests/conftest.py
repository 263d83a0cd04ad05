"""Shared fixtures: an isolated cache, small real datasets on disk, and a runner for real CLI processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from process_tree import kill_tree

# A tiny InsaneSRNet and short runs: the end-to-end tests exercise every file the toolkit writes,
# not the model's quality.
TINY = [
    "--num-rrdb",
    "1",
    "--channels",
    "8",
    "--growth",
    "8",
    "--layers-per-block",
    "2",
    "--patch-size",
    "8",
    "--batch-size",
    "4",
    "--panel-images",
    "2",
]
# For runs whose test is not about the DataLoader workers: the batches are cut in the training process, which
# saves each run the workers' fork server (one more interpreter importing torch, ~1.7 s of CPU). The worker
# count is a setting a run may change on resume without changing its result (training/resume.py's RESUMABLE).
NO_WORKERS = ["--num-workers", "0"]


MAX_WORKERS = 4  # each worker holds its own shared runs and caches (finished_run, the decoded store)


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: a worker per core this process may use, whether or not the cores are hyperthreads (a 2-vCPU
    machine may report one physical core), at most MAX_WORKERS."""
    return min(MAX_WORKERS, len(os.sched_getaffinity(0)))


def pytest_configure(config) -> None:
    """A pytest-xdist worker takes its share of the cores, and so does every process its tests start: their
    torch threads then never wait on each other's (the toolkit sizes its thread pools by the cores a process
    may use)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...
    if worker:
        cores = sorted(os.sched_getaffinity(0))
        workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
        os.sched_setaffinity(0, cores[int(worker.removeprefix("gw")) :: workers] or cores)


@pytest.fixture(autouse=True, scope="session")
def isolated_caches(tmp_path_factory):
    """Keep Hugging Face and demo-data caches out of the user's home, for this process and children."""
    root = tmp_path_factory.mktemp("caches")
    os.environ["HF_HOME"] = str(root / "hf")
    os.environ["XDG_CACHE_HOME"] = str(root / "xdg")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield root


def write_png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def make_pair_folder(root: Path, *, num_train: int, num_test: int, lr_size=(16, 20), seed: int = 0) -> Path:
    """A DIR-layout dataset of textured images whose HR is exactly 4x its LR (bicubic-downscaled)."""
    rng = np.random.default_rng(seed)
    h, w = lr_size
    for i in range(num_train + num_test):
        base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        hr = cv2.resize(base, (4 * w, 4 * h), interpolation=cv2.INTER_LINEAR)
        lr = cv2.resize(hr, (w, h), interpolation=cv2.INTER_CUBIC)
        name = f"img_{i:03d}.png"
        if i < num_train:
            write_png(root / "train" / "HR" / name, hr)
            write_png(root / "train" / "LR" / name, lr)
        else:
            write_png(root / "test" / "LR" / name, lr)
    return root


@pytest.fixture(scope="session")
def pair_folder(tmp_path_factory) -> Path:
    return make_pair_folder(tmp_path_factory.mktemp("pairs"), num_train=23, num_test=3)


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def upscale(model, lr: np.ndarray) -> np.ndarray:
    """A plain float32 forward of one HxWx3 uint8 image, quantized as the submission stores it."""
    import torch

    with torch.no_grad():
        sr = model(torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255)
    return (sr.clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()


def independent_val_jm(weights: Path, data: Path, *, val_fraction: float = 0.1, seed: int = 0) -> float:
    """Mean JM of a weights file on the validation split, computed in this process from the files."""
    import torch

    from insanesr_dist.data.splits import load_splits
    from insanesr_dist.model.weights import load_model
    from insanesr_dist.scoring.metrics import joint_metric, psnr_ssim

    model = load_model(weights).eval()
    val = load_splits(data, val_fraction=val_fraction, seed=seed).val
    scores = [
        psnr_ssim(upscale(model, read_rgb(Path(row["lr"]["path"]))), read_rgb(Path(row["hr"]["path"])))[0]
        for row in val
    ]
    psnr, ssim = torch.stack(scores).mean(0).tolist()
    return joint_metric(psnr, ssim)


def run_tree(cmd: list[str], *, timeout: float, **options) -> subprocess.CompletedProcess:
    """subprocess.run for commands that start processes: on a timeout the whole process tree is killed
    (not only the first process, which would leave its ranks and workers running) and the test fails."""
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **options
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(process)
            stdout, stderr = process.communicate()
            pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}\n{stdout[-2000:]}\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, **run_options) -> subprocess.CompletedProcess:
    """Run a real command (a console script from this venv, or python -m ...) and capture its output;
    `run_options` go to subprocess.Popen (e.g. preexec_fn to set a resource limit)."""
    exe = Path(sys.executable).parent
    cmd = [str(exe / args[0]) if (exe / args[0]).exists() else args[0], *args[1:]]
    return run_tree(cmd, cwd=cwd, timeout=timeout, env=os.environ.copy(), **run_options)


def accelerate_launch(processes: int, *args: str, target: tuple[str, ...] = ("-m", "insanesr_dist.train")) -> list[str]:
    """The `accelerate launch` command line the tests run: `target` (a module after -m, or a script) with
    `args` in `processes` CPU processes. Two need --multi_gpu (gloo DDP): `--cpu --num_processes 2` silently
    runs one. Precision and dynamo are said, so that no accelerate config on the machine changes a test. Two
    rendezvous on a free port: on accelerate's default (29500) two such runs of parallel tests would collide."""
    count = {
        1: ["--num_processes", "1"],
        2: ["--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port())],
    }[processes]
    return [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        *count,
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        *target,
        *args,
    ]


def free_port() -> int:
    """A TCP port nobody listens on right now (for a server or a rendezvous the test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_script(setup: str) -> Path:
    """A script that runs the real train command with `setup` (Python source) run first. `setup` may define
    `Custom`, a subclass of `Trainer` (in scope) overriding its steps, which the command then runs, or inject a
    fault below the trainer (a full disk, a stuck DataLoader worker). A file, not `python -c`: DataLoader
    workers start from a fork server that imports the main script (under its `__main__` guard), so the setup
    reaches them too."""
    script = Path(tempfile.mkdtemp(prefix="train-script-")) / "train_script.py"
    script.write_text(
        "import sys\nfrom insanesr_dist.train import main\nfrom insanesr_dist.trainer import Trainer\n"
        f"Custom = Trainer\n{setup}\n"
        "if __name__ == '__main__':\n    main(sys.argv[1:], prog_name='train', obj=Custom)\n"
    )
    return script


def run_train_script(setup: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real train command in a fresh interpreter, with `setup` run first (see train_script)."""
    return run_tree([sys.executable, str(train_script(setup)), *args], timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """A user error: non-zero exit, no traceback, one `Error:` line naming the problem."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def finished_run_command(data: Path, out: Path, *more: str) -> list[str]:
    """finished_run's training command (2 epochs, tiny model, a loss line every step), plus `more` flags."""
    return accelerate_launch(
        1, "--data", str(data), "--epochs", "2", "--output-dir", str(out), "--log-every", "1", *TINY, *more
    )


@pytest.fixture(scope="session")
def finished_run(pair_folder, tmp_path_factory):
    """One short real training run that several test files read but never change."""
    out = tmp_path_factory.mktemp("run") / "out"
    result = run_cli(*finished_run_command(pair_folder, out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result
