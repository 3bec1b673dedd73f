"""SMILING training: the relabelling replay buffer, the learner refit, the variants, the CLI chain with
its MLflow records, a real ``dvc repro``, and a run that shows SMILING actually learns."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from conftest import DEMOS_DATASET, make_dataset, run_cli

from smiling_pipeline.config import CostConfig, ScoreConfig, TrainConfig
from smiling_pipeline.rewards import SmilingReward
from smiling_pipeline.rl import LearnerRefit, SmilingReplayBuffer, check_relabelling, score_inputs
from smiling_pipeline.score import ScoreModel

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parents[1]
TINY = ScoreConfig(hidden=32)


def tiny_cost(dim: int, cfg: CostConfig | None = None, action_space=None) -> SmilingReward:
    torch.manual_seed(0)
    expert = ScoreModel(dim, TINY, np.zeros(dim), np.ones(dim))
    return SmilingReward(expert, cfg or CostConfig(), action_space, seed=3)


def filled_buffer(n: int = 50) -> tuple[SmilingReplayBuffer, gym.Env]:
    env = gym.make("InvertedPendulum-v5")
    buffer = SmilingReplayBuffer(100, env.observation_space, env.action_space, device="cpu")
    rng = np.random.default_rng(0)
    for _ in range(n):
        obs = rng.normal(size=(1, 4)).astype(np.float32)
        buffer.add(obs, obs + 1, rng.uniform(-1, 1, size=(1, 1)), np.array([1000.0]), np.array([False]), [{}])
    return buffer, env


def test_buffer_returns_the_cost_of_the_sampled_states_not_the_env_reward():
    buffer, _ = filled_buffer()
    buffer.reward_model = tiny_cost(4, CostConfig(reward_norm="none"))
    inds = np.array([3, 7, 7, 20, 41])
    samples = buffer._get_samples(inds)
    assert not torch.any(samples.rewards == 1000.0)
    rows = torch.as_tensor(buffer.observations[np.unique(inds), 0, :])
    expected = tiny_cost(4, CostConfig(reward_norm="none")).rewards(rows)  # same seed, same rows
    by_index = dict(zip(np.unique(inds), expected.numpy(), strict=True))
    assert np.allclose(samples.rewards.numpy().ravel(), [by_index[i] for i in inds], atol=1e-6)


def test_buffer_normalises_per_batch_and_caches_until_the_learner_changes():
    buffer, _ = filled_buffer()
    cost = buffer.reward_model = tiny_cost(4)
    inds = np.arange(32)
    first = buffer._get_samples(inds).rewards
    assert float(first.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(first.std(correction=0)) == pytest.approx(0.1, rel=1e-3)
    evaluated = cost.evaluations
    assert torch.equal(buffer._get_samples(inds).rewards, first)  # cached: same values, no new evaluations
    assert cost.evaluations == evaluated == 32
    cost.version += 1
    buffer._get_samples(inds)
    assert cost.evaluations == 64  # stale after a refit


def test_buffer_computes_each_rows_expert_half_once_with_one_draw_set_per_run():
    from smiling_pipeline.cost import reward

    buffer, _ = filled_buffer(100)  # full: the next add overwrites slot 0
    cost = buffer.reward_model = tiny_cost(4, CostConfig(reward_norm="none"))
    fixed_rows = []
    fixed_part = cost.fixed_part
    cost.fixed_part = lambda rows: fixed_rows.append(len(rows)) or fixed_part(rows)

    def direct(inds: np.ndarray) -> np.ndarray:  # both halves from scratch, with the run's draws
        rows = torch.as_tensor(buffer.observations[inds, 0, :])
        return reward(cost.expert, cost.learner, rows, draws=cost.draws).numpy()

    first = buffer.rewards_at(np.arange(32))
    with torch.no_grad():  # what a refit does: new learner weights, new version
        for w in cost.learner.parameters():
            w.add_(0.05)
    cost.version += 1
    second = buffer.rewards_at(np.arange(16, 48))
    assert fixed_rows == [32, 16]  # rows 16..31 kept their expert half across the refit
    assert np.allclose(second, direct(np.arange(16, 48)), atol=1e-5)
    assert not np.allclose(first[16:], second[:16], atol=1e-5)  # the learner half did change
    one_by_one = np.concatenate([direct(np.array([i])) for i in range(16, 48)])
    assert np.allclose(second, one_by_one, atol=1e-5)  # a row's reward does not depend on its chunk

    obs = np.full((1, 4), 3.0, dtype=np.float32)
    buffer.add(obs, obs, np.zeros((1, 1)), np.array([0.0]), np.array([False]), [{}])  # overwrites slot 0
    assert np.allclose(buffer.rewards_at(np.array([0])), direct(np.array([0])), atol=1e-5)
    assert fixed_rows == [32, 16, 1]


def test_draws_redrawn_at_every_refit_recompute_both_halves():
    from smiling_pipeline.cost import reward

    buffer, _ = filled_buffer(64)
    cost = buffer.reward_model = tiny_cost(4, CostConfig(reward_norm="none", draws="refit"))
    settings = TrainConfig(learner_fit_steps=2, learner_batch_size=32)
    first_draws = cost.draws
    buffer.rewards_at(np.arange(32))
    cost.refit(buffer.learner_rows(None), settings, iteration=0)
    assert not torch.equal(cost.draws.eps, first_draws.eps) and cost.fixed_version == 1
    rows = torch.as_tensor(buffer.observations[:64, 0, :])
    expected = reward(cost.expert, cost.learner, rows, draws=cost.draws).numpy()
    assert np.allclose(buffer.rewards_at(np.arange(64)), expected, atol=1e-5)  # expert halves redone too
    restored = tiny_cost(4, CostConfig(reward_norm="none", draws="refit"))
    restored.load_state_dict(cost.state_dict())
    assert torch.equal(restored.draws.eps, cost.draws.eps) and restored.fixed_version == 1
    kept = tiny_cost(4, CostConfig(reward_norm="none"))
    kept.refit(buffer.learner_rows(None), settings, iteration=0)
    assert torch.equal(kept.draws.eps, first_draws.eps) and kept.fixed_version == 0  # draws: run


def test_absorbing_terminations_and_offset_shape_the_sampled_rewards():
    buffer, _ = filled_buffer(40)
    buffer.dones[[5, 9], 0] = 1.0  # two transitions that ended their episode
    buffer.reward_model = tiny_cost(4)
    inds = np.arange(16)
    plain = buffer._get_samples(inds).rewards.squeeze(1)
    buffer.reward_offset, buffer.absorbing_gamma = 0.05, 0.99
    shaped = buffer._get_samples(inds).rewards.squeeze(1)
    ended = torch.zeros(16, dtype=torch.bool)
    ended[[5, 9]] = True
    torch.testing.assert_close(shaped[~ended], plain[~ended] + 0.05)
    lowest = (plain + 0.05).min()
    torch.testing.assert_close(shaped[ended], plain[ended] + 0.05 + 99.0 * lowest)
    assert (shaped[ended] < plain[ended]).all()  # falling is now worse than any state in the batch


def test_state_action_rows_use_environment_actions():
    space = gym.spaces.Box(-3.0, 3.0, shape=(1,))
    obs = torch.zeros(3, 2)
    rows = score_inputs(obs, torch.tensor([[-1.0], [0.0], [1.0]]), space)
    assert torch.allclose(rows[:, 2], torch.tensor([-3.0, 0.0, 3.0]))
    assert torch.equal(score_inputs(obs, torch.zeros(3, 1), None), obs)


def test_learner_refit_fits_learner_states_and_sb3_samples_through_the_relabelling_hook():
    """Three iterations of (a) SAC on the relabelled reward, (b) refit; every SAC update sampled a batch
    through ``SmilingReplayBuffer._get_samples`` (the private SB3 hook the relabelling relies on)."""
    from stable_baselines3 import SAC

    env = gym.make("InvertedPendulum-v5")
    cfg = TrainConfig(steps=300, learning_starts=100, iteration_steps=100, learner_fit_steps=100,
                      learner_batch_size=256, seed=0)
    cost = tiny_cost(4)
    model = SAC("MlpPolicy", env, learning_starts=100, batch_size=64, policy_kwargs={"net_arch": [16]},
                replay_buffer_class=SmilingReplayBuffer, seed=0, device="cpu")
    model.replay_buffer.reward_model = cost
    before = [p.detach().clone() for p in cost.learner.parameters()]
    fresh = cost.learner.fresh_copy()
    fresh.load_state_dict(cost.learner.state_dict())
    refit = LearnerRefit(cost, cfg, np.zeros((10, 4), dtype=np.float32))
    for _ in range(3):
        model.learn(100, reset_num_timesteps=False)
        stats = refit(model.replay_buffer, model.num_timesteps)
    assert refit.iteration == cost.version == 3 and stats.env_steps == 300
    assert model._n_updates == 200 and model.replay_buffer.relabelled == model._n_updates
    check_relabelling(model)
    assert any(not torch.equal(a, b) for a, b in zip(before, cost.learner.parameters(), strict=True))
    rows = torch.as_tensor(model.replay_buffer.learner_rows(None))
    assert len(rows) == 300  # every stored learner state (FTL: no window)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    with torch.no_grad():
        assert cost.learner.loss(rows, generator=g1) < 0.8 * fresh.loss(rows, generator=g2)
    model.replay_buffer.relabelled = 0  # as if SB3 had sampled some other way
    with pytest.raises(RuntimeError, match="without sampling through SmilingReplayBuffer._get_samples"):
        check_relabelling(model)


# --- the CLI chain on a real expert dataset, with MLflow ----------------------------------------


def write_params(path: Path, **sections: dict) -> Path:
    """A params.yaml with tiny settings for fast runs."""
    base = {
        "ingest": {"dataset": DEMOS_DATASET, "num_states": 2000},
        "score": {"hidden": 64},
        "pretrain": {"steps": 300, "eval_every": 100},
        "train": {"steps": 600, "learning_starts": 200, "iteration_steps": 200, "learner_fit_steps": 50,
                  "eval_every": 300, "eval_episodes": 2, "checkpoint_every": 400, "net": [32, 32]},
        "evaluate": {"episodes": 2},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    path.write_text(yaml.safe_dump(base))
    return path


def mlflow_client(root: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    return mlflow.MlflowClient()


def test_cli_chain_writes_outputs_and_mlflow_records(store, tmp_path):
    import mlflow.pytorch

    params = write_params(tmp_path / "p.yaml")
    train = run_cli(["train", "--params", params])  # ingests and pretrains first, and says so
    assert train.exit_code == 0, train.output
    assert "ingested smiling/invertedpendulum/expert-v0 into" in train.stderr and "pretraining first" in train.stderr
    work = tmp_path / "data" / "smiling-invertedpendulum-expert-v0"
    metrics = json.loads((work / "train_metrics" / "metrics.json").read_text())
    info = json.loads((work / "train_metrics" / "run.json").read_text())
    assert metrics["env_steps"] == 600 and metrics["iterations"] == 3
    assert (work / "train" / "checkpoint" / "model.zip").is_file()
    assert (work / "train" / "checkpoint" / "replay_buffer.pkl").is_file()
    curve = (work / "train_metrics" / "learning_curve.csv").read_text().splitlines()
    assert curve[0].startswith("env_steps,normalized_return") and len(curve) == 3  # evaluations at 300 and 600
    returns = [float(line.split(",")[1]) for line in curve[1:]]
    assert metrics["final_normalized_return"] == returns[-1]
    assert metrics["final_mean_normalized_return"] == pytest.approx(np.mean(returns))  # the last 3, here both
    header = (work / "train_metrics" / "iterations.csv").read_text().splitlines()[0]
    assert header.endswith("reward_true_corr,reward_true_corr_expert,reward_true_corr_learner,reward_rtg_corr")

    evaluation = run_cli(["evaluate", "--params", params, "--policy", info["policy_uri"]])
    assert evaluation.exit_code == 0, evaluation.output
    assert "normalized return" in evaluation.stdout
    report = run_cli(["report", "--params", params, "--out", tmp_path / "reports"])
    assert report.exit_code == 0, report.output
    for name in ("learning_curve.png", "cost.png", "score_losses.png", "summary.md"):
        assert (tmp_path / "reports" / name).stat().st_size > 0

    client = mlflow_client(tmp_path)
    exp = client.get_experiment_by_name(DEMOS_DATASET)
    runs = {r.data.tags["stage"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"pretrain", "train", "evaluate"}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert {"seed", "dataset", "git_commit", "algorithm"} <= set(runs["train"].data.tags)
    history = client.get_metric_history(runs["train"].info.run_id, "normalized_return")
    assert [m.step for m in history] == [300, 600]
    assert len(client.get_metric_history(runs["pretrain"].info.run_id, "val_loss")) == 3
    assert "normalized_return" in runs["evaluate"].data.metrics
    assert [(m.step, m.value) for m in client.get_metric_history(runs["train"].info.run_id, "train_seconds")] == [
        (0, info["train_seconds"])]
    assert runs["train"].data.metrics["final_mean_normalized_return"] == pytest.approx(metrics["final_mean_normalized_return"])
    assert info["mlflow_run_id"] == runs["train"].info.run_id
    assert "loss.png" in {a.path for a in client.list_artifacts(runs["pretrain"].info.run_id)}
    assert "learning_curve.png" in {a.path for a in client.list_artifacts(runs["train"].info.run_id)}
    policy = mlflow.pytorch.load_model(info["policy_uri"])
    action, _ = policy.predict(np.zeros(4, dtype=np.float32), deterministic=True)
    assert action.shape == (1,) and -3.0 <= float(action[0]) <= 3.0
    learner = mlflow.pytorch.load_model(info["reward_model_uri"])
    assert isinstance(learner, ScoreModel) and learner.dim == 4


@pytest.mark.parametrize("flags, dim", [(["--with-actions"], 5), (["--linear"], 4)])
def test_variants_train_end_to_end(store, tmp_path, flags, dim):
    params = write_params(tmp_path / "p.yaml", train={"steps": 400, "eval_every": 400})
    run = run_cli(["train", "--params", params, *flags])
    assert run.exit_code == 0, run.output
    work = tmp_path / "data" / "smiling-invertedpendulum-expert-v0"
    from smiling_pipeline.score import load_model

    learner, _ = load_model(work / "train" / "reward_model.pt")
    assert learner.dim == dim
    assert learner.cfg.linear == ("--linear" in flags)


def test_smiling_learns_on_inverted_pendulum(store, tmp_path):
    """5,000 SMILING steps with the default settings: the policy balances far longer than random.

    Measured with seeds 0-2: evaluation return 73-103 at 4,000-5,000 steps; a random policy gets ~5.
    """
    params = write_params(tmp_path / "p.yaml", score={"hidden": 256}, pretrain={"steps": 1000},
                          train={"steps": 5000, "learning_starts": 1000, "iteration_steps": 1000,
                                 "learner_fit_steps": 100, "eval_every": 5000, "eval_episodes": 5, "net": [64, 64],
                                 "checkpoint_every": 5000},
                          ingest={"num_states": 5000})
    run = run_cli(["train", "--params", params])
    assert run.exit_code == 0, run.output
    evaluation = run_cli(["evaluate", "--params", params, "--episodes", "10"])
    assert evaluation.exit_code == 0, evaluation.output
    work = tmp_path / "data" / "smiling-invertedpendulum-expert-v0"
    result = json.loads((work / "evaluate" / "metrics.json").read_text())
    assert result["return_mean"] > 6 * result["reference_random"], result


def test_pretrain_on_a_local_mujoco_humanoid_dataset(tmp_path, monkeypatch):
    import mlflow.pytorch

    store = tmp_path / "hstore"
    make_dataset(store, "mujoco/humanoid/expert-v0", "Humanoid-v5", episodes=3, max_steps=40)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    run = run_cli(["pretrain", "--dataset", "mujoco/humanoid", "--steps", "200"])
    assert run.exit_code == 0, run.output
    work = tmp_path / "data" / "mujoco-humanoid"
    info = json.loads((work / "pretrain" / "run.json").read_text())
    assert info["dataset_id"] == "mujoco/humanoid/expert-v0"
    assert (work / "pretrain" / "expert_score.pt").is_file()
    client = mlflow_client(tmp_path)
    history = client.get_metric_history(info["mlflow_run_id"], "train_loss")
    assert [m.step for m in history] == [200]  # pretrain.eval_every 500: the last step only
    model = mlflow.pytorch.load_model(info["model_uri"])
    assert model.dim == 348


# --- the real pipeline -----------------------------------------------------------------------------


def test_dvc_repro_runs_the_pipeline_and_then_has_nothing_to_do(tmp_path):
    """``dvc repro`` on a copy of the repository's dvc.yaml with tiny settings, twice."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(REPO / "smiling_pipeline", repo / "smiling_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["demos"].update(expert_steps=3000, episodes=2, random_episodes=5, expert_net=[16])
    params["pretrain"].update(steps=100)
    params["score"].update(hidden=32)
    params["train"].update(steps=400, learning_starts=200, iteration_steps=200, learner_fit_steps=20, eval_every=200,
                           eval_episodes=1, checkpoint_every=400, net=[16])
    params["evaluate"].update(episodes=1)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    env.pop("MINARI_DATASETS_PATH")  # the pipeline's own store (data/minari) is used
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True)
    first = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for stage in ("demos", "ingest", "pretrain", "train", "evaluate", "report"):
        assert f"Running stage '{stage}'" in first.stdout
    assert (repo / "reports" / "learning_curve.png").is_file()
    shown = subprocess.run(["dvc", "metrics", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True)
    assert "normalized_return" in shown.stdout
    assert (repo / "reports" / "policy_frames.png").is_file()  # evaluate.video: true in the pipeline
    check_the_runs_in_the_mlflow_ui(repo)
    second = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert second.returncode == 0 and "Running stage" not in second.stdout, second.stdout
    with open(repo / "smiling_pipeline" / "score.py", "a") as f:  # any code change reruns the stages that run it
        f.write("\n# edited\n")
    status = subprocess.run(["dvc", "status", "--json"], cwd=repo, env=env, capture_output=True, text=True)
    assert {"pretrain", "train", "evaluate"} <= set(json.loads(status.stdout)), status.stdout


def check_the_runs_in_the_mlflow_ui(repo: Path) -> None:
    """What the MLflow UI shows of one ``dvc repro``: a model-training experiment, the stage runs named and
    nested under one pipeline run, the dataset as their input, the metrics, the report, video, champion."""
    client = mlflow_client(repo)
    exp = client.get_experiment_by_name(DEMOS_DATASET)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags["stage"] == "pipeline"]
    stages = {r.data.tags["stage"]: r for r in runs if r.data.tags["stage"] != "pipeline"}
    assert set(stages) == {"pretrain", "train", "evaluate"} and parent.info.status == "FINISHED"
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in stages.values())
    assert {r.info.run_name for r in stages.values()} == {"pretrain-state-only-s0", "smiling-state-only-s0",
                                                            "evaluate-smiling-state-only-s0"}
    train = stages["train"]
    for stage in ("pretrain", "train", "evaluate"):  # every stage run shows the dataset in the Dataset column
        (dataset,) = stages[stage].inputs.dataset_inputs
        assert dataset.dataset.name == DEMOS_DATASET and dataset.dataset.digest
    assert {"normalized_return", "ds_divergence", "sac/critic_loss", "sac/actor_loss", "sac/ent_coef"} <= set(train.data.metrics)
    assert {a.path for a in client.list_artifacts(train.info.run_id, "report")} >= {"report/summary.md",
                                                                                    "report/learning_curve.png"}
    assert {a.path for a in client.list_artifacts(stages["evaluate"].info.run_id, "video")} == {"video/episode.mp4",
                                                                                               "video/frames.png"}
    champion = client.get_model_version_by_alias("smiling-invertedpendulum-expert-v0-policy", "champion")
    assert int(champion.version) == 1 and champion.tags["normalized_return"]
    evaluated = json.loads((repo / "data" / "pipeline" / "evaluate" / "run.json").read_text())
    assert evaluated["mlflow_run_id"] == stages["evaluate"].info.run_id and evaluated["champion"] is True
    assert evaluated["registered_model"] == "models:/smiling-invertedpendulum-expert-v0-policy/1"
    assert evaluated["champion_uri"] == "models:/smiling-invertedpendulum-expert-v0-policy@champion"


