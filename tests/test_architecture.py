"""The package's layering: each module imports only modules below it (docs/architecture.md draws it)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "smiling_pipeline"
# The algorithms package: its spec types, then one module per method (any module there but base), then the
# registry (__init__) that lists them. A new method needs no entry here.
METHODS = sorted(p.stem for p in (PACKAGE / "algorithms").glob("*.py") if p.stem not in ("__init__", "base"))
# Lowest first. Foundations; data (demos -> ingest); models (score -> cost); SB3 glue and baselines; the
# methods; the stages; orchestration; the CLI.
LAYERS = [
    ["errors", "io", "config", "runtime", "tracking", "server", "checkpoint", "envs"],
    ["demos", "ingest"],
    ["score", "cost", "rewards"],
    ["rl", "baselines"],
    ["algorithms.base", *(f"algorithms.{m}" for m in METHODS), "algorithms"],
    ["report", "evaluate", "pretrain", "train"],
    ["pipeline", "compare", "sweep"],
    ["cluster"],
    ["cli"],
]
ORDER = [m for layer in LAYERS for m in layer]


def module_path(module: str) -> Path:
    """The file of ``module`` (``algorithms`` is the package's ``__init__``)."""
    if module == "algorithms":
        return PACKAGE / "algorithms" / "__init__.py"
    return PACKAGE / (module.replace(".", "/") + ".py")


def imported_module(dotted: str) -> str:
    """``smiling_pipeline.x[.y...]`` as a name in :data:`ORDER`: ``x``, or ``algorithms.y`` inside that package."""
    parts = dotted.split(".")[1:]
    if parts[0] == "algorithms" and len(parts) > 1:
        return f"algorithms.{parts[1]}"
    return parts[0]


def package_imports(path: Path, name: str) -> set[str]:
    """Modules of this package that ``path`` (the module ``name``) imports anywhere (module level or inside
    functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("smiling_pipeline"):
            if node.module in ("smiling_pipeline", "smiling_pipeline.algorithms"):
                prefix = node.module.replace("smiling_pipeline", "").lstrip(".")
                for alias in node.names:
                    child = f"{prefix}.{alias.name}" if prefix else alias.name
                    found.add(child if module_path(child).is_file() else prefix)
            else:
                found.add(imported_module(node.module))
        elif isinstance(node, ast.Import):
            found.update(imported_module(a.name) for a in node.names if a.name.startswith("smiling_pipeline."))
    return found - {name}


def test_every_module_has_a_place_in_the_layers():
    modules = {p.stem for p in PACKAGE.glob("*.py")} | {"algorithms", "algorithms.base"} | {f"algorithms.{m}" for m in METHODS}
    assert modules == set(ORDER), f"unplaced: {modules - set(ORDER)}, gone: {set(ORDER) - modules}"
    assert {"smiling", "dac", "bc"} <= set(METHODS)


def test_modules_import_only_modules_below_them():
    """Follows from the order, and rules out any import circle (a circle needs an upward import)."""
    upward = {module: sorted(dep for dep in package_imports(module_path(module), module)
                             if ORDER.index(dep) >= ORDER.index(module))
              for module in ORDER}
    assert not {m: deps for m, deps in upward.items() if deps}


def test_the_layer_check_sees_function_level_imports(tmp_path):
    probe = tmp_path / "evaluate.py"
    probe.write_text("def f():\n    from smiling_pipeline.train import x\n    import smiling_pipeline.cli\n")
    assert package_imports(probe, "evaluate") == {"train", "cli"}


def test_the_layer_check_sees_imports_of_the_algorithms_package(tmp_path):
    probe = tmp_path / "sweep.py"
    probe.write_text("from smiling_pipeline import algorithms\nfrom smiling_pipeline.algorithms import dac, get\n"
                     "from smiling_pipeline.algorithms.base import Algorithm\n")
    assert package_imports(probe, "sweep") == {"algorithms", "algorithms.dac", "algorithms.base"}


# The one seam to the tracking backend: only these modules may import it (docs/architecture.md, "Tracking").
TRACKING_BACKEND, BACKEND_MODULES = "mlflow", {"tracking", "server"}


def imports_of(path: Path, top: str) -> set[str]:
    """The modules of the library ``top`` (``top`` or ``top.x...``) that ``path`` imports anywhere."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == top or m.startswith(top + ".")}


def test_only_the_tracking_seam_imports_mlflow():
    """Stages, comparison and the CLI go through ``tracking``'s functions, so another backend is one module."""
    importers = {module: sorted(imports_of(module_path(module), TRACKING_BACKEND))
                 for module in ORDER if module not in BACKEND_MODULES}
    assert not {m: found for m, found in importers.items() if found}
    assert imports_of(module_path("tracking"), TRACKING_BACKEND)


def test_the_tracking_check_sees_function_level_and_submodule_imports(tmp_path):
    probe = tmp_path / "evaluate.py"
    probe.write_text("import mlflowish\ndef f():\n    import mlflow.pytorch\n    from mlflow import MlflowClient\n"
                     "    from mlflow.entities import Run\n")
    assert imports_of(probe, "mlflow") == {"mlflow.pytorch", "mlflow", "mlflow.entities"}
