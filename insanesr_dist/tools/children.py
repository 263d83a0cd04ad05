"""The tools' child processes (bench stages, GPU checks, training runs): a measurement or check runs in a fresh
Python, hands its result back as JSON on the last line of its stdout, and a failed one is told in one line.
"""

from __future__ import annotations

import json
import sys


def call_command(module: str, table: str, name: str, spec: dict) -> list[str]:
    """The command that runs `table[name](spec)` of `module` (a dict of functions by name, e.g. bench_stages.STAGES)
    in a fresh Python and prints its JSON-able result on the last line of its stdout."""
    code = (
        f"import json, sys; from {module} import {table}; "
        f"print(json.dumps({table}[sys.argv[1]](json.loads(sys.argv[2]))))"
    )
    return [sys.executable, "-c", code, name, json.dumps(spec)]


def json_result(stdout: str) -> dict:
    """A child's result: the JSON on the last line of its stdout (anything printed before it is not ours)."""
    return json.loads(stdout.strip().splitlines()[-1])


def failure_line(stderr: str, empty: str = "(no output)") -> str:
    """What a failed child said last on stderr (our errors are one line, a traceback ends with its exception);
    `empty` when it said nothing."""
    return (stderr.strip().splitlines() or [empty])[-1]
