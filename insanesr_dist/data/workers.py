"""How the data path's worker processes start (DataLoader workers, loaders.py; the store's decoding processes,
store.py): from a fork server, never by forking the training process.

A training process has threads (gloo's, TensorBoard's writer, tqdm's monitor, CUDA's); a fork copies only the
forking thread, so an at-fork handler in the child can wait forever on a lock another thread held at that moment
(the worker never gets past `os.fork()`, and the run hangs at its first loader). The fork server is a fresh
single-threaded interpreter (started by fork+exec) that imports the modules workers need once, so each worker
forks from it in milliseconds, already set up.

A module of its own, below loaders.py and store.py, which both start workers and one of which imports the other.
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.context
import signal
import sys
import types
from collections.abc import Callable, Collection


def worker_context(*preload: str) -> multiprocessing.context.BaseContext:
    """The context to start workers with: the fork server. `preload`: the modules whose code the workers run
    (the caller's), imported in the server once, when it starts, instead of in every worker."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", *dict.fromkeys([*preload, *main_imports()])])
    return context


def main_imports() -> list[str]:
    """The modules the main module took names from (`import m`, `from m import x`), but never the main module
    itself.

    Each worker runs the main module again, as `__mp_main__` (so that pickled references to its functions
    resolve), which is cheap once its imports are loaded. A script's "__main__" preload covers that: the server
    runs the script as `__mp_main__` and its workers inherit it. A `-m` run's main module (`accelerate launch -m
    insanesr_dist.train`) cannot be preloaded that way, and preloading it under its own name would have every
    worker's runpy find it already imported before running it as `__mp_main__`: two copies of one module, and a
    RuntimeWarning ("found in sys.modules ... unpredictable behaviour") from each worker. Its imports are what
    the second run needs loaded.
    """
    main = sys.modules["__main__"]
    own = {getattr(getattr(main, "__spec__", None), "name", None), "__main__", "__mp_main__"}
    names = set()
    for key, value in list(vars(main).items()):
        if key.startswith("__"):  # the module's own attributes (__spec__, __loader__, __builtins__, ...)
            continue
        name = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
        if isinstance(name, str) and name not in own and _importable(name):
            names.add(name)
    return sorted(names)


def _importable(name: str) -> bool:
    """Whether `name` is a module loaded under that name, so that the server's import finds it (a C extension's
    submodule or a module made at run time may be in sys.modules under a name that cannot be imported)."""
    spec = getattr(sys.modules.get(name), "__spec__", None)
    return spec is not None and spec.name == name


def start_worker_server(*preload: str, blocking: Collection[signal.Signals] = ()) -> None:
    """Start the fork server now (`preload` as for worker_context): its one-time import (seconds) then overlaps
    the run's set-up instead of delaying the first batch. Call it before blocking signals: starting it starts
    multiprocessing's resource tracker, which unblocks SIGINT and SIGTERM in the process that starts it.

    `blocking`: signals the server keeps blocked, and so every process it forks (until it changes its mask). A
    training run's stop signals: torchrun and SLURM send them to every process of a rank, and a server they
    killed would take the rank's DataLoader workers with it (torch's workers exit once their parent is gone),
    so the next evaluation would wait forever for them instead of the run saving and stopping.
    """
    import multiprocessing.forkserver
    import multiprocessing.resource_tracker

    worker_context(*preload)
    multiprocessing.resource_tracker.ensure_running()  # first: see above
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocking)
    try:
        multiprocessing.forkserver.ensure_running()  # fork + exec: the server inherits this mask
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def unblock_signals() -> None:
    """For a pool's worker processes, first thing: one forked by a server that keeps signals blocked (see
    start_worker_server) would ignore the SIGTERM by which its pool ends it (`Pool.terminate`, a broken
    `ProcessPoolExecutor`), and the pool would wait for it forever."""
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _set_signal_mask(mask: set[signal.Signals], worker_id: int) -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def keep_signal_mask() -> Callable[[int], None]:
    """A DataLoader `worker_init_fn` giving workers this process's signal mask, as forked ones would have: a
    worker started by the fork server would otherwise take the SIGTERM meant for its rank (training/preemption.py's
    PreemptionFlag blocks it there) and die."""
    return functools.partial(_set_signal_mask, signal.pthread_sigmask(signal.SIG_BLOCK, []))
