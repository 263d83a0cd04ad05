"""The package's import layers, one way only: a module imports its own subpackage or lower layers, never higher.

Layers, lowest first (docs/architecture.md):

    0  errors, atomic, run_files (and the package's __init__)     foundation
    1  data.*, model.*                                            data and model never import each other
    2  config, presets
    3  training.*
    4  inference.*
    5  scoring.*
    6  train, trainer, predict                                    entry points
    7  tools.*
    8  cli, __main__

A module may import any lower layer, and its own layer only inside its own subpackage (data.pairs -> data.images,
training.ema -> training.losses; the top-level modules of one layer count as one group: config -> presets).

What counts as an import, read with `ast` from the source (nothing is imported):
- every `import` and `from ... import` statement anywhere in the module, inside functions too (lazy imports are
  dependencies as well), relative ones resolved;
- every string literal that is exactly a module reference, `insanesr_dist.a.b` or `insanesr_dist.a.b:attribute`
  (cli.py's lazy command table, `python -m insanesr_dist.train` launches): checked by the same rule, so the lazy
  table needs no exemption (cli is the top layer) and a string cannot hide a dependency anywhere else;
- `importlib.import_module` / `__import__` are allowed only in cli.py (its lazy command table, whose strings are
  checked as above): anywhere else they would hide a dependency from this test.

Also: no module imports a private (underscore) name of another module of the package, neither by
`from m import _x` nor as `m._x` on an imported module; and every reference names a module that exists.

And no import cycle, inside a subpackage either: the import statements (module level and inside functions alike;
module-reference strings are commands to launch, not imports) form no loop. A cycle works only as long as each
module uses the other's names late enough, and which one runs first depends on who is imported first. Importing a
module also runs its packages' __init__ files; those edges are not counted, as every submodule has them.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "insanesr_dist"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

# First component of a module's name below the package -> its layer. The package's own __init__ is "".
LAYERS = {
    "": 0,
    "errors": 0,
    "atomic": 0,
    "run_files": 0,
    "commands": 0,
    "data": 1,
    "model": 1,
    "config": 2,
    "presets": 2,
    "training": 3,
    "inference": 4,
    "scoring": 5,
    "train": 6,
    "trainer": 6,
    "predict": 6,
    "tools": 7,
    "cli": 8,
    "__main__": 8,
}
LAYER_NAMES = {
    0: "foundation",
    1: "data/model",
    2: "config/presets",
    3: "training",
    4: "inference",
    5: "scoring",
    6: "entry points",
    7: "tools",
    8: "cli",
}
SUBPACKAGES = {"data", "model", "training", "inference", "scoring", "tools"}
DYNAMIC_IMPORTS_ALLOWED_IN = {"cli"}
MODULE_STRING = re.compile(rf"{PACKAGE}(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*)?")


@dataclass(frozen=True)
class Violation:
    path: str  # relative to the package's parent, e.g. insanesr_dist/data/pairs.py
    line: int
    rule: str  # layer, private, unknown, dynamic, unassigned
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.rule}] {self.message}"


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted name (relative to the package, "" for its __init__) -> file, for every module of the package."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def layer_of(name: str) -> int | None:
    return LAYERS.get(name.split(".")[0])


def group_of(name: str) -> str:
    """The subpackage a module belongs to; "" for the top-level modules (one group per layer)."""
    first = name.split(".")[0]
    return first if first in SUBPACKAGES else ""


def describe(name: str) -> str:
    layer = layer_of(name)
    return f"{PACKAGE}.{name}".rstrip(".") + f" (layer {layer}, {LAYER_NAMES.get(layer, '?')})"


class References(ast.NodeVisitor):
    """Every reference of one module to the package: (line, target module, imported name or None, how)."""

    def __init__(self, name: str, modules: dict[str, Path]):
        self.name, self.modules = name, modules
        self.package = name if is_package(name, modules) else name.rpartition(".")[0]
        self.found: list[tuple[int, str, str | None, str]] = []
        self.aliases: dict[str, str] = {}  # local name -> package module it is bound to
        self.dynamic: list[int] = []

    def absolute(self, module: str | None, level: int) -> str | None:
        """`from ..x import y`'s module as a dotted name relative to the package; None when outside the package."""
        if level:
            base = self.package.split(".") if self.package else []
            if level - 1 > len(base):
                return None
            base = base[: len(base) - (level - 1)]
            return ".".join([*base, *(module.split(".") if module else [])])
        if module == PACKAGE:
            return ""
        if module and module.startswith(PACKAGE + "."):
            return module[len(PACKAGE) + 1 :]
        return None

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            target = self.absolute(alias.name, 0)
            if target is not None:
                self.found.append((node.lineno, target, None, f"import {alias.name}"))
                if alias.asname:
                    self.aliases[alias.asname] = target

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        target = self.absolute(node.module, node.level)
        if target is None:
            return
        source = "." * node.level + (node.module or "")
        for alias in node.names:
            submodule = f"{target}.{alias.name}".lstrip(".")
            if submodule in self.modules:  # from package import module
                self.found.append((node.lineno, submodule, None, f"from {source} import {alias.name}"))
                self.aliases[alias.asname or alias.name] = submodule
            else:  # from module import name
                self.found.append((node.lineno, target, alias.name, f"from {source} import {alias.name}"))

    def visit_Call(self, node: ast.Call) -> None:
        function = node.func
        called = (
            function.attr
            if isinstance(function, ast.Attribute)
            else function.id
            if isinstance(function, ast.Name)
            else None
        )
        if called in ("import_module", "__import__"):
            self.dynamic.append(node.lineno)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and MODULE_STRING.fullmatch(node.value):
            module, _, attribute = node.value.partition(":")
            self.found.append((node.lineno, self.absolute(module, 0), attribute or None, f"string {node.value!r}"))

    def private_attributes(self, tree: ast.AST) -> list[tuple[int, str, str]]:
        """`m._x` where m is a name this module bound to another module of the package."""
        uses = []
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in self.aliases
                and is_private(node.attr)
            ):
                uses.append((node.lineno, self.aliases[node.value.id], f"{node.value.id}.{node.attr}"))
        return uses


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def check_package(package_dir: Path) -> list[Violation]:
    """Every violation of the layer, private-name, existence and dynamic-import rules in a package's source."""
    modules = module_names(package_dir)
    violations = []
    for name, path in modules.items():
        shown = path.relative_to(package_dir.parent).as_posix()
        own_layer = layer_of(name)
        if own_layer is None:
            violations.append(
                Violation(
                    shown,
                    1,
                    "unassigned",
                    f"{PACKAGE}.{name} is in no layer: add "
                    f"{name.split('.')[0]!r} to LAYERS in tests/test_layers.py and to docs/architecture.md",
                )
            )
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        refs = References(name, modules)
        refs.visit(tree)
        for line, target, imported, how in refs.found:
            if target not in modules:
                violations.append(
                    Violation(shown, line, "unknown", f"{how}: {PACKAGE}.{target} is not a module of the package")
                )
                continue
            if target != name:
                target_layer = layer_of(target)
                if target_layer is None:
                    continue  # reported as unassigned where it is defined
                same_group = group_of(target) == group_of(name)
                if target_layer > own_layer or (target_layer == own_layer and not same_group):
                    why = "a higher layer" if target_layer > own_layer else "the same layer outside its own subpackage"
                    violations.append(
                        Violation(
                            shown,
                            line,
                            "layer",
                            f"{how}: {describe(name)} depends on {describe(target)}, {why}; "
                            "a module imports only lower layers or its own subpackage",
                        )
                    )
            if imported and is_private(imported) and target != name:
                violations.append(
                    Violation(
                        shown, line, "private", f"{how}: imports the private name {imported!r} of {PACKAGE}.{target}"
                    )
                )
        for line, target, use in refs.private_attributes(tree):
            if target != name:
                violations.append(
                    Violation(shown, line, "private", f"{use}: uses a private name of {PACKAGE}.{target}")
                )
        if name not in DYNAMIC_IMPORTS_ALLOWED_IN:
            violations.extend(
                Violation(
                    shown,
                    line,
                    "dynamic",
                    "importlib.import_module/__import__ outside "
                    "cli.py's lazy command table hides a dependency from this test",
                )
                for line in refs.dynamic
            )
    return sorted(violations, key=lambda v: (v.path, v.line, v.rule, v.message))


