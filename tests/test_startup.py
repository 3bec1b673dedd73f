"""The CLI answers at once: importing it, ``--help`` and refused input import none of the heavy libraries.

An import check, not a timing (timings are ``benchmarks/startup.py``): each case runs in a fresh
interpreter, so what it finds in ``sys.modules`` is what that command imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import terminal_lines

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "stable_baselines3", "mlflow", "minari", "gymnasium", "jax", "huggingface_hub", "matplotlib",
         "dvc", "ray")
# Runs the CLI on argv, then writes its exit code and the heavy modules it imported to $PROBE_OUT.
PROBE = """
import json, os, sys
from smiling_pipeline.cli import run
code = run(sys.argv[1:])
heavy = sorted(m for m in json.loads(os.environ["PROBE_HEAVY"]) if m in sys.modules)
open(os.environ["PROBE_OUT"], "w").write(json.dumps({"code": code, "heavy": heavy}))
"""


def python(code: str, args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Run ``python -c code args`` with this checkout first on the path, in ``tmp_path`` (no params.yaml)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": path, **env})


def probe(args: list[str], tmp_path: Path) -> tuple[int, list[str], subprocess.CompletedProcess]:
    """The CLI's exit code on ``args``, the heavy modules it imported, and the process (its output)."""
    out = tmp_path / "probe.json"
    proc = python(PROBE, args, tmp_path, PROBE_OUT=str(out), PROBE_HEAVY=json.dumps(HEAVY))
    assert out.is_file(), proc.stderr
    result = json.loads(out.read_text())
    return result["code"], result["heavy"], proc


def test_importing_the_cli_imports_no_heavy_library(tmp_path):
    code = f"import json, sys, smiling_pipeline.cli; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    proc = python(code, [], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["pretrain", "--help"], ["ingest", "--help"]],
                         ids=" ".join)
def test_help_imports_no_heavy_library(tmp_path, args):
    code, heavy, proc = probe(args, tmp_path)
    assert code == 0 and "Usage:" in proc.stdout and proc.stderr == ""
    assert heavy == []


@pytest.mark.parametrize("args, exit_code, fragment", [
    (["pretrain", "--dataset", "bad id!"], 1, "malformed dataset id"),
    (["ingest", "--dataset", "a//b"], 1, "malformed dataset id"),
    (["train", "--device", "gpu"], 1, "runtime.device"),
    (["train", "--steps", "10"], 1, "train.learning_starts"),  # a rule between settings
    (["demos", "--dataset-id", "mujoco/hopper/expert-v0"], 1, "official"),
    (["train", "--steps", "0"], 2, "--steps"),  # a usage error: Typer's range check
], ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_refused_input_is_one_error_line_before_any_heavy_import(tmp_path, args, exit_code, fragment):
    code, heavy, proc = probe(args, tmp_path)
    lines = terminal_lines(proc.stderr)
    assert code == exit_code and len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert heavy == []


def test_the_entry_point_refuses_a_bad_id_with_one_line(tmp_path):
    proc = python("from smiling_pipeline.cli import main; main()", ["pretrain", "--dataset", "bad id!"], tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert terminal_lines(proc.stderr) == [
        "error: malformed dataset id 'bad id!': expected namespace/name[-vN], e.g. mujoco/hopper/expert-v0 or mujoco/humanoid"]
