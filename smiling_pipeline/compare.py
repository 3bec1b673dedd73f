"""Comparison report across runs in the MLflow store: SMILING vs baselines over seeds (``report --compare``).

Reads the finished ``train`` runs, groups them by dataset, variant (state-only / state-action),
algorithm and number of expert states, and writes learning curves with 95% confidence bands, a
table of final normalized returns (mean, standard error, IQM) and a data-efficiency plot.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from scipy import stats  # trim_mean: the IQM

from smiling_pipeline.errors import UserError
from smiling_pipeline.io import atomic_dir
from smiling_pipeline.report import plt

VARIANTS = ("state-only", "state-action")
COLORS = {"smiling": "tab:blue", "dac": "tab:orange", "bc": "tab:green"}


@dataclass(frozen=True)
class RunCurve:
    """One finished train run: its grouping tags and its normalized-return evaluations."""

    dataset: str
    variant: str
    algorithm: str
    rl: str
    expert_states: int
    seed: int
    steps: tuple[int, ...]
    returns: tuple[float, ...]

    @property
    def label(self) -> str:
        return self.algorithm.upper() + ("" if self.rl in ("sac", "") or self.algorithm == "bc" else f" ({self.rl})")

    @property
    def final(self) -> float:
        return self.returns[-1]


@dataclass(frozen=True)
class Summary:
    """Final normalized return of one group over its seeds."""

    dataset: str
    variant: str
    label: str
    expert_states: int
    seeds: int
    mean: float
    se: float
    iqm: float


def load_runs(tracking_uri: str, dataset: Optional[str] = None, exp_prefix: Optional[str] = None) -> list[RunCurve]:
    """Finished train runs (latest per dataset/variant/algorithm/expert states/seed) with their curves."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiments = [e for e in client.search_experiments() if dataset is None or e.name == dataset]
    if not experiments:
        raise UserError(f"no MLflow experiment {'for ' + dataset if dataset else 'at all'} in {tracking_uri}; "
                        "run `smiling-cli train` (or a sweep) first")
    runs = client.search_runs([e.experiment_id for e in experiments],
                              "tags.stage = 'train' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=50_000)
    latest: dict[tuple[str, str, str, str, int, int], RunCurve] = {}
    for r in runs:
        tags = r.data.tags
        if exp_prefix and not tags.get("dvc_exp", "").startswith(exp_prefix):
            continue
        history = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, "normalized_return"))
        if not history or "expert_states" not in tags:
            continue
        curve = RunCurve(tags["dataset"], tags.get("variant", "state-only"), tags["algorithm"], tags.get("rl", "sac"),
                         int(tags["expert_states"]), int(tags["seed"]),
                         tuple(s for s, _ in history), tuple(v for _, v in history))
        latest.setdefault((curve.dataset, curve.variant, curve.algorithm, curve.rl, curve.expert_states, curve.seed),
                          curve)
    if not latest:
        raise UserError(f"no finished train runs{' named ' + exp_prefix + '*' if exp_prefix else ''} in "
                        f"{tracking_uri}; run `smiling-cli train` (or a sweep) first")
    return sorted(latest.values(), key=lambda c: (c.dataset, c.variant, c.algorithm, c.expert_states, c.seed))


def mean_ci(values: np.ndarray, resamples: int = 2_000) -> tuple[float, float, float]:
    """Mean and the 95% percentile-bootstrap interval over seeds (as rliable reports; stays within the data)."""
    mean = float(values.mean())
    if len(values) < 2:
        return mean, mean, mean
    rng = np.random.default_rng(0)  # fixed: the same runs give the same report
    boot = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return mean, float(lo), float(hi)


def summarise(group: list[RunCurve]) -> Summary:
    """Mean, standard error and interquartile mean (25% trimmed, as rliable) of the final returns."""
    finals = np.array([c.final for c in group])
    se = float(finals.std(ddof=1) / math.sqrt(len(finals))) if len(finals) > 1 else 0.0
    first = group[0]
    return Summary(first.dataset, first.variant, first.label, first.expert_states, len(finals), float(finals.mean()),
                   se, float(stats.trim_mean(finals, 0.25)))


