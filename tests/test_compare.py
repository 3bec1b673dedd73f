"""The comparison report on a small synthetic MLflow store, and sweep expansion (no DVC queue run)."""

from __future__ import annotations

import re

import mlflow
import numpy as np
import pytest
import yaml
from conftest import assert_user_error, run_cli

from smiling_pipeline.compare import (
    RunCurve,
    _default_states,
    _groups,
    correlation_table,
    halves_table,
    load_runs,
    mean_curve,
    overview,
    return_to_go_table,
    summarise,
    write_comparison,
)

DATASET = "smiling/toy/expert-v0"


def log_run(client, exp, algorithm, variant, seed, curve, states=5000, status="FINISHED", dvc_exp=None, seconds=None):
    tags = {"stage": "train", "dataset": DATASET, "algorithm": algorithm, "variant": variant, "rl": "sac",
            "seed": str(seed), "expert_states": str(states)}
    if dvc_exp:
        tags["dvc_exp"] = dvc_exp
    run = client.create_run(exp, tags=tags)
    for step, value in curve:
        client.log_metric(run.info.run_id, "normalized_return", value, step=step)
    if seconds is not None:
        client.log_metric(run.info.run_id, "train_seconds", seconds)
    client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


@pytest.fixture
def store(tmp_path):
    """Four SMILING seeds (finals 0, .2, .6, 1), a superseded and an unfinished run, BC, and DAC at two sizes."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(DATASET)
    log_run(client, exp, "smiling", "state-only", 0, [(1000, 0.9), (2000, 0.9)])  # superseded by the rerun below
    for seed, final in enumerate([0.0, 0.2, 0.6, 1.0]):
        log_run(client, exp, "smiling", "state-only", seed, [(1000, 0.1), (2000, final)], dvc_exp=f"cmp-s{seed}",
                seconds=90.0 * (seed + 1))
    log_run(client, exp, "smiling", "state-only", 7, [(1000, 5.0)], status="KILLED")
    for seed in range(3):
        log_run(client, exp, "bc", "state-action", seed, [(500, 0.5), (1000, 0.7 + 0.1 * seed)])
        for states, final in [(5000, 0.9), (200, 0.3)]:
            log_run(client, exp, "dac", "state-only", seed, [(1000, 0.0), (3000, final)], states=states)
    return uri


def table_row(markdown, variant, algorithm, states):
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[:3] == [variant, algorithm, str(states)]:
            return [float(c.split()[0]) for c in cells[3:]]
    raise AssertionError(f"no row {variant} {algorithm} {states} in\n{markdown}")


def test_comparison_table_plots_and_run_selection(store, tmp_path):
    out = write_comparison(store, tmp_path / "compare")
    text = out.read_text()
    seeds, mean, iqm, auc = table_row(text, "state-only", "SMILING", 5000)
    # latest run per seed; the KILLED run and the superseded seed-0 run are not counted. Each run's final
    # is the mean of its last three evaluations (here both): (0.1 + f) / 2 for f = 0, .2, .6, 1
    assert (seeds, mean, iqm, auc) == (4, 0.275, 0.25, 0.275)
    assert "0.275 [0.15, 0.45]" in text or "0.275 [0.10, 0.45]" in text  # bootstrap interval of the mean
    assert table_row(text, "state-action", "BC", 5000)[:3] == [3, 0.65, 0.65]
    assert table_row(text, "state-only", "DAC", 200)[:2] == [3, 0.15]
    # one row per run, named, with its final (mean of the last 3), last, best, AUC and training time
    assert "| `cmp-s3` | state-only | SMILING | 3 | 0.550 | 1.000 | 1.000 | 0.550 | 6.0 min |" in text
    assert sum(line.startswith("| `cmp-s") for line in text.splitlines()) == 4  # the latest run per seed
    assert re.search(r"\| state-action \| BC \| 2 \| 0\.700 \| 0\.900 \| 0\.900 \| 0\.700 \| - \|", text)
    folder = tmp_path / "compare"
    assert sorted(p.name for p in folder.iterdir()) == [
        "comparison.md", "smiling-toy-expert-v0_curves.png", "smiling-toy-expert-v0_data_efficiency.png"]
    assert all(p.stat().st_size > 10_000 for p in folder.glob("*.png"))


def overview_rows(runs):
    groups = _groups(runs)
    states = {d: _default_states([c for c in runs if c.dataset == d]) for d in {c.dataset for c in runs}}
    lines = overview(groups, [summarise(g) for _, g in sorted(groups.items())], states)
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| d |")]


def test_overview_names_a_leader_only_when_intervals_part_with_enough_seeds():
    def run(algorithm, seed, final, variant="state-only", config="default", states=10):
        return RunCurve("d", variant, algorithm, "sac", config, states, seed, (1000, 2000), (final, final))

    strong = [run("dac", s, f) for s, f in enumerate([0.9, 0.95, 1.0])]
    weak = [run("smiling", s, f) for s, f in enumerate([0.1, 0.2, 0.15])]
    ablation = [run("smiling", s, 5.0, config="linear=True") for s in range(3)]  # not an overview column
    [row] = overview_rows(strong + weak + ablation)
    assert row == ["d", "state-only", "2k", "0.150 [0.10, 0.20] (3)", "0.950 [0.90, 1.00] (3)", "**DAC**"]
    assert overview_rows(strong + weak[:2])[0][-1] == "fewer than 3 seeds"
    close = [run("smiling", s, f) for s, f in enumerate([0.85, 0.95, 1.05])]
    assert overview_rows(strong + close)[0][-1] == "none (intervals overlap)"
    bc = [run("bc", s, 0.5, variant="state-action") for s in range(3)]
    rows = overview_rows(strong + bc)
    assert [r[:3] for r in rows] == [["d", "state-only", "2k"], ["d", "state-action", "-"]]  # BC takes no env steps
    assert rows[1][3:] == ["-", "0.500 [0.50, 0.50] (3)", "-"]  # columns DAC, BC: no DAC run here


def test_correlation_table_averages_each_runs_quarters_then_seeds():
    def run(seed, corr, algorithm="smiling", dataset="d"):
        points = tuple((100 * (i + 1), c) for i, c in enumerate(corr))
        return RunCurve(dataset, "state-only", algorithm, "sac", "default", 10, seed, (1000,), (0.5,),
                        {"reward_true_corr": points})

    # 8 iterations: quarters of 2; seed 0 rises from 0 to 0.7, seed 1 is flat at 0.4
    runs = [run(0, [0.0, 0.2, 0.3, 0.3, 0.4, 0.5, 0.6, 0.8]), run(1, [0.4] * 8),
            run(0, [0.1], algorithm="dac"), run(0, [0.9] * 4, dataset="other"),
            RunCurve("d", "state-action", "bc", "sac", "default", 10, 0, (1000,), (0.5,))]  # BC has no diagnostics
    lines = correlation_table(_groups(runs), "d")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| state")]
    assert rows == [["state-only", "DAC", "10", "1", "0.10", "0.10", "0.10", "100%", "0.10"],
                    ["state-only", "SMILING", "10", "2", "0.25", "0.39", "0.55", "100%", "0.39, 0.40"]]
    assert correlation_table(_groups(runs[-1:]), "d") == []  # nothing to show without diagnostics


def test_correlation_table_leaves_out_iterations_without_a_correlation():
    """A sparse true reward is constant (correlation NaN) until the learner first earns it: the means are
    over the iterations that have a value, and the table says what share that was."""
    nan = float("nan")
    points = tuple((100 * (i + 1), c) for i, c in enumerate([nan, nan, 0.2, 0.4, 0.5, 0.5, 0.6, 0.7]))
    never = tuple((100 * (i + 1), nan) for i in range(4))
    runs = [RunCurve("d", "state-only", "smiling", "sac", "default", 10, 0, (1000,), (0.5,), {"reward_true_corr": points}),
            RunCurve("d", "state-only", "dac", "sac", "default", 10, 0, (1000,), (0.5,), {"reward_true_corr": never})]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in correlation_table(_groups(runs), "d")
            if line.startswith("| state")]
    assert rows == [["state-only", "DAC", "10", "1", "nan", "nan", "nan", "0%", "nan"],
                    ["state-only", "SMILING", "10", "1", "nan", "0.48", "0.65", "75%", "0.48"]]


def test_halves_table_shows_each_half_where_it_was_recorded():
    def points(values):
        return tuple((100 * (i + 1), v) for i, v in enumerate(values))

    nan = float("nan")
    # 4 iterations: quarters of 1; the expert half follows the task, the learner half works against it early
    smiling = [RunCurve("d", "state-only", "smiling", "sac", "default", 10, s, (1000,), (0.5,),
                        {"reward_true_corr": points([0.1] * 4), "reward_true_corr_expert": points([0.6, 0.5, 0.5, 0.4]),
                         "reward_true_corr_learner": points([-0.8 + 0.4 * s, -0.4, 0.0, 0.2])}) for s in range(2)]
    dac = RunCurve("d", "state-only", "dac", "sac", "default", 10, 0, (1000,), (0.5,),
                   {"reward_true_corr": points([0.5] * 4), "reward_true_corr_expert": points([nan] * 4),
                    "reward_true_corr_learner": points([nan] * 4)})
    old = RunCurve("d", "state-action", "smiling", "sac", "default", 10, 0, (1000,), (0.5,),
                   {"reward_true_corr": points([0.3] * 4)})  # recorded before the halves were
    lines = halves_table(_groups([*smiling, dac, old]), "d")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| state")]
    assert rows == [["state-only", "SMILING", "10", "2", "0.60 / 0.50 / 0.40", "-0.60 / -0.20 / 0.20"]]
    assert halves_table(_groups([dac, old]), "d") == []
    rtg = RunCurve("d", "state-only", "dac", "sac", "default", 10, 1, (1000,), (0.5,),
                   {"reward_true_corr": points([0.5] * 4), "reward_rtg_corr": points([0.1, 0.2, 0.3, 0.4])})
    lines = return_to_go_table(_groups([rtg, old]), "d")  # DAC has one too; the run without it is left out
    assert [line for line in lines if line.startswith("| state")] == ["| state-only | DAC | 10 | 1 | 0.10 / 0.25 / 0.40 |"]


def test_budget_cuts_every_run_and_leaves_out_the_shorter_ones(store, tmp_path, monkeypatch):
    text = write_comparison(store, tmp_path / "at-2500", budget=2500).read_text()
    # DAC (evaluated at 1k and 3k) is cut to its 1k evaluation; SMILING (ended at 2k) cannot be read at 2.5k
    assert table_row(text, "state-only", "DAC", 5000)[:2] == [3, 0.0]
    assert "state-only | SMILING" not in text and "cut at 2,500 env steps" in text
    note = next(line for line in text.splitlines() if line.startswith("**Budget"))
    assert all(f"`cmp-s{seed}`" in note for seed in range(4)) and "`cmp-s" not in note.split("Left out")[0]
    assert table_row(text, "state-action", "BC", 5000)[:3] == [3, 0.65, 0.65]  # env-free: as it was
    at_3k = write_comparison(store, tmp_path / "at-3000", budget=3000).read_text()
    assert table_row(at_3k, "state-only", "DAC", 5000)[:2] == [3, 0.45]  # mean of its evaluations 0 and 0.9
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert_user_error(run_cli(["report", "--compare", "--budget", "500", "--out", str(tmp_path / "none")]),
                      "no run was evaluated up to it (the runs span 1000 to 3000 env steps)")
    assert not (tmp_path / "none").exists()


def test_exp_prefix_keeps_only_named_experiments(store):
    runs = load_runs(store, exp_prefix="cmp-")
    assert {(r.algorithm, r.seed) for r in runs} == {("smiling", s) for s in range(4)}


def test_curves_average_only_steps_every_seed_evaluated():
    from smiling_pipeline.compare import RunCurve

    a = RunCurve("d", "state-only", "smiling", "sac", "default", 10, 0, (1, 2, 3), (0.0, 0.5, 1.0))
    b = RunCurve("d", "state-only", "smiling", "sac", "default", 10, 1, (2, 3), (0.1, 0.4))
    steps, mean, lo, hi = mean_curve([a, b])
    assert steps.tolist() == [2, 3] and np.allclose(mean, [0.3, 0.7])
    # two seeds: bootstrap means are 0.4, 0.7 or 1.0 (p = 1/4, 1/2, 1/4), so the 95% interval is [0.4, 1.0]
    assert (lo[1], hi[1]) == (0.4, 1.0)
    assert a.final == 0.5 and b.final == pytest.approx(0.25) and a.auc == pytest.approx(0.5)
    single = summarise([a])
    assert single.mean == 0.5 and single.mean_ci == (0.5, 0.5)
    ablation = RunCurve("d", "state-only", "smiling", "sac", "draws=refit", 10, 0, (1,), (0.0,))
    assert ablation.label == "SMILING [draws=refit]" and a.label == "SMILING"


def test_compare_cli_writes_reports_and_refuses_an_empty_store(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    ok = run_cli(["report", "--compare", "--out", tmp_path / "cmp", "--dataset", DATASET])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "cmp" / "comparison.md").is_file()
    assert_user_error(run_cli(["report", "--compare", "--out", tmp_path / "x", "--dataset", "nope/none-v0"]),
                      "no finished train runs")
    assert_user_error(run_cli(["report", "--compare", "--out", tmp_path / "x", "--exp-prefix", "zzz-"]),
                      "no finished train runs", "zzz-")
    assert not (tmp_path / "x").exists()
    kept = tmp_path / "mine" / "notes.md"  # the report replaces its folder: never one with other files in it
    kept.parent.mkdir()
    kept.write_text("keep me")
    assert_user_error(run_cli(["report", "--compare", "--out", kept.parent]), "holds other files (notes.md)")
    assert kept.read_text() == "keep me"
    again = run_cli(["report", "--compare", "--out", tmp_path / "cmp"])  # an earlier report is replaced
    assert again.exit_code == 0, again.output


def test_sweep_expands_grids_and_validates_before_queueing(tmp_path):
    sweep = {"name": "t", "datasets": {"a": {}, "b": {"train.steps": 500}},
             "grids": [{"datasets": ["a", "b"], "seeds": [0, 1]},
                       {"datasets": ["a"], "algorithms": ["smiling"], "variants": ["state-only"],
                        "expert_states": [100]}]}
    path, params = tmp_path / "sweep.yaml", tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(sweep))
    params.write_text("train:\n  steps: 1000\n")
    run = run_cli(["sweep", path, "--dry-run", "--params", params])
    assert run.exit_code == 0, run.output
    names = re.findall(r"^(t-\S+):", run.stdout, flags=re.M)
    # 2 datasets x ((smiling, dac) x 2 variants + BC state-action) x 2 seeds, + small-data cells x 3 default seeds
    assert len(names) == 2 * 5 * 2 + 3 and "would queue 23 experiments" in run.stdout
    assert not any("-bc-so-" in n for n in names)
    assert "t-b-dac-sa-s1: train.steps=500 train.algorithm=dac train.seed=1 pretrain.seed=1 ingest.with_actions=True" \
        in run.stdout
    assert "t-a-smiling-so-n100-s0" in names

    sweep["datasets"]["b"] = {"train.stepz": 500}
    path.write_text(yaml.safe_dump(sweep))
    assert_user_error(run_cli(["sweep", path, "--dry-run", "--params", params]), "train.stepz")
    sweep["datasets"]["b"] = {"train.steps": "many"}
    path.write_text(yaml.safe_dump(sweep))
    assert_user_error(run_cli(["sweep", path, "--dry-run", "--params", params]), "t-b-smiling-so-s0", "train.steps")
    sweep["datasets"]["b"] = {}
    sweep["grids"][1]["datasets"] = ["c"]
    path.write_text(yaml.safe_dump(sweep))
    assert_user_error(run_cli(["sweep", path, "--dry-run", "--params", params]), "'c'")


def test_local_sweep_runs_each_cell_once_and_the_report_reads_their_records(recorded, monkeypatch, tmp_path):
    import json

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(recorded["store"]))
    tiny = {"ingest.dataset": "smiling/invertedpendulum/expert-v0", "ingest.num_states": 1000, "score.hidden": 32,
            "pretrain.steps": 100, "train.steps": 400, "train.learning_starts": 200, "train.iteration_steps": 100,
            "train.learner_fit_steps": 10, "train.eval_every": 100, "train.eval_episodes": 1,
            "train.checkpoint_every": 400, "train.net": [16, 16]}
    sweep = {"name": "loc", "datasets": {"ip": tiny},
             "grids": [{"datasets": ["ip"], "seeds": [0], "algorithms": ["smiling"], "variants": ["state-only"]},
                       {"datasets": ["ip"], "seeds": [0], "algorithms": ["smiling"], "variants": ["state-only"],
                        "overrides": {"train.termination": "absorbing"}, "label": "absorbing"}]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    results = tmp_path / "cells"
    args = ["sweep", path, "--backend", "local", "-j", "2", "--runs", tmp_path / "runs", "--results", results]
    run = run_cli(args)
    assert run.exit_code == 0, run.output
    assert sorted(p.name for p in results.iterdir()) == ["loc-ip-smiling-so-absorbing-s0", "loc-ip-smiling-so-s0"]
    cell = json.loads((results / "loc-ip-smiling-so-absorbing-s0" / "cell.json").read_text())
    assert cell["overrides"]["train.termination"] == "absorbing" and cell["wall_time_s"] > 0
    tags = json.loads((results / "loc-ip-smiling-so-absorbing-s0" / "run.json").read_text())["tags"]
    # every setting that differs from the default is named, the tiny pretraining beside the grid's own
    assert {"pretrain.steps=100", "termination=absorbing"} <= set(tags["config"].split(";"))
    assert tags["sweep_cell"] == "loc-ip-smiling-so-absorbing-s0"
    again = run_cli(args)  # finished cells are never run again
    assert again.exit_code == 0 and "ran 0 cells" in again.stdout, again.output
    # toward other results, both cells are pending; a dry run says where each one's checkpoint stands
    (tmp_path / "runs" / "loc-ip-smiling-so-s0" / "train" / "checkpoint" / "model.zip").write_bytes(b"torn")
    plan = run_cli([*args[:-1], tmp_path / "elsewhere", "--dry-run"])
    assert plan.exit_code == 0 and "would run 2 cells (1 from checkpoints in" in plan.stdout, plan.output
    last = json.loads((results / "loc-ip-smiling-so-absorbing-s0" / "metrics.json").read_text())["final_normalized_return"]
    assert re.search(r"loc-ip-smiling-so-absorbing-s0: .*\n  resumes from its checkpoint at 400 env steps "
                     rf"\(last evaluation {last:.2f} at 400\)", plan.stdout), plan.stdout
    assert "loc-ip-smiling-so-s0: " in plan.stdout and "cannot resume: checkpoint " in plan.stdout
    assert not (tmp_path / "elsewhere").exists()
    more = tmp_path / "more-cells"  # records of two sweeps, in two folders, go into one report
    more.mkdir()
    (results / "loc-ip-smiling-so-absorbing-s0").rename(more / "loc-ip-smiling-so-absorbing-s0")
    report = run_cli(["report", "--compare", "--cells", results, "--cells", more, "--no-mlflow", "--out", tmp_path / "cmp"])
    assert report.exit_code == 0, report.output
    text = (tmp_path / "cmp" / "comparison.md").read_text()
    label = tags["config"]  # the absorbing cell's tag; the other cell's is the same without termination
    plain = ";".join(part for part in label.split(";") if part != "termination=absorbing")
    assert f"| state-only | SMILING [{label}] | 1000 | 1 |" in text
    assert f"| state-only | SMILING [{plain}] | 1000 | 1 |" in text
    seconds = json.loads((results / "loc-ip-smiling-so-s0" / "run.json").read_text())["train_seconds"]
    assert 0 < seconds < cell["wall_time_s"]  # training only, within its cell's process
    assert f"| `loc-ip-smiling-so-s0` | state-only | SMILING [{plain}] | 0 |" in text
    assert f"| {seconds / 60:.1f} min |" in text and "* the cell process's wall time" not in text
    assert (tmp_path / "cmp" / "smiling-invertedpendulum-expert-v0_diagnostics.png").stat().st_size > 10_000
    assert re.search(rf"\| state-only \| SMILING \[{re.escape(label)}\] \| 1000 \| 1 \| -?\d\.\d\d \|", text)
    # a record made when standardised states were the default is labelled with them against today's defaults
    record = more / "loc-ip-smiling-so-absorbing-s0" / "run.json"
    info = json.loads(record.read_text())
    assert info["settings"]["train.termination"] == "absorbing" and info["settings"]["score.normalize"] is False
    record.write_text(json.dumps({**info, "settings": {**info["settings"], "score.normalize": True}}))
    report = run_cli(["report", "--compare", "--cells", more, "--no-mlflow", "--out", tmp_path / "cmp-old"])
    assert report.exit_code == 0, report.output
    row = re.search(r"\| `loc-ip-smiling-so-absorbing-s0` \| state-only \| SMILING \[([^]]+)\]",
                    (tmp_path / "cmp-old" / "comparison.md").read_text())
    assert row and set(row.group(1).split(";")) == set(label.split(";")) | {"normalize=True"}


def test_a_cell_claimed_by_one_sweep_process_is_skipped_by_another(tmp_path):
    from smiling_pipeline.sweep import _claim, cell_note

    assert cell_note(tmp_path) is None  # never run: it would start from scratch
    first = _claim(tmp_path)
    assert first is not None and _claim(tmp_path) is None
    assert cell_note(tmp_path) == "running now in a sweep process"  # and the probe leaves the lock held
    assert _claim(tmp_path) is None
    first.close()
    assert cell_note(tmp_path) is None
    again = _claim(tmp_path)
    assert again is not None
    again.close()

    # a sweep whose only cell another process holds runs nothing and says so
    sweep = {"name": "t", "datasets": {"a": {}},
             "grids": [{"datasets": ["a"], "seeds": [0], "algorithms": ["smiling"], "variants": ["state-only"]}]}
    path, runs = tmp_path / "sweep.yaml", tmp_path / "runs"
    path.write_text(yaml.safe_dump(sweep))
    (runs / "t-a-smiling-so-s0").mkdir(parents=True)
    held = _claim(runs / "t-a-smiling-so-s0")
    run = run_cli(["sweep", path, "--backend", "local", "--runs", runs, "--results", tmp_path / "cells"])
    held.close()
    assert run.exit_code == 0 and "ran 0 cells" in run.stdout, run.output
    assert not (runs / "t-a-smiling-so-s0" / "train.log").exists()


def test_a_lock_held_for_an_instant_does_not_make_a_sweep_skip_the_cell(tmp_path):
    """A --dry-run probe takes a cell's lock for an instant; a sweep claiming the cell then still gets it."""
    import fcntl
    import threading

    from smiling_pipeline.sweep import _claim

    probe = open(tmp_path / ".lock", "w")
    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    threading.Timer(0.06, probe.close).start()
    claimed = _claim(tmp_path)
    assert claimed is not None
    claimed.close()

def test_step_axes_read_in_thousands_and_millions():
    from smiling_pipeline.report import plt, steps_axis

    fig, ax = plt.subplots()
    steps_axis(ax)
    label = ax.xaxis.get_major_formatter()
    assert [label(x, 0) for x in (0, 500, 5_000, 200_000, 1_500_000)] == ["0", "500", "5k", "200k", "1.5M"]
    plt.close(fig)
