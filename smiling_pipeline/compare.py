"""Comparison report across runs in the MLflow store: SMILING vs baselines over seeds (``report --compare``).

Reads the finished ``train`` runs (and committed sweep-cell records), groups them by dataset, variant
(state-only / state-action), algorithm and number of expert states, and writes an overview of who leads
where, learning curves with 95% confidence bands, tables of final normalized returns (mean, IQM, AUC)
per group and per run, diagnostics and a data-efficiency plot.
"""

from __future__ import annotations

import re
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from smiling_pipeline import algorithms, config, tracking
from smiling_pipeline.errors import UserError
from smiling_pipeline.io import atomic_dir
from smiling_pipeline.report import FINAL_EVALS, plt, short_steps, steps_axis

VARIANTS = ("state-only", "state-action")
COLORS = {name: spec.color for name, spec in algorithms.REGISTRY.items()}
# ablations (non-default settings) in other colours, so no ablation is drawn like a default method
ABLATION_COLORS = ("tab:purple", "tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


DIAGNOSTICS = {"reward_mean_expert": "DS-divergence estimate\n(mean reward on expert states)",
               "reward_true_corr": "correlation of the reward with the true reward\n(learner states; moving mean of 10 iterations)"}
# the correlation of each half of the reward (``RewardModel.halves``) with the true reward: tabled, not plotted
HALVES = {"reward_true_corr_expert": "expert half", "reward_true_corr_learner": "learner half"}
RETURN_TO_GO = {"reward_rtg_corr": "reward vs return-to-go"}
SMOOTH = {"reward_true_corr": 10}  # iterations averaged in the diagnostics plot: one iteration's value is noisy
MIN_SEEDS = 3  # the overview names a leader only when every method in the row has this many seeds


@dataclass(frozen=True)
class RunCurve:
    """One finished train run: its grouping tags and its normalized-return evaluations."""

    dataset: str
    variant: str
    algorithm: str
    rl: str
    config: str  # settings that differ from today's defaults (``config.settings_tag``), "default" if none
    expert_states: int
    seed: int
    steps: tuple[int, ...]
    returns: tuple[float, ...]
    # per-iteration diagnostics (``DIAGNOSTICS``, ``HALVES``, ``RETURN_TO_GO``): metric -> ((env steps, value), ...)
    diagnostics: dict[str, tuple[tuple[int, float], ...]] = field(default_factory=dict, compare=False)
    name: str = field(default="", compare=False)  # the sweep cell, DVC experiment or MLflow run
    seconds: Optional[float] = field(default=None, compare=False)  # training wall time (``train_seconds``)
    # seconds is the cell process's wall time (records from before train_seconds): a resumed cell's last process
    seconds_of_process: bool = field(default=False, compare=False)

    @property
    def label(self) -> str:
        fixed = self.spec is not None and self.spec.rl is not None  # the method always uses one learner
        rl = "" if self.rl in ("sac", "") or fixed else f" ({self.rl})"
        return self.algorithm.upper() + rl + ("" if self.config == "default" else f" [{self.config}]")

    @property
    def spec(self) -> Optional[algorithms.Algorithm]:
        """The registered method (None for a name no longer registered)."""
        return algorithms.REGISTRY.get(self.algorithm)

    @property
    def env_free(self) -> bool:
        """Whether the method trains without env steps (BC): a horizontal band in the plots."""
        return self.spec is not None and self.spec.run is not None

    @property
    def final(self) -> float:
        return float(np.mean(self.returns[-FINAL_EVALS:]))

    @property
    def auc(self) -> float:
        """Area under the learning curve divided by its length: the mean normalized return over training."""
        if len(self.steps) < 2:
            return self.returns[0]
        return float(np.trapezoid(self.returns, self.steps) / (self.steps[-1] - self.steps[0]))


@dataclass(frozen=True)
class Summary:
    """Final normalized return of one group over its seeds, with 95% bootstrap intervals."""

    dataset: str
    variant: str
    label: str
    expert_states: int
    seeds: int
    mean: float
    mean_ci: tuple[float, float]
    iqm: float
    iqm_ci: tuple[float, float]
    auc: float
    auc_ci: tuple[float, float]


def _curve(tags: dict[str, str], settings: Optional[Mapping[str, Any]], steps: tuple[int, ...],
           returns: tuple[float, ...], diagnostics: dict[str, tuple[tuple[int, float], ...]], name: str,
           seconds: Optional[float], seconds_of_process: bool = False) -> RunCurve:
    """A run's curve, labelled by its recorded ``settings`` against today's defaults where it has them (a run
    made before a default changed keeps the setting it ran with in its label), else by its recorded tag."""
    spec = algorithms.REGISTRY.get(tags["algorithm"])
    recorded = tags.get("config", "linear=True" if tags.get("linear") == "True" else "default")
    label = config.settings_tag(settings, spec.tag_scopes) if settings and spec else recorded
    return RunCurve(tags["dataset"], tags.get("variant", "state-only"), tags["algorithm"], tags.get("rl", "sac"),
                    label, int(tags["expert_states"]), int(tags["seed"]), steps, returns, diagnostics, name, seconds,
                    seconds_of_process)


def _key(c: RunCurve) -> tuple[str, str, str, str, str, int, int]:
    return (c.dataset, c.variant, c.algorithm, c.rl, c.config, c.expert_states, c.seed)


def load_runs(tracking_uri: str, dataset: Optional[str] = None, exp_prefix: Optional[str] = None) -> list[RunCurve]:
    """Finished train runs (latest per dataset/variant/algorithm/config/expert states/seed) with their curves."""
    latest: dict[tuple[str, str, str, str, str, int, int], RunCurve] = {}
    for r in tracking.finished_runs(tracking_uri, "train", dataset):
        name = r.tags.get("dvc_exp") or r.tags.get("sweep_cell", "")
        if exp_prefix and not name.startswith(exp_prefix):
            continue
        history = r.history("normalized_return")
        if not history or "expert_states" not in r.tags:
            continue
        diagnostics = {k: tuple(r.history(k)) for k in (*DIAGNOSTICS, *HALVES, *RETURN_TO_GO)}
        curve = _curve(r.tags, r.params, tuple(s for s, _ in history), tuple(v for _, v in history), diagnostics,
                       name or r.name, r.metrics.get("train_seconds"))
        latest.setdefault(_key(curve), curve)
    return list(latest.values())


def load_cells(folder: Path, dataset: Optional[str] = None, exp_prefix: Optional[str] = None) -> list[RunCurve]:
    """Runs from the records of finished sweep cells (``sweep --backend local``), as committed to git."""
    import csv
    import json

    out = []
    for cell in sorted(folder.glob("*/cell.json")):
        if exp_prefix and not cell.parent.name.startswith(exp_prefix):
            continue
        info = json.loads((cell.parent / "run.json").read_text())
        tags = {**info["tags"], "dataset": info["dataset_id"]}
        seconds = info.get("train_seconds", json.loads(cell.read_text()).get("wall_time_s"))
        with open(cell.parent / "learning_curve.csv") as f:
            rows = list(csv.DictReader(f))
        with open(cell.parent / "iterations.csv") as f:
            iterations = list(csv.DictReader(f))
        diagnostics = {k: tuple((int(r["env_steps"]), float(r[k])) for r in iterations if r.get(k) not in (None, ""))
                       for k in (*DIAGNOSTICS, *HALVES, *RETURN_TO_GO)}
        curve = _curve(tags, info.get("settings"), tuple(int(r["env_steps"]) for r in rows),
                       tuple(float(r["normalized_return"]) for r in rows), diagnostics, cell.parent.name, seconds,
                       "train_seconds" not in info)
        if dataset is None or curve.dataset == dataset:
            out.append(curve)
    return out


def merge_runs(*sources: list[RunCurve]) -> list[RunCurve]:
    """One run per key (the first source wins), sorted."""
    merged: dict[tuple[str, str, str, str, str, int, int], RunCurve] = {}
    for runs in sources:
        for c in runs:
            merged.setdefault(_key(c), c)
    return sorted(merged.values(), key=lambda c: (c.dataset, c.variant, c.algorithm, c.config, c.expert_states, c.seed))


def within_budget(runs: list[RunCurve], budget: int) -> tuple[list[RunCurve], list[RunCurve]]:
    """Each run as it stood after ``budget`` env steps (its evaluations and diagnostics up to there; its
    training time unknown), so runs of different lengths compare at one budget; and the runs that ended
    before it or were first evaluated after it, which cannot. Env-free methods (BC) are kept as they are."""
    kept, short = [], []
    for c in runs:
        n = sum(s <= budget for s in c.steps)
        if c.env_free:
            kept.append(c)
        elif c.steps[-1] < budget or n == 0:
            short.append(c)
        else:
            diagnostics = {k: tuple(p for p in v if p[0] <= budget) for k, v in c.diagnostics.items()}
            kept.append(replace(c, steps=c.steps[:n], returns=c.returns[:n], diagnostics=diagnostics, seconds=None))
    return kept, short


def interval_estimates(scores: np.ndarray, aggregate: Callable[[np.ndarray], np.ndarray]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``aggregate`` of a (runs, columns) score matrix and its 95% percentile-bootstrap interval over runs
    (rliable's stratified bootstrap: runs resampled within each column); fixed seed, same report."""
    from rliable import library as rly

    if len(scores) < 2:
        point = aggregate(scores)
        return point, np.stack([point, point])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arch's random_state deprecation
        point, ci = rly.get_interval_estimates({"x": scores}, aggregate, reps=2_000,
                                               random_state=np.random.RandomState(0))
    return point["x"], ci["x"]


def summarise(group: list[RunCurve]) -> Summary:
    """Mean, IQM (rliable's 25% trimmed mean) and mean AUC over seeds, each with its 95% interval."""
    from rliable import metrics

    scores = np.array([[c.final, c.auc] for c in group])
    point, ci = interval_estimates(scores, lambda s: np.array([
        metrics.aggregate_mean(s[:, :1]), metrics.aggregate_iqm(s[:, :1]), metrics.aggregate_mean(s[:, 1:])]))
    first = group[0]
    return Summary(first.dataset, first.variant, first.label, first.expert_states, len(group), float(point[0]),
                   (float(ci[0, 0]), float(ci[1, 0])), float(point[1]), (float(ci[0, 1]), float(ci[1, 1])),
                   float(point[2]), (float(ci[0, 2]), float(ci[1, 2])))


def mean_curve(group: list[RunCurve]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps every seed evaluated at, with the mean and the 95% interval over seeds there."""
    common = sorted(set.intersection(*(set(c.steps) for c in group)))
    scores = np.array([[dict(zip(c.steps, c.returns, strict=True))[s] for s in common] for c in group])
    point, ci = interval_estimates(scores, lambda s: s.mean(axis=0))
    return np.array(common), point, ci[0], ci[1]


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


def _panel(groups: dict[tuple[str, str, str, int], list[RunCurve]], dataset: str, variant: str,
           states: int) -> list[tuple[str, str, list[RunCurve]]]:
    """The (label, colour, runs) of one plot panel: defaults in their method's colour, ablations each in
    one of their own, the same in every plot of the report."""
    out, ablations = [], 0
    for (d, v, label, n), group in sorted(groups.items()):
        if d != dataset or v != variant or n != states:
            continue
        if group[0].config == "default":
            color = COLORS.get(group[0].algorithm, "black")
        else:
            color, ablations = ABLATION_COLORS[ablations % len(ABLATION_COLORS)], ablations + 1
        out.append((label, color, group))
    return out


def plot_learning_curves(path: Path, dataset: str, groups: dict[tuple[str, str, str, int], list[RunCurve]],
                         states: int) -> None:
    """State-only and state-action panels side by side (only those with runs), on one step axis; BC (no env
    steps) is a horizontal band."""
    variants = [v for v in VARIANTS if _panel(groups, dataset, v, states)] or list(VARIANTS)
    fig, axes = plt.subplots(1, len(variants), figsize=(1 + 5 * len(variants) if len(variants) > 1 else 8, 3.8), dpi=110,
                             sharex=True, sharey=True, squeeze=False)
    for ax, variant in zip(axes[0], variants, strict=True):
        for label, color, group in _panel(groups, dataset, variant, states):
            name = f"{label} (n={len(group)})"
            if group[0].env_free:
                summary = summarise(group)
                ax.axhline(summary.mean, color=color, ls="--", label=name)
                ax.axhspan(*summary.mean_ci, color=color, alpha=0.15)
                continue
            x, m, lo, hi = mean_curve(group)
            ax.plot(x, m, color=color, label=name)
            ax.fill_between(x, lo, hi, color=color, alpha=0.2)
        ax.axhline(1.0, color="grey", lw=1, ls=":")
        ax.set(title=f"{variant}", xlabel="env steps")
        steps_axis(ax)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
        else:
            ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes, color="grey")
    axes[0, 0].set_ylabel("normalized return")
    fig.suptitle(f"{dataset}: {states} expert states, mean and 95% bootstrap CI over seeds")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def plot_diagnostics(path: Path, dataset: str, groups: dict[tuple[str, str, str, int], list[RunCurve]],
                     states: int) -> bool:
    """Per-iteration diagnostics of the state-only runs, one thin line per seed; False when there are none."""
    fig, axes = plt.subplots(1, len(DIAGNOSTICS), figsize=(11, 3.6), dpi=110)
    drawn = False
    for ax, (metric, title) in zip(axes, DIAGNOSTICS.items(), strict=True):
        for label, color, group in _panel(groups, dataset, "state-only", states):
            for j, c in enumerate(group):
                points = c.diagnostics.get(metric, ())
                if points:
                    drawn = True
                    x, y = (np.array(a) for a in zip(*points, strict=True))
                    w = min(SMOOTH.get(metric, 1), len(y))
                    y = np.convolve(y, np.ones(w) / w, mode="valid")  # trailing moving mean
                    ax.plot(x[w - 1:], y, color=color, lw=0.8, alpha=0.8, label=label if j == 0 else None)
        ax.set(title=title, xlabel="env steps")
        steps_axis(ax)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{dataset}, state-only: per-iteration diagnostics (one line per seed)")
    fig.tight_layout()
    if drawn:
        fig.savefig(path, format="png")
    plt.close(fig)
    return drawn


def _defined_mean(y: np.ndarray) -> float:
    """Mean of the values that are not NaN; NaN when none is."""
    y = y[~np.isnan(y)]
    return float(y.mean()) if y.size else float("nan")


def quarters(points: tuple[tuple[int, float], ...]) -> tuple[float, float, float, float]:
    """The mean of a run's per-iteration values over its first quarter of iterations, all, and its last,
    each over the iterations that have a value, and the share of iterations that have one."""
    y = np.array([v for _, v in points], dtype=float)
    k = max(1, len(y) // 4)
    return _defined_mean(y[:k]), _defined_mean(y), _defined_mean(y[-k:]), float(np.mean(~np.isnan(y)))


def correlation_table(groups: dict[tuple[str, str, str, int], list[RunCurve]], dataset: str) -> list[str]:
    """Per group, how well the imitation reward follows the task's own reward on the learner's states: the
    per-iteration correlation early, over the run and late, averaged over seeds (the per-seed run means
    after); a reward that does not rise with the true reward where the learner is gives it little to climb.
    Iterations whose true reward is constant on the learner's newest states (a sparse reward never earned, a
    pendulum that always balances) have no correlation: they are left out and counted in "defined"."""
    rows = []
    for (d, v, label, n), group in sorted(groups.items()):
        if d != dataset:
            continue
        per_seed = _seed_quarters(group, "reward_true_corr")
        if per_seed:
            first, whole, last, defined = (_defined_mean(q) for q in np.array(per_seed).T)
            rows.append(f"| {v} | {label} | {n} | {len(per_seed)} | {first:.2f} | {whole:.2f} | {last:.2f} | "
                        f"{defined:.0%} | " + ", ".join(f"{q[1]:.2f}" for q in per_seed) + " |")
    if not rows:
        return []
    return ["Correlation of the reward with the true reward on the learner's states (per iteration), averaged "
            "over each run's first quarter of iterations, all of them and the last quarter, then over seeds; "
            "iterations where the true reward did not vary on those states have none and are left out "
            "(defined: the share of iterations that have one):", "",
            "| variant | algorithm | expert states | seeds | first quarter | whole run | last quarter | defined | "
            "per seed, whole run |", "|---|---|---:|---:|---:|---:|---:|---:|---|", *rows, ""]


def _seed_quarters(group: list[RunCurve], metric: str) -> list[tuple[float, float, float, float]]:
    """:func:`quarters` of one diagnostic for each run of a group that recorded it."""
    return [quarters(c.diagnostics[metric]) for c in group if c.diagnostics.get(metric)]


def quarter_table(groups: dict[tuple[str, str, str, int], list[RunCurve]], dataset: str, metrics: Mapping[str, str],
                  intro: str) -> list[str]:
    """Per group whose runs recorded every one of ``metrics`` (not NaN throughout), each metric's first quarter /
    whole run / last quarter, averaged over seeds as in :func:`correlation_table`; [] when no group has them."""
    rows = []
    for (d, v, label, n), group in sorted(groups.items()):
        per_metric = {k: _seed_quarters(group, k) for k in metrics}
        if d != dataset or not all(any(np.isfinite(q[1]) for q in qs) for qs in per_metric.values()):
            continue  # not recorded, or NaN throughout (a reward without halves: DAC)
        cells = [" / ".join(f"{_defined_mean(q):.2f}" for q in np.array(per_seed).T[:3]) for per_seed in per_metric.values()]
        rows.append(f"| {v} | {label} | {n} | {len(next(iter(per_metric.values())))} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [intro, "", "| variant | algorithm | expert states | seeds | " + " | ".join(metrics.values()) + " |",
            "|---|---|---:|---:|" + "---:|" * len(metrics), *rows, ""]


def halves_table(groups: dict[tuple[str, str, str, int], list[RunCurve]], dataset: str) -> list[str]:
    """Which of the two models' errors follows the task where the whole reward does not."""
    return quarter_table(groups, dataset, HALVES,
                         "Correlation of each half of the reward with the true reward on the learner's states (the "
                         "expert half: minus the expert model's denoising error; the learner half: the learner model's "
                         "error; their sum is the reward), first quarter / whole run / last quarter, averaged over seeds:")


def return_to_go_table(groups: dict[tuple[str, str, str, int], list[RunCurve]], dataset: str) -> list[str]:
    """The reward against the discounted true return-to-go: the yardstick where the step reward pays for falling."""
    return quarter_table(groups, dataset, RETURN_TO_GO,
                         "Correlation of the reward with the discounted true return-to-go on the same states (rows of "
                         "finished episodes), first quarter / whole run / last quarter, averaged over seeds; where the "
                         "step reward peaks just before an episode ends (a hopper pitching into a fall) this, not the "
                         "step-reward correlation, says whether the reward points the learner the right way:")


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
        means = np.array([s.mean for s in points])
        ax.errorbar([s.expert_states for s in points], means,
                    yerr=[means - [s.mean_ci[0] for s in points], [s.mean_ci[1] for s in points] - means],
                    marker="o", capsize=3, ls="-" if variant == "state-only" else "--",
                    color=COLORS.get(label.split()[0].lower()), label=f"{label}, {variant}")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(counts)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(n) for n in sorted(counts)])
    ax.axhline(1.0, color="grey", lw=1, ls=":")
    ax.set(title=f"{dataset}: final return vs expert states (mean, 95% CI)", xlabel="expert states",
           ylabel="final normalized return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _ci(point: float, ci: tuple[float, float]) -> str:
    return f"{point:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _leader(row: dict[str, Summary]) -> str:
    """The method whose final interval lies above every other's in the row, when each has 3+ seeds."""
    if len(row) < 2:
        return "-"
    if min(s.seeds for s in row.values()) < MIN_SEEDS:
        return f"fewer than {MIN_SEEDS} seeds"
    for label, s in row.items():
        if all(s.mean_ci[0] > o.mean_ci[1] for other, o in row.items() if other != label):
            return f"**{label}**"
    return "none (intervals overlap)"


def overview(groups: dict[tuple[str, str, str, int], list[RunCurve]], summaries: list[Summary],
             states: dict[str, int]) -> list[str]:
    """Who leads where: per dataset and variant, each method's final with its default settings (ablations are
    in the dataset's section) at the dataset's usual expert-state count (``states``), and the env steps the
    runs took."""
    rows: dict[tuple[str, str], dict[str, Summary]] = defaultdict(dict)
    budgets: dict[tuple[str, str], set[int]] = defaultdict(set)
    for (d, v, label, n), s in zip(sorted(groups), summaries, strict=True):
        group = groups[(d, v, label, n)]
        if group[0].config == "default" and n == states[d]:
            rows[(d, v)][label] = s
            budgets[(d, v)] |= {c.steps[-1] for c in group if not c.env_free}
    labels = sorted({label for row in rows.values() for label in row},
                    key=lambda label: (list(COLORS).index(label.lower()) if label.lower() in COLORS else len(COLORS), label))
    lines = ["## Overview", "",
             f"Final mean [95% CI] (seeds) of each method with its default settings. Leader: the method whose interval "
             f"lies above all others' in its row, named only when every method there has {MIN_SEEDS} or more seeds. "
             "Env steps: the runs' training budget (BC takes no env steps).", "",
             "| dataset | variant | env steps | " + " | ".join(labels) + " | leader |",
             "|---|---|---|" + "---:|" * len(labels) + "---|"]
    for (d, v), row in sorted(rows.items(), key=lambda item: (item[0][0], VARIANTS.index(item[0][1]))):
        budget = "-" if not budgets[(d, v)] else "-".join(short_steps(b) for b in sorted(budgets[(d, v)]))
        cells = [f"{_ci(row[label].mean, row[label].mean_ci)} ({row[label].seeds})" if label in row else "-"
                 for label in labels]
        lines.append(f"| {d} | {v} | {budget} | " + " | ".join(cells) + f" | {_leader(row)} |")
    return [*lines, ""]


def run_table(runs: list[RunCurve]) -> list[str]:
    """One row per run: its final, last, best and AUC, and how long it trained."""
    lines = ["| run | variant | algorithm | seed | final | last | best | AUC | training time |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in sorted(runs, key=lambda c: (c.variant, c.label, c.expert_states, c.seed)):
        time = "-" if c.seconds is None else f"{c.seconds / 60:.1f} min" + (" *" if c.seconds_of_process else "")
        lines.append(f"| `{c.name}` | {c.variant} | {c.label} | {c.seed} | {c.final:.3f} | {c.returns[-1]:.3f} | "
                     f"{max(c.returns):.3f} | {c.auc:.3f} | {time} |")
    if any(c.seconds_of_process for c in runs):
        lines += ["", "\\* the cell process's wall time (ingest, pretraining, training, evaluation), recorded before runs "
                  "kept their training time: for a cell resumed from a checkpoint, its last process only."]
    return lines


def budget_note(budget: Optional[int], short: list[RunCurve]) -> list[str]:
    """What ``--budget`` did: where every run was cut, and which runs it left out."""
    if budget is None:
        return []
    note = f"**Budget: every run cut at {budget:,} env steps** (final = the mean of its last {FINAL_EVALS} evaluations up to there)."
    if short:
        note += f" Left out (ended before it, or first evaluated after it): {', '.join(f'`{c.name}`' for c in short)}."
    return [note, ""]


def _check_replaceable(out: Path) -> None:
    """The report replaces its folder whole, so that folder may hold only an earlier report (its markdown and
    plots): anything else in it would be lost."""
    if not out.is_dir():
        return
    other = sorted(p.name for p in out.iterdir() if p.name != "comparison.md" and p.suffix != ".png")
    if other:
        raise UserError(f"--out {out} holds other files ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}) "
                        "and the comparison replaces its folder whole: give a new folder or one with an earlier comparison")


def write_comparison(tracking_uri: Optional[str], out: Path, dataset: Optional[str] = None,
                     exp_prefix: Optional[str] = None, cells: Sequence[Path] = (),
                     budget: Optional[int] = None) -> Path:
    """Plots and ``comparison.md`` in ``out`` (replaced as a whole, so a failure leaves the old report), from
    the MLflow store's finished runs and the committed sweep-cell records in ``cells`` (folders); on overlap
    MLflow wins, then the earlier folder. With ``budget``, every run is cut at that many env steps."""
    if tracking_uri is None and not cells:
        raise UserError("nothing to compare: give an MLflow store or a folder of sweep cells")
    _check_replaceable(out)
    runs = merge_runs(load_runs(tracking_uri, dataset, exp_prefix) if tracking_uri else [],
                      *(load_cells(folder, dataset, exp_prefix) for folder in cells))
    if not runs:
        where = " and ".join(([tracking_uri] if tracking_uri else []) + [str(folder) for folder in cells])
        which = "".join([f" of {dataset}" if dataset else "", f" named {exp_prefix}*" if exp_prefix else ""])
        raise UserError(f"no finished train runs{which} in {where}; run `smiling-cli train` or a sweep first")
    short: list[RunCurve] = []
    if budget is not None:
        runs, short = within_budget(runs, budget)
        if short and all(c.env_free for c in runs):
            first, last = min(c.steps[0] for c in short), max(c.steps[-1] for c in short)
            raise UserError(f"--budget {budget}: no run was evaluated up to it (the runs span {first} to {last} env "
                            "steps); give a budget in that range")
    groups = _groups(runs)
    summaries = [summarise(g) for _, g in sorted(groups.items())]
    by_dataset = {d: [c for c in runs if c.dataset == d] for d in sorted({c.dataset for c in runs})}
    states = {d: _default_states(here) for d, here in by_dataset.items()}
    lines = ["# SMILING vs baselines", "",
             f"Final = the mean of each run's last {FINAL_EVALS} evaluations during training (normalized return: "
             "random policy 0, expert 1); AUC = the mean normalized return over the whole curve. Mean and "
             "interquartile mean (IQM, 25% trimmed) over seeds with 95% stratified-bootstrap intervals "
             "(rliable); with fewer than 4 seeds the IQM trims nothing and equals the mean. Bands in the "
             "plots are 95% bootstrap intervals over seeds.", "", *budget_note(budget, short),
             *overview(groups, summaries, states)]
    with atomic_dir(out) as tmp:
        for d, here in by_dataset.items():
            slug = _slug(d)
            plot_learning_curves(tmp / f"{slug}_curves.png", d, groups, states[d])
            lines += [f"## {d}", "", "| variant | algorithm | expert states | seeds | final mean [95% CI] | "
                      "final IQM [95% CI] | AUC [95% CI] |", "|---|---|---:|---:|---:|---:|---:|"]
            lines += [f"| {s.variant} | {s.label} | {s.expert_states} | {s.seeds} | {_ci(s.mean, s.mean_ci)} | "
                      f"{_ci(s.iqm, s.iqm_ci)} | {_ci(s.auc, s.auc_ci)} |" for s in summaries if s.dataset == d]
            lines += ["", f"![learning curves]({slug}_curves.png)", "", *run_table(here), ""]
            if plot_diagnostics(tmp / f"{slug}_diagnostics.png", d, groups, states[d]):
                lines += [f"![diagnostics]({slug}_diagnostics.png)", ""]
            lines += correlation_table(groups, d) + halves_table(groups, d) + return_to_go_table(groups, d)
            by_group = defaultdict(set)
            for c in here:
                by_group[(c.label, c.variant)].add(c.expert_states)
            if any(len(n) > 1 for n in by_group.values()):
                plot_data_efficiency(tmp / f"{slug}_data_efficiency.png", d, summaries)
                lines += [f"![data efficiency]({slug}_data_efficiency.png)", ""]
        (tmp / "comparison.md").write_text("\n".join(lines))
    return out / "comparison.md"