def mean_curve(group: list[RunCurve]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps every seed evaluated at, with the mean and the 95% interval over seeds there."""
    common = sorted(set.intersection(*(set(c.steps) for c in group)))
    rows = [[dict(zip(c.steps, c.returns))[s] for c in group] for s in common]
    stats_at = np.array([mean_ci(np.array(r)) for r in rows]).reshape(-1, 3)
    return np.array(common), stats_at[:, 0], stats_at[:, 1], stats_at[:, 2]


def _groups(runs: list[RunCurve]) -> dict[tuple[str, str, str, int], list[RunCurve]]:
    out: dict[tuple[str, str, str, int], list[RunCurve]] = defaultdict(list)
    for c in runs:
        out[(c.dataset, c.variant, c.label, c.expert_states)].append(c)
    return out


def _slug(dataset: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", dataset).strip("-")


def _default_states(runs: list[RunCurve]) -> int:
    """The expert-state count the learning curves use: the one with the most runs (ties: the largest)."""
    counts: dict[int, int] = defaultdict(int)
    for c in runs:
        counts[c.expert_states] += 1
    return max(counts, key=lambda n: (counts[n], n))


def plot_learning_curves(path: Path, dataset: str, groups: dict[tuple[str, str, str, int], list[RunCurve]],
                         states: int) -> None:
    """State-only and state-action panels side by side; BC (no env steps) is a horizontal band."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=110, sharey=True)
    for ax, variant in zip(axes, VARIANTS):
        for (d, v, label, n), group in sorted(groups.items()):
            if d != dataset or v != variant or n != states:
                continue
            color = COLORS.get(group[0].algorithm)
            name = f"{label} (n={len(group)})"
            if group[0].algorithm == "bc":
                m, lo, hi = mean_ci(np.array([c.final for c in group]))
                ax.axhline(m, color=color, ls="--", label=name)
                ax.axhspan(lo, hi, color=color, alpha=0.15)
                continue
            x, m, lo, hi = mean_curve(group)
            ax.plot(x, m, color=color, label=name)
            ax.fill_between(x, lo, hi, color=color, alpha=0.2)
        ax.axhline(1.0, color="grey", lw=1, ls=":")
        ax.set(title=f"{variant}", xlabel="env steps")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
        else:
            ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes, color="grey")
    axes[0].set_ylabel("normalized return")
    fig.suptitle(f"{dataset}: {states} expert states, mean and 95% bootstrap CI over seeds")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def plot_data_efficiency(path: Path, dataset: str, summaries: list[Summary]) -> None:
    """Final normalized return against the number of expert states, one line per algorithm and variant run
    at several counts (single counts are in the table)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    lines: dict[tuple[str, str], list[Summary]] = defaultdict(list)
    for s in summaries:
        if s.dataset == dataset:
            lines[(s.label, s.variant)].append(s)
    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=110)
    counts: set[int] = set()
    for (label, variant), points in sorted(lines.items()):
        if len(points) < 2:
            continue
        points.sort(key=lambda s: s.expert_states)
        counts.update(s.expert_states for s in points)
        ax.errorbar([s.expert_states for s in points], [s.mean for s in points], yerr=[s.se for s in points],
                    marker="o", capsize=3, ls="-" if variant == "state-only" else "--",
                    color=COLORS.get(label.split()[0].lower()), label=f"{label}, {variant}")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(counts)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(n) for n in sorted(counts)])
    ax.axhline(1.0, color="grey", lw=1, ls=":")
    ax.set(title=f"{dataset}: final return vs expert states (mean ± SE)", xlabel="expert states",
           ylabel="final normalized return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def write_comparison(tracking_uri: str, out: Path, dataset: Optional[str] = None,
                     exp_prefix: Optional[str] = None) -> Path:
    """Plots and ``comparison.md`` in ``out`` (replaced as a whole, so a failure leaves the old report)."""
    runs = load_runs(tracking_uri, dataset, exp_prefix)
    groups = _groups(runs)
    summaries = [summarise(g) for _, g in sorted(groups.items())]
    lines = ["# SMILING vs baselines", "",
             "Final normalized return = the last evaluation during training (random policy 0, expert 1); "
             "mean, standard error (SE) and interquartile mean (IQM, 25% trimmed) over seeds. "
             "Bands in the plots are 95% percentile-bootstrap intervals over seeds. With fewer than 4 seeds "
             "the IQM trims nothing and equals the mean.", ""]
    with atomic_dir(out) as tmp:
        for d in sorted({c.dataset for c in runs}):
            slug, here = _slug(d), [c for c in runs if c.dataset == d]
            states = _default_states(here)
            plot_learning_curves(tmp / f"{slug}_curves.png", d, groups, states)
            lines += [f"## {d}", "", "| variant | algorithm | expert states | seeds | mean | SE | IQM |",
                      "|---|---|---:|---:|---:|---:|---:|"]
            lines += [f"| {s.variant} | {s.label} | {s.expert_states} | {s.seeds} | {s.mean:.3f} | {s.se:.3f} | "
                      f"{s.iqm:.3f} |" for s in summaries if s.dataset == d]
            lines += ["", f"![learning curves]({slug}_curves.png)", ""]
            by_group = defaultdict(set)
            for c in here:
                by_group[(c.label, c.variant)].add(c.expert_states)
            if any(len(n) > 1 for n in by_group.values()):
                plot_data_efficiency(tmp / f"{slug}_data_efficiency.png", d, summaries)
                lines += [f"![data efficiency]({slug}_data_efficiency.png)", ""]
        (tmp / "comparison.md").write_text("\n".join(lines))
    return out / "comparison.md"