def import_graph(package_dir: Path) -> dict[str, dict[str, tuple[str, int, str]]]:
    """module -> {module it imports: (its file, the line, the statement) of the first such import}, from the
    import statements only, module level and inside functions."""
    modules = module_names(package_dir)
    graph: dict[str, dict[str, tuple[str, int, str]]] = {}
    for name, path in modules.items():
        refs = References(name, modules)
        refs.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        shown = path.relative_to(package_dir.parent).as_posix()
        edges = graph.setdefault(name, {})
        for line, target, _, how in sorted(refs.found):
            if not how.startswith("string") and target != name and target in modules:
                edges.setdefault(target, (shown, line, how))
    return graph


def shortest_cycle(graph: dict[str, dict], start: str, members: set[str]) -> list[str]:
    """The shortest import cycle from `start` back to it through `members` (a strongly connected component)."""
    parents: dict[str, str | None] = {start: None}
    frontier = [start]
    while True:
        following = []
        for node in frontier:
            for target in sorted(graph[node]):
                if target == start:
                    path = [node]
                    while parents[path[-1]] is not None:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if target in members and target not in parents:
                    parents[target] = node
                    following.append(target)
        frontier = following


def import_cycles(package_dir: Path) -> list[Violation]:
    """One violation per set of modules that import each other (a strongly connected component of the import
    graph), naming one cycle through it, at the first import of that cycle."""
    graph = import_graph(package_dir)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the package is far too small for the recursion limit
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    violations = []
    for component in sorted(components):
        cycle = shortest_cycle(graph, component[0], set(component))
        shown, line, how = graph[cycle[0]][cycle[1]]
        names = " -> ".join(f"{PACKAGE}.{m}".rstrip(".") for m in cycle)
        violations.append(Violation(shown, line, "cycle", f"{how}: an import cycle, {names}"))
    return violations


