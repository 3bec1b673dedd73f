"""The package's layering: each module imports only modules below it (docs/architecture.md draws it)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "smiling_pipeline"
# Lowest first. Foundations; data (demos -> ingest); models (score -> cost); SB3 glue and baselines;
# the stages; orchestration; the CLI.
LAYERS = [
    ["errors", "io", "config", "runtime", "tracking", "server", "checkpoint", "report", "envs"],
    ["demos", "ingest"],
    ["score", "cost", "rewards"],
    ["rl", "baselines"],
    ["evaluate", "pretrain", "train"],
    ["pipeline", "compare", "sweep"],
    ["cluster"],
    ["cli"],
]
ORDER = [m for layer in LAYERS for m in layer]


def package_imports(path: Path) -> set[str]:
    """Modules of this package that ``path`` imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("smiling_pipeline"):
            names = [a.name for a in node.names] if node.module == "smiling_pipeline" else [node.module.split(".")[1]]
            found.update(names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("smiling_pipeline."))
    return found - {path.stem}


def test_every_module_has_a_place_in_the_layers():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules == set(ORDER), f"unplaced: {modules - set(ORDER)}, gone: {set(ORDER) - modules}"


def test_modules_import_only_modules_below_them():
    """Follows from the order, and rules out any import circle (a circle needs an upward import)."""
    upward = {module: sorted(dep for dep in package_imports(PACKAGE / f"{module}.py")
                             if ORDER.index(dep) >= ORDER.index(module))
              for module in ORDER}
    assert not {m: deps for m, deps in upward.items() if deps}


def test_the_layer_check_sees_function_level_imports(tmp_path):
    probe = tmp_path / "evaluate.py"
    probe.write_text("def f():\n    from smiling_pipeline.train import x\n    import smiling_pipeline.cli\n")
    assert package_imports(probe) == {"train", "cli"}
