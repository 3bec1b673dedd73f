"""Plots and the markdown summary in ``reports/`` (matplotlib, headless)."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from smiling_pipeline import algorithms  # noqa: E402
from smiling_pipeline.errors import UserError  # noqa: E402
from smiling_pipeline.io import atomic_file  # noqa: E402

Curve = Sequence[tuple[float, float]]

FINAL_EVALS = 3  # a run's "final" = the mean of its last evaluations: one evaluation swings with a single episode


def curve_metrics(curve: list[dict[str, float]]) -> dict[str, float]:
    """A training curve's headline figures: the last evaluation, the mean of the last :data:`FINAL_EVALS` (what
    every comparison table calls "final") and the best."""
    values = [r["normalized_return"] for r in curve]
    last = values[-FINAL_EVALS:]
    return {"final_normalized_return": values[-1], "final_mean_normalized_return": sum(last) / len(last),
            "best_normalized_return": max(values)}


def short_steps(x: float) -> str:
    """A step count in k / M: 200k, not 200000."""
    return f"{x / 1e6:g}M" if abs(x) >= 1e6 else f"{x / 1e3:g}k" if abs(x) >= 1e3 else f"{x:g}"


def steps_axis(ax: Any) -> None:
    """Label a step axis in k / M, so the ticks of long runs do not run together."""
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: short_steps(x)))


def plot_curves(path: Path, title: str, xlabel: str, ylabel: str, curves: dict[str, Curve],
                hline: float | None = None, yscale: str = "linear") -> Path:
    """One PNG with a line per named curve of (x, y) points."""
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for label, points in curves.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=label)
    if hline is not None:
        ax.axhline(hline, color="grey", ls="--", lw=1)
    ax.set_yscale(yscale)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if "steps" in xlabel:
        steps_axis(ax)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_report(workdir: Path, reports: Path) -> Path:
    """Learning curve, cost/DS-divergence and score-loss plots plus ``summary.md`` from a run's outputs."""
    records = workdir / "train_metrics"
    needed = [records / "learning_curve.csv", records / "iterations.csv", records / "metrics.json",
              records / "run.json"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise UserError(f"cannot report: missing {', '.join(missing)}; run `smiling-cli train` first")
    curve = _read_csv(needed[0])
    iters = _read_csv(needed[1])
    train = {**_read_json(needed[2]), **_read_json(needed[3])}
    pretrain = workdir / "pretrain" / "loss.json"  # baselines need no expert score model
    loss = _read_json(pretrain) if pretrain.is_file() else {"train": [], "val": []}
    evaluation = workdir / "evaluate"
    final = ({**_read_json(evaluation / "metrics.json"), **_read_json(evaluation / "run.json")}
             if (evaluation / "run.json").is_file() else None)
    dataset = train["dataset_id"]

    spec = algorithms.get(train["algorithm"])
    name = spec.label
    plot_curves(reports / "learning_curve.png", f"{name} on {dataset}", spec.budget_unit, "normalized return",
                {f"{name} (evaluation episodes)": [(r["env_steps"], r["normalized_return"]) for r in curve]}, hline=1.0)
    plot_curves(reports / "cost.png", spec.reward_text, "iteration", "mean unnormalised reward (symlog)",
                {"on expert states": [(r["iteration"], r["reward_mean_expert"]) for r in iters],
                 "on learner states": [(r["iteration"], r["reward_mean_learner"]) for r in iters]},
                hline=0.0, yscale="symlog")
    refit = spec.refit_text
    plot_curves(reports / "score_losses.png", "Score-model and refit losses", "step / iteration", "loss",
                {"expert pretraining (train)": loss["train"], "expert pretraining (validation)": loss["val"],
                 **({f"{refit} (per iteration)": [(r["iteration"], r["refit_loss"]) for r in iters]} if refit else {})},
                yscale="log")
    steps = (f"{int(train['gradient_steps'])} gradient steps on expert pairs" if spec.run
             else f"{int(train['env_steps'])} env steps"
             + (f", {int(train['iterations'])} reward refits" if spec.refit_text else ""))
    lines = [
        f"# {name} run on `{dataset}`",
        "",
        f"- Environment: `{train['env_id']}`, {steps}",
        f"- Final normalized return during training: **{train['final_normalized_return']:.3f}** "
        + (f"(mean of the last {FINAL_EVALS} evaluations {train['final_mean_normalized_return']:.3f}, "
           if "final_mean_normalized_return" in train else "(")
        + f"best {train['best_normalized_return']:.3f})",
    ]
    if final:
        lines.append(f"- Final evaluation ({final['episodes']} episodes): return {final['return_mean']:.1f} ± "
                     f"{final['return_std']:.1f}, normalized return **{final['normalized_return']:.3f}** "
                     f"({final['reference_source']}: random {final['reference_random']:.1f}, expert {final['reference_expert']:.1f})")
    lines += [f"- MLflow train run: `{train['mlflow_run_id']}`, policy `{train['policy_uri']}`", "",
              "![learning curve](learning_curve.png)", "", "![cost](cost.png)", "", "![score losses](score_losses.png)", ""]
    frames = evaluation / "video" / "frames.png"
    if frames.is_file():  # evaluate --video: frames of the recorded episode (the mp4 is in MLflow)
        shutil.copyfile(frames, reports / "policy_frames.png")
        lines += ["![the policy, frames of one evaluation episode](policy_frames.png)", ""]
    else:  # the pipeline declares the image: say in it why there is none (a stale one would mislead)
        _no_frames(reports / "policy_frames.png")
    summary = reports / "summary.md"
    with atomic_file(summary) as tmp:
        tmp.write_text("\n".join(lines))
    return summary


def _no_frames(path: Path) -> None:
    """A small image saying that the evaluation recorded no episode."""
    fig, ax = plt.subplots(figsize=(4, 0.6))
    ax.axis("off")
    ax.text(0.5, 0.5, "no episode recorded (evaluate.video: false)", ha="center", va="center")
    fig.savefig(path, dpi=100)
    plt.close(fig)