def report(violations: list[Violation]) -> str:
    return f"{len(violations)} import(s) against the layer rules (see tests/test_layers.py):\n" + "\n".join(
        map(str, violations)
    )


def test_every_module_of_the_package_is_in_a_layer():
    assert [name for name in module_names(PACKAGE_DIR) if layer_of(name) is None] == []


def test_imports_follow_the_layers_and_leave_private_names_alone():
    violations = check_package(PACKAGE_DIR)
    assert not violations, report(violations)


def test_no_module_imports_itself_through_others():
    cycles = import_cycles(PACKAGE_DIR)
    assert not cycles, report(cycles)


# The benchmark and acceptance scripts (benchmarks/) measure the package from outside: they import it, never the
# other way round. Only the thin `bench` command names their folder, to find them in a checkout.
BENCHMARKS_DIR = PACKAGE_DIR.parent / "benchmarks"
BENCHMARKS_LOCATOR = "tools/bench.py"
NAMES_THE_FOLDER = re.compile(r"(?<!docs/)\bbenchmarks\b(?!\.md)")


def benchmark_references(package_dir: Path, scripts: set[str]) -> list[Violation]:
    """Imports of `benchmarks` or of a script of it (by its file name, as the scripts import each other), in any
    module of the package; and any mention of the folder or a script's name, in code, strings or comments, outside
    BENCHMARKS_LOCATOR (docs/benchmarks.md, the page of measured figures, is not the folder)."""
    script_name = re.compile(rf"\b({'|'.join(sorted(scripts - {'bench'}))})\b") if scripts - {"bench"} else None
    violations = []
    for path in module_names(package_dir).values():
        shown = f"{PACKAGE}/{path.relative_to(package_dir).as_posix()}"
        text = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(text)):
            imported = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            for module in imported:
                if module.split(".")[0] in scripts | {"benchmarks"}:
                    violations.append(Violation(shown, node.lineno, "benchmarks", f"imports {module}"))
        if path.relative_to(package_dir).as_posix() == BENCHMARKS_LOCATOR:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if NAMES_THE_FOLDER.search(line) or (script_name and script_name.search(line)):
                violations.append(Violation(shown, number, "benchmarks", f"names the benchmarks: {line.strip()}"))
    return violations


