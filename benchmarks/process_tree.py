"""Ending what a benchmark or test started: a process and everything under it."""

from __future__ import annotations

import contextlib
import subprocess


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a process and every process under it (torchrun starts its workers in new sessions, so a
    process-group kill would miss them, and a DataLoader worker would outlive its rank)."""
    import psutil

    try:
        root = psutil.Process(process.pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        processes = []
    for each in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            each.kill()
    psutil.wait_procs(processes, timeout=30)
    process.wait()
