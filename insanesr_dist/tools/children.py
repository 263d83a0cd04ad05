"""A tool's child process (a study's training runs) that failed, told in one line."""

from __future__ import annotations


def failure_line(stderr: str, empty: str = "(no output)") -> str:
    """What a failed child said last on stderr (our errors are one line, a traceback ends with its exception);
    `empty` when it said nothing."""
    return (stderr.strip().splitlines() or [empty])[-1]
