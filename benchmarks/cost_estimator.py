"""Side-by-side benchmark of the SMILING cost estimator: the official computation vs ours.

Run:  .venv/bin/python benchmarks/cost_estimator.py            (full run, about 6 minutes on 2 cores)
      .venv/bin/python benchmarks/cost_estimator.py --quick    (smoke run; writes cost_estimator_quick.*)
      .venv/bin/python benchmarks/cost_estimator.py --from-json reports/cost_estimator.json  (re-render the .md)

Writes ``reports/cost_estimator.json`` (every measured figure), then renders it to
``reports/cost_estimator.md`` with ``cost_report.py``. The reference estimators and the
high-sample truth are in ``estimators.py``. One process, one torch thread (faster than two for
these small MLPs on this machine):

1. Data: real MuJoCo states of HalfCheetah-v5 (d = 17) and Humanoid-v5 (d = 348) from seeded envs;
   "expert" = uniform random actions x 0.2, "learner" = uniform random actions; ``n_train`` training
   states each, plus 128 + 128 held-out evaluation states.
2. Models: per env one expert and one learner ``ScoreModel`` (default ``ScoreConfig``), fitted with
   ``score.fit`` on one shared normalisation (the union of both training sets). Pair "informative":
   t on [0, t_max) (our training); pair "full": ``ScoreConfig(min_signal=0)``, t on [0, T).
3. Estimators on the same models and 256 states: ``official`` (K = 500), ``ours`` (``cost.reward``,
   K in KS, antithetic on/off), ``ours_bf16``, ``redrawn`` (new draws every REDRAW_ROWS states),
   ``per_state`` (2,048- and 65,536-row chunks).
4. Timing: one warm-up call each, then rounds calling every estimator in turn; median. Accuracy:
   Pearson, Spearman and within-group Spearman against the high-sample truths ``truth_inf`` (t on
   [0, t_max)) and ``truth_full`` (t on [0, T)), mean over the rounds' independent seeds.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from cost_report import fmt_table, smallest_meeting, write_report  # noqa: E402
from estimators import (  # noqa: E402
    OFFICIAL_K,
    distinct_official_timesteps,
    official_reward,
    per_state_reward,
    shared_noise_plain,
    truth,
)

from smiling_pipeline import cost  # noqa: E402
from smiling_pipeline.config import ScoreConfig  # noqa: E402
from smiling_pipeline.score import NARROW_MIN_DIM, FitSettings, ScoreModel, fit  # noqa: E402

BATCH = 256
KS = (4, 8, 16, 32, 64)
PER_STATE_KS = (4, 8, 16, 32, 64, 128)
CHUNK_KS = (16, 32, 64)
TARGET_SPEEDUP = 20.0
REDRAWN_KS = (16, 32, 64)
REDRAW_ROWS = 8
BF16_KS = (16, 32)
FAMILIES = ("ours", "ours_bf16", "redrawn", "per_state", "per_state_chunk65536")


# --------------------------------------------------------------------------------------------- data


def collect_states(env_id: str, n: int, action_scale: float, seed: int, episode_len: int = 250) -> np.ndarray:
    """``n`` states from seeded rollouts with uniform random actions times ``action_scale``."""
    import gymnasium as gym

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gym.make(env_id)
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    out: list[np.ndarray] = []
    episode = 0
    while len(out) < n:
        obs, _ = env.reset(seed=seed * 10_000 + episode)
        episode += 1
        for _ in range(episode_len):
            out.append(obs)
            obs, _, terminated, truncated, _ = env.step(rng.uniform(low, high) * action_scale)
            if terminated or truncated or len(out) >= n:
                break
    env.close()
    return np.asarray(out[:n], dtype=np.float32)


@dataclass
class EnvData:
    env_id: str
    expert: np.ndarray
    learner: np.ndarray
    eval_states: np.ndarray  # first half expert, second half learner (held out)
    mean: np.ndarray
    std: np.ndarray
    z_max_expert_stats: dict  # floor -> max |z| of learner training states under expert-only statistics


def make_data(env_id: str, n_train: int, n_eval_half: int, seed: int) -> EnvData:
    expert = collect_states(env_id, n_train, 0.2, seed + 1)
    learner = collect_states(env_id, n_train, 1.0, seed + 2)
    eval_e = collect_states(env_id, n_eval_half * 10, 0.2, seed + 3)[:: 10]  # spread over episodes
    eval_l = collect_states(env_id, n_eval_half * 10, 1.0, seed + 4)[:: 10]
    z_max = {str(floor): float(np.abs((learner - expert.mean(0)) / np.maximum(expert.std(0), floor)).max())
             for floor in (1e-3, ScoreConfig().min_std)}
    pooled = np.concatenate([expert, learner])
    # ScoreModel floors the std at cfg.min_std itself
    return EnvData(env_id, expert, learner, np.concatenate([eval_e, eval_l]), pooled.mean(0), pooled.std(0), z_max)


def train_pair(data: EnvData, cfg: ScoreConfig, steps: int, seed: int) -> tuple[ScoreModel, ScoreModel, float]:
    d = data.expert.shape[1]
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    expert = ScoreModel(d, cfg, data.mean, data.std)
    fit(expert, data.expert, FitSettings(steps=steps), seed=seed)
    torch.manual_seed(seed + 1)
    learner = ScoreModel(d, cfg, data.mean, data.std)
    fit(learner, data.learner, FitSettings(steps=steps), seed=seed + 1)
    return expert.eval(), learner.eval(), time.perf_counter() - t0


def redrawn_reward(expert: ScoreModel, learner: ScoreModel, x_raw: torch.Tensor, k: int,
                   generator: torch.Generator, rows: int = REDRAW_ROWS) -> torch.Tensor:
    """``cost.reward`` with new draws every ``rows`` states: a SAC batch as the relabelling buffer built
    it before the draws were fixed per run (its rows' rewards came from different relabelling calls)."""
    return torch.cat([cost.reward(expert, learner, x_raw[i : i + rows], k=k, generator=generator)
                      for i in range(0, len(x_raw), rows)])


# ------------------------------------------------------------------------------------------ metrics


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import rankdata

    return pearson(rankdata(a), rankdata(b))


def within_spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of the Spearman correlations inside the expert half and inside the learner half."""
    h = len(a) // 2
    return 0.5 * (spearman(a[:h], b[:h]) + spearman(a[h:], b[h:]))


def reliability(halves: np.ndarray, within: bool = False) -> float:
    """Split-half correlation stepped up with Spearman-Brown (within: mean over the expert and learner halves)."""
    if within:
        h = halves.shape[1] // 2
        return 0.5 * (reliability(halves[:, :h]) + reliability(halves[:, h:]))
    r = pearson(halves[0], halves[1])
    return 2 * r / (1 + r)


@dataclass
class Estimator:
    name: str
    target: str  # "inf" or "full": the truth this estimator is an estimate of
    call: Callable[[torch.Generator], torch.Tensor]
    times: list[float] = field(default_factory=list)
    outputs: list[np.ndarray] = field(default_factory=list)


def run_estimators(estimators: list[Estimator], rounds: int, seed: int, extra_timing: int) -> None:
    """Warm up each estimator once, then ``rounds`` rounds calling every estimator in turn.

    Each round's first call of an estimator (fresh seed) is timed and kept for accuracy; all but
    the official one are then timed ``extra_timing`` more times (outputs dropped), which costs
    little and steadies their medians on a shared CPU.
    """
    for i, est in enumerate(estimators):  # warm-up
        est.call(torch.Generator().manual_seed(seed + 999_983 + i))
    for r in range(rounds):
        for i, est in enumerate(estimators):
            for rep in range(1 if i == 0 else 1 + extra_timing):
                g = torch.Generator().manual_seed(seed + 1_000_000 * rep + 1_000 * r + i)
                t0 = time.perf_counter()
                out = est.call(g)
                est.times.append(time.perf_counter() - t0)
                if rep == 0:
                    est.outputs.append(out.numpy().astype(np.float64))


def summarise(est: Estimator, truths: dict[str, np.ndarray], official_time: float) -> dict:
    med = statistics.median(est.times)
    row: dict = {"estimator": est.name, "target": est.target, "median_s": med, "states_per_s": BATCH / med,
                 "speedup": official_time / med, "calls": len(est.outputs)}
    for key, tr in truths.items():
        row[f"pearson_{key}"] = float(np.mean([pearson(o, tr) for o in est.outputs]))
        row[f"spearman_{key}"] = float(np.mean([spearman(o, tr) for o in est.outputs]))
        row[f"within_spearman_{key}"] = float(np.mean([within_spearman(o, tr) for o in est.outputs]))
    own = est.target if est.target in truths else "full"
    row["pearson_own"], row["spearman_own"] = row[f"pearson_{own}"], row[f"spearman_{own}"]
    row["within_spearman_own"] = row[f"within_spearman_{own}"]
    return row


# ------------------------------------------------------------------------------------------- driver


@dataclass(frozen=True)
class Settings:
    fit_steps: dict
    truth_k: dict
    rounds: int
    extra_timing: int
    n_train: int
    full_range: bool


QUICK = Settings({17: 300, 348: 200}, {17: 1_024, 348: 256}, rounds=2, extra_timing=1, n_train=2_000, full_range=False)
FULL = Settings({17: 2_000, 348: 1_500}, {17: 16_384, 348: 4_096}, rounds=5, extra_timing=2, n_train=5_000,
                full_range=True)


def estimators_for(expert: ScoreModel, learner: ScoreModel, x: torch.Tensor, own: str) -> list[Estimator]:
    """Every estimator timed, the official one first."""
    ests = [Estimator(f"official K={OFFICIAL_K}", "full", lambda g: official_reward(expert, learner, x, g))]
    for k in KS:
        for anti in (True, False):
            ests.append(Estimator(f"ours K={k} anti={'on' if anti else 'off'}", own,
                                  lambda g, k=k, anti=anti: cost.reward(expert, learner, x, k=k, antithetic=anti, generator=g)))
    for k in BF16_KS:
        ests.append(Estimator(f"ours_bf16 K={k} anti=on", own, lambda g, k=k: cost.reward(
            expert, learner, x, k=k, antithetic=True, generator=g, dtype=torch.bfloat16)))
    for k in REDRAWN_KS:
        ests.append(Estimator(f"redrawn K={k} anti=on", own, lambda g, k=k: redrawn_reward(expert, learner, x, k, g)))
    for k in PER_STATE_KS:
        for anti in (True, False):
            ests.append(Estimator(f"per_state K={k} anti={'on' if anti else 'off'}", own,
                                  lambda g, k=k, anti=anti: per_state_reward(expert, learner, x, k, anti, g)))
    for k in CHUNK_KS:
        ests.append(Estimator(f"per_state_chunk65536 K={k} anti=off", own,
                              lambda g, k=k: per_state_reward(expert, learner, x, k, False, g, chunk_rows=65_536)))
    return ests


def bench_pair(data: EnvData, pair: str, cfg: ScoreConfig, st: Settings, seed: int, log: Callable[[str], None]) -> dict:
    d = data.expert.shape[1]
    expert, learner, fit_s = train_pair(data, cfg, st.fit_steps[d], seed)
    log(f"  [{pair}] trained 2 models x {st.fit_steps[d]} steps in {fit_s:.0f} s (t_max = {expert.t_max})")
    x = torch.as_tensor(data.eval_states)
    T = cfg.num_timesteps

    t0 = time.perf_counter()
    truths: dict[str, np.ndarray] = {}
    rel: dict[str, dict[str, float]] = {}
    kt = st.truth_k[d]
    for key, t_hi, off in (("full", T, 77), ("inf", expert.t_max, 78)):
        if key == "inf" and expert.t_max >= T:
            continue
        truths[key], halves = truth(expert, learner, x, t_hi, kt, seed=seed + off)
        rel[key] = {"all": reliability(halves), "within": reliability(halves, within=True)}
    truth_s = time.perf_counter() - t0
    log(f"  [{pair}] truths (K = {kt} per state) in {truth_s:.0f} s, split-half reliability "
        + ", ".join(f"{k} {v['all']:.5f} (within groups {v['within']:.4f})" for k, v in rel.items()))

    own = "inf" if "inf" in truths else "full"
    ests = estimators_for(expert, learner, x, own)

    # cost.reward (first layer split, chunked) must equal the plain computation with the same draws
    ref = shared_noise_plain(expert, learner, x, 32, True, torch.Generator().manual_seed(5))
    lib = cost.reward(expert, learner, x, k=32, antithetic=True, generator=torch.Generator().manual_seed(5))
    check_err = float((ref - lib).abs().max() / ref.abs().max())
    bf16 = cost.reward(expert, learner, x, k=32, antithetic=True, generator=torch.Generator().manual_seed(5),
                       dtype=torch.bfloat16)
    bf16_err = float((bf16 - lib).abs().max() / lib.abs().max())

    t0 = time.perf_counter()
    run_estimators(ests, st.rounds, seed=seed + 10_000, extra_timing=st.extra_timing)
    log(f"  [{pair}] {len(ests)} estimators x {st.rounds} rounds in {time.perf_counter() - t0:.0f} s")
    official_time = statistics.median(ests[0].times)
    rows = [summarise(e, truths, official_time) for e in ests]
    truth_corr = {}
    if "inf" in truths:
        truth_corr = {"pearson": pearson(truths["inf"], truths["full"]), "spearman": spearman(truths["inf"], truths["full"]),
                      "within_spearman": within_spearman(truths["inf"], truths["full"])}
    tt = truths[own]
    return {
        "env": data.env_id, "d": d, "pair": pair, "t_max": expert.t_max, "T": T, "fit_steps": st.fit_steps[d],
        "fit_seconds": fit_s, "truth_k": kt, "truth_seconds": truth_s, "truth_reliability": rel,
        "truth_inf_vs_full": truth_corr, "ours_max_rel_diff_vs_plain": check_err,
        "bf16_max_rel_diff_vs_fp32": bf16_err,
        "official_distinct_timesteps_per_state": distinct_official_timesteps(BATCH),
        "official_grid_beyond_t_max": float(np.mean(np.arange(0, T, T // OFFICIAL_K) >= expert.t_max)),
        "reward_own_truth": {"expert_mean": float(tt[: BATCH // 2].mean()), "learner_mean": float(tt[BATCH // 2:].mean()),
                             "std": float(tt.std())},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer fit steps, small truths, 2 rounds, no full-range pair")
    ap.add_argument("--out", default=str(ROOT / "reports"), help="folder for cost_estimator.json / .md")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--envs", default="HalfCheetah-v5,Humanoid-v5")
    ap.add_argument("--no-report", action="store_true", help="write only the JSON (render it with cost_report.py)")
    ap.add_argument("--from-json", help="only re-render the markdown report from a saved cost_estimator JSON")
    args = ap.parse_args(argv)
    if args.from_json:
        print(f"wrote {write_report(Path(args.from_json))}")
        return 0

    torch.set_num_threads(1)
    st = QUICK if args.quick else FULL
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)

    load_start = os.getloadavg()
    log(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, quick={args.quick}, "
        f"load average {load_start[0]:.2f}")
    results = []
    for env_id in args.envs.split(","):
        data = make_data(env_id, st.n_train, BATCH // 2, seed=args.seed * 100)
        d = data.expert.shape[1]
        log(f"{env_id}: d = {d}, {len(data.expert)} expert + {len(data.learner)} learner training states, "
            f"{len(data.eval_states)} eval states; learner max |z| under expert-only stats (std floor: max |z|): "
            + ", ".join(f"{k}: {v:.3g}" for k, v in data.z_max_expert_stats.items()))
        pairs = [("informative", ScoreConfig())] + ([("full", ScoreConfig(min_signal=0.0))] if st.full_range else [])
        for pair, cfg in pairs:
            res = bench_pair(data, pair, cfg, st, seed=args.seed * 100 + d, log=log)
            res["z_max_expert_stats"] = data.z_max_expert_stats
            results.append(res)
            print(f"\n{env_id} (d = {d}), models trained on t in [0, {res['t_max']}):\n"
                  f"{fmt_table(res, TARGET_SPEEDUP)}\n", flush=True)
    total = time.perf_counter() - start

    recs = {f"{f} anti={a}": smallest_meeting(results, f, a, TARGET_SPEEDUP) for f in FAMILIES for a in ("on", "off")}
    meta = {"date": _dt.date.today().isoformat(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(), "quick": args.quick,
            "seconds": total, "load_average_start": load_start[0], "load_average_end": os.getloadavg()[0],
            "batch": BATCH, "official_k": OFFICIAL_K, "target_speedup": TARGET_SPEEDUP, "redraw_rows": REDRAW_ROWS,
            "narrow_min_dim": NARROW_MIN_DIM,
            "settings": {"fit_steps": st.fit_steps, "truth_k": st.truth_k, "rounds": st.rounds,
                         "extra_timing": st.extra_timing, "n_train": st.n_train}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / f"cost_estimator{'_quick' if args.quick else ''}.json"
    saved.write_text(json.dumps({"meta": meta, "smallest_meeting_target": recs, "results": results}, indent=1))
    log(f"done in {total:.0f} s; smallest settings meeting >= {TARGET_SPEEDUP:.0f}x at equal accuracy everywhere: {recs}")
    log(f"wrote {saved}" + ("" if args.no_report else f" and {write_report(saved)}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