def test_the_package_neither_imports_nor_names_the_benchmarks():
    scripts = {path.stem for path in BENCHMARKS_DIR.glob("*.py")}
    assert {"bench", "bench_stages", "gpu_checks"} <= scripts
    assert not (PACKAGE_DIR / "tools" / "gpu_checks.py").exists()
    assert not (PACKAGE_DIR / "tools" / "bench_stages.py").exists()
    violations = benchmark_references(PACKAGE_DIR, scripts)
    assert not violations, report(violations)


def test_the_benchmarks_checker_finds_imports_and_names(tmp_path):
    package = write_tree(
        tmp_path,
        {
            "__init__.py": "",
            "training/__init__.py": "",
            "training/a.py": "import bench_stages\nfrom benchmarks.gpu_checks import CHECKS\n",  # 1, 2
            "training/b.py": 'def f():\n    import bench\n\nSEE = "docs/benchmarks.md"\n',  # 2; 4 is fine
            "scoring/c.py": '# see benchmarks/bench.py\nRUN = ["python", "gpu_checks.py"]\n',  # 1, 2
            "tools/__init__.py": "",
            "tools/bench.py": 'import bench\nSCRIPT = "benchmarks"\n',  # the locator: may name, not import (1)
        },
    )

    found = {(v.path, v.line) for v in benchmark_references(package, {"bench", "bench_stages", "gpu_checks"})}

    assert found == {
        ("insanesr_dist/training/a.py", 1),
        ("insanesr_dist/training/a.py", 2),
        ("insanesr_dist/training/b.py", 2),
        ("insanesr_dist/scoring/c.py", 1),
        ("insanesr_dist/scoring/c.py", 2),
        ("insanesr_dist/tools/bench.py", 1),
    }


# The checker itself, on a small package written here: each rule must be able to fail.


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / PACKAGE / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / PACKAGE


def test_the_checker_reports_each_kind_of_violation_with_file_line_and_rule(tmp_path):
    package = write_tree(
        tmp_path,
        {
            "__init__.py": '__version__ = "0"\n',
            "errors.py": "class UserError(Exception):\n    pass\n",
            "config.py": "from insanesr_dist.presets import PRESETS\n",  # same layer, top-level group: fine
            "presets.py": "PRESETS = {}\n",
            "data/__init__.py": "",
            "data/images.py": "def _decode():\n    pass\n\n\ndef decode():\n    pass\n",
            "data/pairs.py": (
                "from insanesr_dist.data.images import decode\n"  # 1 own subpackage: fine
                "from . import images\n"  # 2 relative, own subpackage: fine
                "from insanesr_dist.errors import UserError\n"  # 3 lower layer: fine
                "\n"
                "\n"
                "def pair():\n"
                "    from insanesr_dist.model import weights\n"  # 7 lazy, same layer, other subpackage
                "    images._decode()\n"  # 8 private attribute of an imported module
                "    return weights\n"
            ),
            "model/__init__.py": "",
            "model/weights.py": (
                "import insanesr_dist.training.losses as losses\n"  # 1 higher layer
                "from ..data.images import _decode\n"  # 2 same layer, other subpackage, private name
                "from insanesr_dist.demo_data import make\n"  # 3 a module that does not exist
            ),
            "training/__init__.py": "",
            "training/losses.py": (
                "import importlib\n"
                'TRAIN = "insanesr_dist.train:main"\n'  # 2 a higher layer named in a string
                'importlib.import_module("json")\n'  # 3 dynamic import outside cli.py
            ),
            "train.py": "from insanesr_dist.training import losses\n",  # lower layer: fine
            "cli.py": (
                'import importlib\nLAZY = {"train": "insanesr_dist.train:main"}\n'
                'importlib.import_module(LAZY["train"])\n'
            ),  # cli's lazy table: fine
            "extras.py": "",  # in no layer
        },
    )

    found = {(v.path, v.line, v.rule) for v in check_package(package)}

    assert found == {
        ("insanesr_dist/data/pairs.py", 7, "layer"),
        ("insanesr_dist/data/pairs.py", 8, "private"),
        ("insanesr_dist/model/weights.py", 1, "layer"),
        ("insanesr_dist/model/weights.py", 2, "layer"),
        ("insanesr_dist/model/weights.py", 2, "private"),
        ("insanesr_dist/model/weights.py", 3, "unknown"),
        ("insanesr_dist/training/losses.py", 2, "layer"),
        ("insanesr_dist/training/losses.py", 3, "dynamic"),
        ("insanesr_dist/extras.py", 1, "unassigned"),
    }
    message = report(check_package(package))
    assert (
        "insanesr_dist/model/weights.py:1: [layer] import insanesr_dist.training.losses: insanesr_dist.model.weights "
        "(layer 1, data/model) depends on insanesr_dist.training.losses (layer 3, training), a higher layer"
    ) in message