def test_every_dvc_stage_depends_on_the_whole_package():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert all("smiling_pipeline" in stage["deps"] for stage in stages.values())


def test_config_tag_names_every_changed_setting_that_applies_to_the_algorithm():
    """Computed from the settings, not a hand-kept list: cost.timesteps (missed by the old list) is named;
    the seed, budget and cadence are not; DAC's tag ignores the estimator's and pretraining's settings (the
    scopes are the registered method's)."""
    import dataclasses

    from smiling_pipeline import algorithms
    from smiling_pipeline.config import Params, apply_presets

    def config_tag(p: Params) -> str:
        return algorithms.get(p.train.algorithm).config_tag(p)

    p = Params()
    assert config_tag(p) == "default"
    p = dataclasses.replace(p, pretrain=dataclasses.replace(p.pretrain, steps=2000),
                            cost=dataclasses.replace(p.cost, draws="refit", timesteps=128),
                            train=dataclasses.replace(p.train, seed=3, steps=99_000, eval_every=5000))
    assert config_tag(p) == "pretrain.steps=2000;timesteps=128;draws=refit"
    dac = dataclasses.replace(p, train=dataclasses.replace(p.train, algorithm="dac", termination="absorbing"))
    assert config_tag(dac) == "termination=absorbing"
    sac = apply_presets(Params(), ["official-sac"])  # a preset applied whole is named by its name
    assert config_tag(sac) == "official-sac"
    sac = dataclasses.replace(sac, train=dataclasses.replace(sac.train, lr=3e-4))  # not whole: its settings
    assert config_tag(sac) == "learning_starts=5000;train.net=1024,1024;train.batch_size=1024;target_update_interval=2"
    both = apply_presets(p, ["official-reward", "official-sac"])
    assert config_tag(both) == "official-reward;official-sac;pretrain.steps=2000;draws=refit"
    assert config_tag(dataclasses.replace(both, train=dataclasses.replace(both.train, algorithm="dac"))) == "official-sac"


def test_a_recorded_run_is_labelled_against_todays_defaults():
    """A run's recorded settings (run.json's typed values, MLflow's text) are labelled by what differs from
    today's defaults: a run made when states were standardised by default names it, and a record that lacks
    ``cost.reward_norm`` (made before it existed) ran with batch normalisation; today's default run reads
    "default" whichever form recorded it."""
    from smiling_pipeline import algorithms
    from smiling_pipeline.config import Params, run_settings, settings_tag

    scopes = algorithms.get("smiling").tag_scopes
    today = run_settings(Params(), scopes)
    assert settings_tag(today, scopes) == "default"
    as_text = {k: str(list(v) if isinstance(v, tuple) else v) for k, v in today.items()}  # as MLflow keeps params
    assert settings_tag(as_text, scopes) == "default"
    older = {k: v for k, v in today.items() if k != "cost.reward_norm"} | {"score.normalize": True}
    assert settings_tag(older, scopes) == "normalize=True;reward_norm=batch"
    assert settings_tag(as_text | {"train.net": "[256, 256]", "score.gone": "1"}, scopes) == "train.net=256,256"
