"""run_files: the one place that names the files of a run directory."""

from __future__ import annotations

import ast
from pathlib import Path

from insanesr_dist import run_files

PACKAGE_DIR = Path(run_files.__file__).parent
NAMES = {name: value for name, value in vars(run_files).items() if name.isupper() and isinstance(value, str)}

# The same strings meaning something else: the exported model folder's config (model/files.py).
OTHER_MEANINGS = {("model/files.py", "config.json")}


def test_the_names_are_distinct_plain_entries_of_the_run_directory():
    assert set(NAMES) == {"CONFIG", "LATEST", "BEST", "METRICS", "SUBMISSIONS", "CHECKPOINTS", "LOGS"}
    assert len(set(NAMES.values())) == len(NAMES)
    for value in NAMES.values():
        assert value and Path(value).name == value and not value.startswith(".")  # one entry, no folders


def test_the_module_docstring_lists_every_name():
    listed = {line.split()[0].removeprefix("OUT/") for line in run_files.__doc__.splitlines() if "OUT/" in line}
    assert {entry.split("/")[0] for entry in listed} == set(NAMES.values())


def test_no_other_module_spells_a_run_file_name():
    """Training, resume, export, study and --init-from take the names from run_files, never retype them."""
    found = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        relative = path.relative_to(PACKAGE_DIR).as_posix()
        if relative == "run_files.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Constant)
                and node.value in NAMES.values()
                and (relative, node.value) not in OTHER_MEANINGS
            ):
                found.append(f"{relative}:{node.lineno}: {node.value!r}")
    assert found == []
