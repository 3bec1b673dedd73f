"""The README's Python API example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_python_api_example_runs_and_gives_a_reward_per_state_and_a_divergence():
    section = README.read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)
    assert namespace["r"].shape == (5,) and torch.isfinite(namespace["r"]).all()
    assert namespace["d"] > 0  # the two Gaussians differ (means 0 and 0.5)
