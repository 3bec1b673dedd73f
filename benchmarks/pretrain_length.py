"""How long the expert score model must pre-train: validation loss against AdamW steps on expert datasets.

Run:  .venv/bin/python benchmarks/pretrain_length.py [--datasets ID ...] [--variants state-only ...] [--steps 30000]
      [--seeds 0 1] -> reports/locomotion/pretrain_length.json and .png (rows of other configurations already in
      the JSON are kept; --plot-only redraws the PNG from the JSON)

For each dataset, state-only and state-action, ingest as the pipeline does (5,000 expert states, 10 %
held out) and fit the default score model (``ScoreConfig``, ``PretrainConfig`` batch, lr and weight
decay) for ``--steps`` steps, evaluating the held-out denoising loss every 500 steps. The held-out
rows are repeated 20 times, each copy with its own fixed (timestep, noise) draw, so the curve is
paired across steps and precise enough to see where it flattens. Reported per configuration: the
loss at each evaluation, the step of its minimum, and the first step within 1 % of that minimum.
The official code trains for 4,000 epochs over 5,000 states at batch 1,024 (~20k steps).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from smiling_pipeline.config import IngestConfig, PretrainConfig, ScoreConfig  # noqa: E402
from smiling_pipeline.demos import use_minari_root  # noqa: E402
from smiling_pipeline.ingest import ExpertData, ingest, load_expert_data  # noqa: E402
from smiling_pipeline.report import plt, steps_axis  # noqa: E402
from smiling_pipeline.score import FitSettings, ScoreModel, fit  # noqa: E402

DATASETS = ("smiling/hopper/expert-v0", "smiling/walker2d/expert-v0", "smiling/halfcheetah/expert-v0")
VARIANTS = ("state-only", "state-action")
REPEATS = 20
EVAL_EVERY = 500


def ingested(dataset: str, with_actions: bool) -> ExpertData:
    """The dataset ingested as the pipeline does (5,000 expert states, 10 % held out), in a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        ingest(IngestConfig(dataset=dataset, with_actions=with_actions), Path(tmp))
        return load_expert_data(Path(tmp))


def curve(train: np.ndarray, val: np.ndarray, mean: np.ndarray, std: np.ndarray, steps: int, seed: int
          ) -> list[tuple[int, float]]:
    """Held-out loss every ``EVAL_EVERY`` steps of one pre-training run."""
    torch.manual_seed(seed)
    model = ScoreModel(train.shape[1], ScoreConfig(), mean, std)
    p = PretrainConfig()
    _, history = fit(model, train, FitSettings(steps, p.batch_size, p.lr, p.weight_decay, EVAL_EVERY), seed=seed,
                     val=np.tile(val, (REPEATS, 1)), progress=True)
    return history.val


def first_within(points: list[tuple[int, float]], tolerance: float = 0.01) -> int:
    """First step whose loss is within ``tolerance`` (relative) of the curve's minimum."""
    best = min(v for _, v in points)
    return next(s for s, v in points if v <= best * (1 + tolerance))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--minari-root", default=str(ROOT / "data" / "minari"))
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "locomotion")
    parser.add_argument("--plot-only", action="store_true", help="Redraw the PNG from the JSON in --out.")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads((args.out / "pretrain_length.json").read_text()), args.out / "pretrain_length.png")
        return
    torch.set_num_threads(1)
    use_minari_root(args.minari_root)
    path = args.out / "pretrain_length.json"
    results = json.loads(path.read_text()) if path.is_file() else []
    for dataset in args.datasets:
        for variant in args.variants:
            with_actions = variant == "state-action"
            data = ingested(dataset, with_actions)
            for seed in args.seeds:
                start = time.perf_counter()
                points = curve(data.train, data.val, data.mean, data.std, args.steps, seed)
                row = {"dataset": dataset, "variant": "state-action" if with_actions else "state-only",
                       "dim": data.dim, "seed": seed, "seconds": round(time.perf_counter() - start, 1),
                       "val_loss": points, "min_step": min(points, key=lambda p: p[1])[0],
                       "within_1pct_step": first_within(points)}
                results = [r for r in results if (r["dataset"], r["variant"], r["seed"]) != (dataset, variant, seed)]
                results.append(row)
                args.out.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(results, indent=1) + "\n")  # each finished configuration is kept
                at = {s: v for s, v in points}
                print(f"{dataset} {row['variant']} seed {seed}: loss at 2k {at.get(2000, float('nan')):.4f}, "
                      f"5k {at.get(5000, float('nan')):.4f}, 10k {at.get(10000, float('nan')):.4f}, "
                      f"20k {at.get(20000, float('nan')):.4f}, last {points[-1][1]:.4f}; minimum at "
                      f"{row['min_step']}, within 1 % from {row['within_1pct_step']} ({row['seconds']:.0f} s)", flush=True)
    plot(results, args.out / "pretrain_length.png")


def plot(results: list[dict], path: Path) -> None:
    """Held-out loss against steps, one panel per dataset, with the old (2k) and current default lengths."""
    datasets = sorted({r["dataset"] for r in results})
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.4 * len(datasets), 3.4), dpi=110, squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for row in sorted((r for r in results if r["dataset"] == dataset), key=lambda r: (r["variant"], r["seed"])):
            steps, losses = zip(*row["val_loss"], strict=True)
            ax.plot(steps, losses, label=f"{row['variant']} s{row['seed']}")
        ax.axvline(2_000, color="grey", ls=":", lw=1, label="2k (earlier default)")
        ax.axvline(PretrainConfig().steps, color="black", ls="--", lw=1, label=f"{PretrainConfig().steps // 1000}k (default)")
        ax.set(title=dataset, xlabel="pre-training steps", ylabel="held-out denoising loss")
        steps_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
