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
from collections.abc import Callable


def worker_context(*preload: str) -> multiprocessing.context.BaseContext:
    """The context to start workers with: the fork server. `preload`: the modules whose code the workers run
    (the caller's), imported in the server once, when it starts, instead of in every worker."""
    context = multiprocessing.get_context("forkserver")
    # The main module too: each worker imports it again as `__mp_main__` (cheap once its imports are loaded).
    main_spec = getattr(sys.modules["__main__"], "__spec__", None)
    context.set_forkserver_preload(["__main__", *preload, *([main_spec.name] if main_spec else [])])
    return context


def start_worker_server(*preload: str) -> None:
    """Start the fork server now (`preload` as for worker_context): its one-time import (seconds) then overlaps
    the run's set-up instead of delaying the first batch. Call it before blocking signals: starting it starts
    multiprocessing's resource tracker, which unblocks SIGINT and SIGTERM in this process (Python 3.11's
    `resource_tracker`)."""
    import multiprocessing.forkserver

    worker_context(*preload)
    multiprocessing.forkserver.ensure_running()


def _set_signal_mask(mask: set[signal.Signals], worker_id: int) -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def keep_signal_mask() -> Callable[[int], None]:
    """A DataLoader `worker_init_fn` giving workers this process's signal mask, as forked ones would have: a
    worker started by the fork server would otherwise take the SIGTERM meant for its rank (training/preemption.py's
    PreemptionFlag blocks it there) and die."""
    return functools.partial(_set_signal_mask, signal.pthread_sigmask(signal.SIG_BLOCK, []))
