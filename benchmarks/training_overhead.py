"""Training overhead: env steps per second of SMILING vs plain SB3 SAC on the environment's reward.

Run:  .venv/bin/python benchmarks/training_overhead.py [--quick] [--env ID] [--draws-refit]   (also part of run_all.py)

Both learners are built the way ``smiling-cli train`` builds them, in one process, one torch thread:

- **SMILING**: ``smiling_pipeline.train.build_model`` (SAC, ``SmilingReplayBuffer``, the pipeline's
  ``TrainConfig`` defaults: lr 3e-4, batch 256, train_freq 1 / gradient_steps 1, learning_starts
  1000, ent_coef auto_0.1) with the pipeline's reward object (``rewards.SmilingReward``) and refit
  (``rl.LearnerRefit``), run between ``learn`` calls as ``train.train`` runs them:
  learner refit every 1000 env steps (``TrainConfig.learner_fit_steps`` AdamW steps of batch 1024) plus the per-iteration
  statistics it computes. The refit is part of the algorithm, so it is inside the timing.
  The expert score model is a default ``ScoreConfig`` model fitted briefly on a few thousand states
  of seeded random rollouts: the reward's compute does not depend on the weights' values.
  Score-model matmuls in the pipeline's default precision (``runtime.precision: auto``); where that
  is bfloat16 and the env's d >= ``score.NARROW_MIN_DIM``, a third learner, SMILING in float32,
  runs in the same lockstep (reported as the float32 ratio).
- **SAC**: ``stable_baselines3.SAC`` with the same ``net_arch``, buffer size, lr, batch, learning_starts,
  train_freq, gradient_steps and ent_coef, on the environment's reward (plain ``ReplayBuffer``).

For each (env, net) and repeat, one SAC and one SMILING learner (same seed) live in the same process
and advance **in lockstep**: 250 env steps of SAC, 250 of SMILING, and so on (``learn(250,
reset_num_timesteps=False)``), so both see the same machine load second by second. The random-action
steps before ``learning_starts`` are not timed; the timed part is env steps 1000 ... 999 + M with
their M gradient updates and, for SMILING, all reward evaluations and the M / 1000 refits (at steps
1000, 2000, ...). Reported: steps/s (median over repeats), the SMILING/SAC wall-time ratio (median
over repeats), and SMILING's time split into reward evaluation of sampled rows, refit (fit +
statistics) and the rest (SAC's own work, shared with the baseline).

*Late* rows (full run): the same comparison with the replay buffer pre-filled with N synthetic
transitions before training starts, as it is late in a long run. Within an iteration the buffer
caches each row's reward, so SMILING evaluates about min(buffer rows, 256 x 1000) distinct rows per
iteration: cheap while the buffer is small, growing with it. The expert half of a row's reward is
computed once in the row's life (when first sampled), so for the pre-filled rows it is computed
before the timed window, as it would have been earlier in a real run.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_RATIO = 1.3

from smiling_pipeline.config import RuntimeConfig  # noqa: E402
from smiling_pipeline.runtime import dtype_name, resolve_precision  # noqa: E402
from smiling_pipeline.score import NARROW_MIN_DIM  # noqa: E402

# the pipeline's default (runtime.precision: auto): bfloat16 score-model matmuls on CPUs with native bf16
PRECISION = resolve_precision(RuntimeConfig().precision, torch.device("cpu"))

sys.path.insert(0, str(ROOT / "benchmarks"))
from cost_estimator import collect_states  # noqa: E402  (seeded uniform-random rollouts)

# ----------------------------------------------------------------------------------- building blocks


def make_env(env_id: str) -> Any:
    import gymnasium as gym

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gym.make(env_id)


def expert_model(env_id: str, seed: int = 0, n: int = 3_000, fit_steps: int = 50) -> tuple[Any, np.ndarray]:
    """A default-config expert score model (briefly fitted) and 2,048 validation rows for the refit statistics."""
    from smiling_pipeline.config import ScoreConfig
    from smiling_pipeline.score import FitSettings, ScoreModel, fit

    states = collect_states(env_id, n, 1.0, seed, episode_len=200)
    torch.manual_seed(seed)
    model = ScoreModel(states.shape[1], ScoreConfig(), states.mean(0), states.std(0))
    fit(model, states, FitSettings(steps=fit_steps), seed=seed)
    return model.eval(), states[-2048:]


@dataclasses.dataclass
class RunResult:
    algo: str
    env_id: str
    net: tuple[int, ...]
    seed: int
    steps: int
    seconds: float
    reward_seconds: float = 0.0  # SMILING: rewards of sampled rows (the replay buffer's rewards_at)
    refit_seconds: float = 0.0  # SMILING: refit (learner fit + its statistics)
    rows_evaluated: int = 0  # SMILING: rows whose reward was computed for sampled batches
    refits: int = 0
    prefill: int = 0

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds


def prefill_buffer(buffer: Any, n: int, seed: int) -> None:
    """Put ``n`` synthetic transitions into an SB3 replay buffer (what it holds late in a long run)."""
    rng = np.random.default_rng(seed)
    d = buffer.observations.shape[-1]
    for i in range(0, n, 50_000):
        m = min(50_000, n - i)
        buffer.observations[i : i + m, 0] = rng.standard_normal((m, d), dtype=np.float32)
        buffer.next_observations[i : i + m, 0] = rng.standard_normal((m, d), dtype=np.float32)
        buffer.actions[i : i + m, 0] = rng.uniform(-1, 1, (m, buffer.actions.shape[-1])).astype(np.float32)
        buffer.rewards[i : i + m, 0] = rng.standard_normal(m, dtype=np.float32)
    buffer.pos = n


class Learner:
    """One training run advanced in chunks of env steps (``learn(n, reset_num_timesteps=False)``), timing each."""

    def __init__(self, algo: str, env_id: str, net: tuple[int, ...], seed: int, steps: int, expert: Any,
                 expert_val: np.ndarray, prefill: int = 0, k: Optional[int] = None):
        """``algo``: sac, smiling (the default precision), smiling_float32 or smiling_draws_refit
        (``cost.draws: refit``: new estimator draws at every refit, so both halves of a row's reward are
        recomputed after each refit instead of the learner half only)."""
        from stable_baselines3 import SAC
        from stable_baselines3.common.utils import set_random_seed

        from smiling_pipeline import algorithms
        from smiling_pipeline.config import CostConfig, TrainConfig
        from smiling_pipeline.train import build_model

        base = TrainConfig()
        self.start = base.learning_starts
        self.stop = self.start + steps
        cfg = dataclasses.replace(base, steps=self.stop + prefill, net=tuple(net), seed=seed)
        self.env = make_env(env_id)
        set_random_seed(seed)
        self.cfg = cfg
        self.result = RunResult(algo, env_id, tuple(net), seed, steps, 0.0, prefill=prefill)
        self.refit: Any = None  # SMILING: (buffer, env steps) -> stats, timed
        self.timers = {"reward": 0.0, "refit": 0.0, "rows": 0, "in_refit": False}
        if algo == "sac":
            self.model = SAC("MlpPolicy", self.env, ent_coef=cfg.ent_coef, learning_rate=cfg.lr,
                             buffer_size=cfg.steps + 1, learning_starts=cfg.learning_starts, batch_size=cfg.batch_size,
                             gamma=cfg.gamma, policy_kwargs={"net_arch": list(cfg.net)}, seed=seed, device="cpu",
                             verbose=0)
        else:
            from smiling_pipeline.rewards import SmilingReward
            from smiling_pipeline.rl import LearnerRefit

            cost_cfg = CostConfig() if k is None else dataclasses.replace(CostConfig(), timesteps=k)
            if algo == "smiling_draws_refit":
                cost_cfg = dataclasses.replace(cost_cfg, draws="refit")
            reward = SmilingReward(expert, cost_cfg, None, seed, torch.float32 if algo == "smiling_float32" else PRECISION)
            self.model = build_model(cfg, self.env, torch.device("cpu"), None, algorithms.get("smiling"))
            self.model.replay_buffer.reward_model = reward
            timers, result = self.timers, self.result
            refit = LearnerRefit(reward, cfg, expert_val)
            buffer = self.model.replay_buffer
            rewards_at = buffer.rewards_at

            def timed_rewards_at(idx: np.ndarray) -> np.ndarray:
                t0, before = time.perf_counter(), reward.evaluations
                out = rewards_at(idx)
                if not timers["in_refit"]:
                    timers["reward"] += time.perf_counter() - t0
                    timers["rows"] += reward.evaluations - before
                return out

            def timed_refit(buffer: Any, steps: int) -> Any:
                t0 = time.perf_counter()
                timers["in_refit"] = True
                try:
                    return refit(buffer, steps)
                finally:
                    timers["in_refit"] = False
                    timers["refit"] += time.perf_counter() - t0
                    result.refits += 1

            buffer.rewards_at = timed_rewards_at
            self.refit = timed_refit
        if prefill:
            prefill_buffer(self.model.replay_buffer, prefill, seed)
            if algo != "sac":  # as in a real run, where each row got its expert half when first sampled
                for i in range(0, prefill, 8_192):
                    self.model.replay_buffer.rewards_at(np.arange(i, min(i + 8_192, prefill)))

    def advance(self, n: int) -> float:
        """Run ``n`` more env steps (with their updates); returns the seconds it took."""
        from smiling_pipeline.train import next_stop, refit_due

        t0 = time.perf_counter()
        target = self.model.num_timesteps + n
        while self.model.num_timesteps < target:  # SMILING: refit between learn calls, as train.train does
            stop = min(target, next_stop(self.model.num_timesteps, self.cfg)) if self.refit else target
            self.model.learn(stop - self.model.num_timesteps, reset_num_timesteps=False)
            steps = self.model.num_timesteps
            if self.refit and refit_due(steps, self.cfg) and steps < self.stop:
                self.refit(self.model.replay_buffer, steps)  # no refit at the step that ends the window
        return time.perf_counter() - t0

    def warm_up(self) -> None:
        """Untimed: the random-action steps before learning starts (the step that reaches
        ``learning_starts`` is timed, with the first refit it triggers)."""
        self.advance(self.start - 1)
        self.timers.update(reward=0.0, refit=0.0, rows=0)
        self.result.refits = 0

    def close(self) -> RunResult:
        r = self.result
        r.reward_seconds, r.refit_seconds, r.rows_evaluated = self.timers["reward"], self.timers["refit"], self.timers["rows"]
        self.env.close()
        del self.model
        gc.collect()
        return r


def lockstep(learners: list[Learner], steps: int, chunk: int) -> None:
    """Advance the learners in turn, ``chunk`` env steps at a time, until each has run ``steps`` timed steps:
    they see the same machine load, second by second."""
    for ln in learners:
        ln.warm_up()
    done = 0
    while done < steps:
        n = min(chunk, steps - done)
        for ln in learners:
            ln.result.seconds += ln.advance(n)
        done += n
    for ln in learners:
        assert ln.model.num_timesteps == ln.stop - 1, (ln.model.num_timesteps, ln.stop)


# ------------------------------------------------------------------------------------------- driver


@dataclasses.dataclass(frozen=True)
class Settings:
    envs: dict  # env id -> timed env steps
    nets: tuple
    repeats: int
    late: tuple  # (env id, net, prefill rows, steps) rows
    chunk: int = 250  # env steps per turn in the lockstep alternation
    # with a narrower default precision, SMILING in float32 runs alongside (the precision's own gain)
    algos: tuple = ("sac", "smiling") + (("smiling_float32",) if PRECISION != torch.float32 else ())


FULL = Settings({"InvertedPendulum-v5": 5_000, "Hopper-v5": 3_000, "Humanoid-v5": 3_000}, ((64, 64), (256, 256)),
                repeats=2, late=(("Hopper-v5", (64, 64), 100_000, 1_000), ("Humanoid-v5", (256, 256), 100_000, 1_000)))
QUICK = Settings({"InvertedPendulum-v5": 2_000, "Hopper-v5": 1_000, "Humanoid-v5": 1_000}, ((64, 64),), repeats=1,
                 late=())


def pair_rows(runs: list[RunResult]) -> dict:
    """Summary of the alternating SAC / SMILING runs of one configuration."""
    sac = [r for r in runs if r.algo == "sac"]
    smi = [r for r in runs if r.algo == "smiling"]
    f32 = [r for r in runs if r.algo == "smiling_float32"]
    refit = [r for r in runs if r.algo == "smiling_draws_refit"]
    ratios = [b.seconds / a.seconds for a, b in zip(sac, smi, strict=True)]
    s = smi[0]
    med = lambda xs: statistics.median(xs)  # noqa: E731
    smi_s = med([r.seconds for r in smi])
    return {
        "env": s.env_id, "net": list(s.net), "steps": s.steps, "prefill": s.prefill, "repeats": len(ratios),
        "sac_steps_per_s": med([r.steps_per_s for r in sac]), "smiling_steps_per_s": med([r.steps_per_s for r in smi]),
        "ratio": med(ratios), "ratios": ratios, "meets_target": med(ratios) <= TARGET_RATIO,
        "ratio_float32": med([b.seconds / a.seconds for a, b in zip(sac, f32, strict=True)]) if f32 else None,
        "ratio_draws_refit": med([b.seconds / a.seconds for a, b in zip(sac, refit, strict=True)]) if refit else None,
        "draws_refit_vs_run": med([b.seconds / a.seconds for a, b in zip(smi, refit, strict=True)]) if refit else None,
        "smiling_reward_share": med([r.reward_seconds / r.seconds for r in smi]),
        "smiling_refit_share": med([r.refit_seconds / r.seconds for r in smi]),
        "refit_seconds_each": med([r.refit_seconds / max(r.refits, 1) for r in smi]),
        "rows_evaluated_per_step": med([r.rows_evaluated / r.steps for r in smi]),
        "reward_ms_per_row": 1e3 * med([r.reward_seconds / max(r.rows_evaluated, 1) for r in smi]),
        "smiling_seconds": smi_s, "sac_seconds": med([r.seconds for r in sac]),
        "runs": [dataclasses.asdict(r) for r in runs],
    }


def run(quick: bool = False, log: Callable[[str], None] = print, late: bool = True, draws_refit: bool = False,
        envs: Optional[list[str]] = None) -> dict:
    """``draws_refit``: add SMILING with ``cost.draws: refit`` to every lockstep; ``envs``: only these envs."""
    torch.set_num_threads(1)
    st = QUICK if quick else FULL
    if envs:
        st = dataclasses.replace(st, envs={e: n for e, n in st.envs.items() if e in envs},
                                 late=tuple(row for row in st.late if row[0] in envs))
    extra_algos = ("smiling_draws_refit",) if draws_refit else ()
    experts: dict[str, tuple[Any, np.ndarray]] = {}
    rows = []
    configs = [(env_id, net, 0, steps) for env_id, steps in st.envs.items() for net in st.nets]
    configs += list(st.late) if late else []
    for env_id, net, prefill, steps in configs:
        if env_id not in experts:
            experts[env_id] = expert_model(env_id)
        expert, val = experts[env_id]
        runs = []
        for rep in range(st.repeats):
            # below NARROW_MIN_DIM the default precision computes exactly what float32 does
            algos = (st.algos if expert.dim >= NARROW_MIN_DIM else ("sac", "smiling")) + extra_algos
            pair = [Learner(algo, env_id, net, rep, steps, expert, val, prefill=prefill) for algo in algos]
            lockstep(pair, steps, st.chunk)
            for ln in pair:
                r = ln.close()
                runs.append(r)
                extra = (f", reward eval {r.reward_seconds:.1f} s ({r.rows_evaluated / r.steps:.1f} rows/step), refit "
                         f"{r.refit_seconds:.1f} s ({r.refits}x)") if r.algo != "sac" else ""
                log(f"overhead: {env_id:20s} net {str(net):10s} prefill {prefill:>7,} rep {rep} {r.algo:15s} {r.steps} "
                    f"steps in {r.seconds:6.1f} s = {r.steps_per_s:6.1f} steps/s{extra}")
        row = pair_rows(runs)
        rows.append(row)
        log(f"overhead: {env_id} net {net} prefill {prefill:,}: SAC {row['sac_steps_per_s']:.1f} steps/s, SMILING "
            f"{row['smiling_steps_per_s']:.1f} steps/s, ratio {row['ratio']:.2f} ({'meets' if row['meets_target'] else 'misses'} "
            f"<= {TARGET_RATIO})" + (f"; float32 ratio {row['ratio_float32']:.2f}" if row["ratio_float32"] else "")
            + (f"; draws=refit ratio {row['ratio_draws_refit']:.2f} ({row['draws_refit_vs_run']:.2f}x the default's time)"
               if row["ratio_draws_refit"] else ""))
    return {"settings": dataclasses.asdict(st), "target_ratio": TARGET_RATIO, "threads": torch.get_num_threads(),
            "precision": dtype_name(PRECISION), "rows": rows}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-late", action="store_true", help="skip the pre-filled-buffer rows")
    ap.add_argument("--draws-refit", action="store_true", help="also time SMILING with cost.draws: refit")
    ap.add_argument("--env", action="append", help="only this env (repeatable), e.g. --env Hopper-v5")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    res = run(args.quick, late=not args.no_late, draws_refit=args.draws_refit, envs=args.env)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