@pytest.mark.parametrize(
    ("importer", "imported", "allowed"),
    [
        ("data/pairs.py", "insanesr_dist.data.images", True),
        ("data/pairs.py", "insanesr_dist.model.weights", False),
        ("model/weights.py", "insanesr_dist.data.images", False),
        ("training/ema.py", "insanesr_dist.training.losses", True),
        ("training/ema.py", "insanesr_dist.config", True),
        ("config.py", "insanesr_dist.training.losses", False),
        ("inference/tiles.py", "insanesr_dist.scoring.metrics", False),
        ("scoring/metrics.py", "insanesr_dist.inference.tiles", True),
        ("train.py", "insanesr_dist.predict", True),
        ("tools/bench.py", "insanesr_dist.train", True),
        ("train.py", "insanesr_dist.tools.bench", False),
        ("errors.py", "insanesr_dist.atomic", True),
        ("atomic.py", "insanesr_dist.data.images", False),
        ("cli.py", "insanesr_dist.tools.bench", True),
        ("tools/bench.py", "insanesr_dist.cli", False),
    ],
)
def test_the_checker_follows_the_layer_order(tmp_path, importer, imported, allowed):
    files = {
        "__init__.py": "",
        importer: f"import {imported}\n",
        imported.replace(".", "/")[len(PACKAGE) + 1 :] + ".py": "",
    }
    files.update({f"{sub}/__init__.py": "" for sub in SUBPACKAGES})
    violations = check_package(write_tree(tmp_path, files))
    assert (violations == []) == allowed, report(violations)


def test_the_cycle_checker_finds_each_cycle_once_whatever_the_import_s_place(tmp_path):
    package = write_tree(
        tmp_path,
        {
            "__init__.py": "",
            # two modules of one subpackage, one import inside a function: a cycle
            "data/__init__.py": "",
            "data/loaders.py": "from insanesr_dist.data import store\n",
            "data/store.py": "def build():\n    from insanesr_dist.data.loaders import worker_context\n",
            # top-level modules, imported by `import a.b` from a function: a cycle
            "config.py": "import json\nfrom insanesr_dist.presets import PRESETS\n",
            "presets.py": "def defaults():\n    import insanesr_dist.config\n",
            # three modules around: one cycle, reported once
            "training/__init__.py": "",
            "training/a.py": "from . import b\n",
            "training/b.py": "from insanesr_dist.training.c import x\n",
            "training/c.py": "import insanesr_dist.training.a\nx = 1\n",
            # not cycles: a package's __init__ and its submodules importing siblings, a module importing itself,
            # a module named in a string (a command to launch)
            "model/__init__.py": "from insanesr_dist.model.architecture import Net\n",
            "model/architecture.py": "from insanesr_dist.model import files\nclass Net:\n    pass\n",
            "model/files.py": "import insanesr_dist.model.files\n",
            "tools/__init__.py": "",
            "tools/bench.py": 'TRAIN = ["-m", "insanesr_dist.tools.run"]\n',
            "tools/run.py": "from insanesr_dist.tools import bench\n",
        },
    )

    cycles = import_cycles(package)

    assert {(v.path, v.line, v.rule) for v in cycles} == {
        ("insanesr_dist/config.py", 2, "cycle"),
        ("insanesr_dist/data/loaders.py", 1, "cycle"),
        ("insanesr_dist/training/a.py", 1, "cycle"),
    }
    assert (
        "insanesr_dist/data/loaders.py:1: [cycle] from insanesr_dist.data import store: an import cycle, "
        "insanesr_dist.data.loaders -> insanesr_dist.data.store -> insanesr_dist.data.loaders"
    ) in report(cycles)
    assert "insanesr_dist.training.a -> insanesr_dist.training.b -> insanesr_dist.training.c -> " in report(cycles)
    assert check_package(package) == []  # the layer rules allow every one of these imports
