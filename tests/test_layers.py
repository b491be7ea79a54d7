"""Imports run one way: kb <- onegen <- eval <- jobs (bench/ and tests/ may import anything).

An AST walk over every module of the four layers, imports inside functions included:
- `layer`: a module imports a higher layer (or bench/tests);
- `sys-path`: a module changes sys.path (the package is installed: `pip install -e .`);
- `stdlib-name`: a module is named like a standard-library module, so run as a script (or with its
  folder on sys.path) it shadows that module;
- `dependency-name`: a module of a script folder (jobs/, eval/, bench/) is named like an installed
  package, which it shadows when a script of that folder runs.
"""
from __future__ import annotations

import ast
import importlib.metadata
import sys
from dataclasses import dataclass
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
LAYERS = ("kb", "onegen", "eval", "jobs")  # lowest first: a module may import its own layer and lower ones
NOT_IMPORTABLE = ("bench", "tests")  # may import every layer; no layer may import them
SCRIPT_FOLDERS = ("jobs", "eval", "bench")  # `python FOLDER/x.py` puts FOLDER first on sys.path

@dataclass(frozen=True)
class Violation:
    path: str  # file, relative to the root, e.g. "kb/build.py"
    line: int  # 1-based; 0 for a file name
    rule: str  # "layer", "sys-path", "stdlib-name" or "dependency-name"
    module: str = ""  # the imported module (rule "layer")
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.rule}] {self.detail}"


def imported_modules(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """(line, module) of every import in the tree, nested ones and `importlib.import_module("x")` too, by line.

    `from a.b import c` gives "a.b"; a relative import gives `package`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside the module's own package
                found.append((node.lineno, package))
            else:
                found.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return sorted(found)


def is_sys_path(node: ast.AST) -> bool:
    """`sys.path`, or `sys.path[...]`."""
    if isinstance(node, ast.Subscript):
        node = node.value
    return (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
            and node.value.id == "sys")


def sys_path_changes(tree: ast.AST) -> list[int]:
    """Lines that change sys.path: `sys.path.insert(...)` (any method call on it) or an assignment to it."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and is_sys_path(node.func.value):
            lines.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            lines.extend(node.lineno for target in targets if is_sys_path(target))
    return sorted(lines)


def find_violations(root: Path, installed: set[str] = frozenset()) -> list[Violation]:
    """Every break of the layer rules under `root`; `installed`: top-level names of installed packages."""
    found = []
    for rank, layer in enumerate(LAYERS):
        for path in sorted((root / layer).rglob("*.py")):
            name = path.relative_to(root).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=name)
            for line, module in imported_modules(tree, layer):
                top = module.split(".")[0]
                if top in NOT_IMPORTABLE or (top in LAYERS and LAYERS.index(top) > rank):
                    found.append(Violation(name, line, "layer", module,
                                           f"{layer}/ imports {module}; imports run kb <- onegen <- eval <- jobs"))
            for line in sys_path_changes(tree):
                found.append(Violation(name, line, "sys-path", detail="sys.path is changed; the package is installed "
                                                                      "(pip install -e .), import it as it is"))
    for folder in dict.fromkeys(LAYERS + SCRIPT_FOLDERS):
        for path in sorted((root / folder).rglob("*.py")):
            name, stem = path.relative_to(root).as_posix(), path.stem
            if stem in sys.stdlib_module_names:
                found.append(Violation(name, 0, "stdlib-name", detail=f"named like the standard library's `{stem}`"))
            elif folder in SCRIPT_FOLDERS and path.parent == root / folder and stem in installed:
                found.append(Violation(name, 0, "dependency-name",
                                       detail=f"named like the installed package `{stem}`, which a script of {folder}/ "
                                              f"would import instead"))
    return found


def installed_packages() -> set[str]:
    """Top-level import names of the installed distributions, but this project's own packages."""
    return {name for name, dists in importlib.metadata.packages_distributions().items() if "onegen-el" not in dists}


def test_imports_run_one_way_and_no_module_shadows_another():
    violations = find_violations(REPO, installed_packages())
    assert not violations, "layer rules broken:\n" + "\n".join(map(str, violations))


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_each_rule_names_the_file_and_line(tmp_path):
    write(tmp_path, "kb/index.py", "import numpy\nfrom kb.entity import Entity\n\n\ndef f():\n    from onegen.model import OneGen\n")
    write(tmp_path, "kb/entity.py", "from . import index\n")  # relative: same package
    write(tmp_path, "onegen/model.py", "import importlib\nimportlib.import_module('eval.scorer')\nimport bench.index\n")
    write(tmp_path, "eval/run.py", "import sys\nsys.path.insert(0, '..')\nsys.path[:] = []\nimport jobs.link\n")
    write(tmp_path, "jobs/link.py", "from onegen.model import OneGen\nfrom eval.run import main\nimport kb\n")
    write(tmp_path, "eval/json.py", "")
    write(tmp_path, "bench/numpy.py", "import jobs.link\n")  # bench may import anything
    write(tmp_path, "bench/sub/faiss.py", "")  # not beside a script: shadows nothing

    found = [str(v) for v in find_violations(tmp_path, installed={"numpy", "faiss"})]
    assert found == [
        "kb/index.py:6: [layer] kb/ imports onegen.model; imports run kb <- onegen <- eval <- jobs",
        "onegen/model.py:2: [layer] onegen/ imports eval.scorer; imports run kb <- onegen <- eval <- jobs",
        "onegen/model.py:3: [layer] onegen/ imports bench.index; imports run kb <- onegen <- eval <- jobs",
        "eval/run.py:4: [layer] eval/ imports jobs.link; imports run kb <- onegen <- eval <- jobs",
        "eval/run.py:2: [sys-path] sys.path is changed; the package is installed (pip install -e .), import it as it is",
        "eval/run.py:3: [sys-path] sys.path is changed; the package is installed (pip install -e .), import it as it is",
        "eval/json.py:0: [stdlib-name] named like the standard library's `json`",
        "bench/numpy.py:0: [dependency-name] named like the installed package `numpy`, which a script of bench/ "
        "would import instead",
    ]
