"""Stochastic- against deterministic-action demonstrations: does the default SMILING learn better, and does its
reward follow the true reward more closely, when the expert's demonstrations are recorded with its sampled actions
(``expert-v1``, as the official ``collect_obs``) instead of its mean actions (``expert-v0``)?

Run from the repository root (reads committed sweep cells; a few seconds):
  .venv/bin/python studies/demo_actions.py --out reports/fidelity/stochastic
  -> <out>/demo_actions.md

Issue 26. The cells: the default SMILING on v0 (``sweeps/fidelity.yaml``'s raw-rank cells, reports/fidelity/cells),
on v1 (``sweeps/fidelity-stochastic.yaml``, reports/fidelity/stochastic-cells), and the faithful DAC on v0 (the
locomotion study, cut to the same budget) and on v1 where that sweep has run it; BC (state-action) likewise. The two dataset versions have their own reference scores (the
stochastic expert's return is the v1 "expert"), so every return is put on v0's scale before it is compared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from smiling_pipeline import compare
from smiling_pipeline.evaluate import References

TASKS = ("halfcheetah", "hopper", "walker2d")
VARIANTS = ("state-only", "state-action")
CELLS = {"v0": [Path("reports/fidelity/cells")], "v1": [Path("reports/fidelity/stochastic-cells")],
         "loco": [Path("reports/loco/cells"), Path("reports/loco-hopper/cells")]}


def references(task: str, version: str, root: Path) -> References:
    """A committed dataset's reference scores (its Minari metadata)."""
    meta = json.loads((root / "smiling" / task / f"expert-{version}" / "data" / "metadata.json").read_text())
    return References(meta["ref_min_score"], meta["ref_max_score"], "dataset reference scores")


def on_scale(run: compare.RunCurve, own: References, target: References) -> compare.RunCurve:
    """``run`` with its normalized returns re-expressed against ``target``'s reference scores."""
    raw = np.array(run.returns) * (own.expert - own.random) + own.random
    return dataclasses.replace(run, returns=tuple(float(x) for x in target.normalize(raw)))


def runs(source: str, task: str, variant: str, algorithm: str, budget: int) -> list[compare.RunCurve]:
    """The default-setting runs of one method on one task and variant, cut to ``budget`` env steps."""
    version = "v1" if source == "v1" else "v0"
    found = [c for folder in CELLS[source] for c in compare.load_cells(folder, f"smiling/{task}/expert-{version}")
             if c.variant == variant and c.algorithm == algorithm and c.config == "default"]
    kept, _ = compare.within_budget(found, budget)
    return [c for c in kept if c.env_free or c.steps[-1] == budget]


def row(task: str, demos: str, group: list[compare.RunCurve], own: float) -> str:
    """One table row: finals (mean and 95 % interval, per seed; ``own``: the mean on the run's own dataset's
    scale), AUC (none for BC), the reward-true correlation over each run."""
    s = compare.summarise(group)
    corr = [compare.quarters(c.diagnostics["reward_true_corr"])[1] for c in group
            if c.diagnostics.get("reward_true_corr")]
    corr_text = f"{np.nanmean(corr):.2f} ({' / '.join(f'{x:.2f}' for x in corr)})" if corr else "-"
    auc = "-" if group[0].env_free else f"{s.auc:.2f}"  # BC has one evaluation, no curve
    return (f"| {task} | {demos} | {len(group)} | {s.mean:.3f} [{s.mean_ci[0]:.2f}, {s.mean_ci[1]:.2f}] | "
            + " / ".join(f"{c.final:.3f}" for c in group) + f" | {own:.3f} | {auc} | {corr_text} |")


def table(minari_root: Path, budget: int) -> list[str]:
    """Per task and variant with v1 SMILING cells: each method on each demo version, on v0's scale."""
    lines = ["| task, variant | demos, method | seeds | final (v0 scale) [95 % CI] | per seed | final (own expert's "
             "scale) | AUC (v0 scale) | reward-true corr. over the run (per seed) |",
             "|---|---|---:|---:|---|---:|---:|---|"]
    for task in TASKS:
        v0, v1 = references(task, "v0", minari_root), references(task, "v1", minari_root)
        for variant in VARIANTS:
            stochastic = {m: runs("v1", task, variant, m, budget) for m in ("smiling", "dac", "bc")}
            if not stochastic["smiling"]:
                continue
            groups = {"deterministic (v0), SMILING": runs("v0", task, variant, "smiling", budget),
                      "**stochastic (v1), SMILING**": stochastic["smiling"],
                      "deterministic (v0), DAC": runs("loco", task, variant, "dac", budget),
                      "stochastic (v1), DAC": stochastic["dac"],
                      "deterministic (v0), BC": runs("loco", task, variant, "bc", budget),
                      "stochastic (v1), BC": stochastic["bc"]}
            lines += [row(f"{task} {variant}", name, [on_scale(c, v1, v0) for c in g] if "v1" in name else g,
                          float(np.mean([c.final for c in g])))
                      for name, g in groups.items() if g]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("reports/fidelity/stochastic"))
    ap.add_argument("--minari-root", type=Path, default=Path("data/minari"))
    ap.add_argument("--budget", type=int, default=100_000, help="env steps every compared run is cut to")
    args = ap.parse_args()
    lines = [f"# Stochastic- vs deterministic-action demonstrations, default SMILING, {args.budget:,} env steps", "",
             "Command: `.venv/bin/python studies/demo_actions.py --out " + str(args.out) + "`", "",
             "final = mean of the last 3 evaluations (5 episodes each); returns of the v1 cells re-expressed on v0's "
             "reference scores (the same raw return for both; 'own expert's scale': against the dataset the run "
             "imitated, whose expert acted stochastically for v1); 95 % percentile-bootstrap intervals over seeds; correlation = the per-iteration "
             "correlation of the reward with the true reward on the learner's newest states, averaged over the run.",
             "", *table(args.minari_root, args.budget), ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo_actions.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
