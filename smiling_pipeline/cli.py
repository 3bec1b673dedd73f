"""``smiling-cli``: the Typer front end. Each command reads ``params.yaml``, applies its options and
calls one module function; user errors become one line on stderr and a non-zero exit code.

Importing this module imports none of torch, SB3, MLflow, Minari or Gymnasium: a command checks its
settings and dataset id first (:func:`setup`, :func:`start`) and imports the stage it runs after that,
so ``--help`` and refused input answer at once (``tests/test_startup.py``, ``benchmarks/startup.py``)."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from smiling_pipeline import config as C
from smiling_pipeline.errors import UserError
from smiling_pipeline.pipeline import workdir as workdir_for  # light: the stages are imported where they run

app = typer.Typer(
    help="SMILING imitation learning: Minari demos -> score models -> RL -> normalized return.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help texts show "[params: section.key]" literally, not as Rich markup
)

F = TypeVar("F", bound=Callable[..., Any])

ParamsOpt = Annotated[Optional[Path], typer.Option("--params", help="params.yaml to read (default: ./params.yaml if present).")]
WithActionsOpt = Annotated[Optional[bool], typer.Option(
    "--with-actions/--states-only", help="State-action variant [params: ingest.with_actions].")]
LinearOpt = Annotated[Optional[bool], typer.Option(
    "--linear/--nonlinear", help="Linear score networks, the paper's ablation [params: score.linear].")]
WorkdirOpt = Annotated[Optional[Path], typer.Option("--workdir", help="Folder the stages write to [params: runtime.workdir].")]
RootOpt = Annotated[
    Optional[Path],
    typer.Option("--minari-root", help="Minari store [default: $MINARI_DATASETS_PATH, else params runtime.minari_root, else ~/.minari/datasets]."),
]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda | cuda:N [params: runtime.device].")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, help="Torch CPU threads [params: runtime.threads].")]
PrecisionOpt = Annotated[Optional[str], typer.Option(
    "--precision", help="Score-model matmuls: auto (bfloat16 where native) | float32 | bfloat16 [params: runtime.precision].")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed [params: <stage>.seed].")]
PresetOpt = Annotated[Optional[list[str]], typer.Option(
    "--preset", help="Named settings applied before the other options, repeatable: official-reward | official-sac "
                     "(config.PRESETS; give pretrain the same ones).")]


class _Stderr(logging.Handler):
    """Progress notes to the current stderr (looked up per message, so CliRunner captures them too)."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(self.format(record), err=True)


def _log_to_stderr() -> None:
    """The package's progress notes (``logging`` at INFO) go to stderr so stdout stays the command's result."""
    logger = logging.getLogger("smiling_pipeline")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        logger.addHandler(_Stderr())
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _error(message: str) -> None:
    typer.echo("error: " + message.replace("\r", "\\r").replace("\n", "\\n"), err=True)  # one line, always


def handles_user_errors(fn: F) -> F:
    """Print :class:`UserError` and file-system errors as one line and exit 1; Ctrl-C exits 130. Real bugs keep
    their traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            _error(str(e))
            raise typer.Exit(1) from None
        except OSError as e:  # the file system refused a path the user gave (too long, no permission, disk full)
            _error(f"{e.strerror or type(e).__name__}: {str(e.filename)[:80]}; check the paths given")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: finished outputs are kept, unfinished ones were not written", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _quiet_libraries() -> None:
    """Library warnings (Minari metadata, Gymnasium env checks) would bury the command's own output."""
    for module in ("minari", "gymnasium", "stable_baselines3", "mlflow", "jax"):
        warnings.filterwarnings("ignore", module=module)
    warnings.filterwarnings("ignore", category=UserWarning)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # read when mlflow is first imported
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # Minari's remote: retries are not the user's news
    logging.getLogger("alembic").setLevel(logging.ERROR)
    os.environ.setdefault("MUJOCO_GL", "egl")


def setup(params: Optional[Path], workdir: Optional[Path] = None, device: Optional[str] = None,
          threads: Optional[int] = None, precision: Optional[str] = None) -> C.Params:
    """Load params and apply the runtime options; bad settings are refused here, before any heavy import."""
    _quiet_libraries()
    p = C.load_params(params)
    rt = C.override(p.runtime, workdir=str(workdir) if workdir else None, device=device, threads=threads,
                    precision=precision)
    return dataclasses.replace(p, runtime=rt)


def start(p: C.Params, minari_root: Optional[Path], dataset: bool = True) -> None:
    """Refuse a malformed ``ingest.dataset`` (when the command reads a dataset), then point Minari at its
    store, set torch threads and refuse a device this machine lacks (before a chained stage writes): the
    command's first heavy import, so nothing before it waits for one.

    The Minari store is ``--minari-root``, else ``$MINARI_DATASETS_PATH``, else ``runtime.minari_root``,
    else Minari's default.
    """
    from smiling_pipeline.demos import check_dataset_id
    from smiling_pipeline.pipeline import prepare

    if dataset:
        check_dataset_id(p.ingest.dataset)
    prepare(p, minari_root)
    from smiling_pipeline.runtime import resolve_device

    resolve_device(p.runtime.device)


def with_section(p: C.Params, section: str, **values: Any) -> C.Params:
    """``p`` with fields of one section overridden (None values are options not given)."""
    return dataclasses.replace(p, **{section: C.override(getattr(p, section), **values)})


@app.callback()
def _root() -> None:
    """SMILING imitation learning from Minari demonstrations (see README)."""
    _log_to_stderr()


@app.command()
@handles_user_errors
def datasets(
    remote: Annotated[bool, typer.Option("--remote", help="Also list remote datasets (needs a network).")] = False,
    minari_root: RootOpt = None,
    params: ParamsOpt = None,
) -> None:
    """List local Minari datasets (and remote ones with --remote) with sizes and reference scores."""
    from smiling_pipeline.demos import local_datasets, remote_datasets
    from smiling_pipeline.demos import minari_root as store

    start(setup(params), minari_root, dataset=False)
    rows = [("local", i, m) for i, m in local_datasets().items()]
    if remote:
        rows += [("remote", i, m) for i, m in remote_datasets().items()]
    typer.echo(f"Minari store: {store()}")
    if not rows:
        typer.echo("no datasets; make one with `smiling-cli demos` or pass --remote")
        return
    typer.echo(f"{'where':<7} {'dataset':<45} {'episodes':>8} {'steps':>9} {'size':>9} {'ref_min':>9} {'ref_max':>9}")
    for where, dataset_id, m in rows:
        typer.echo(
            f"{where:<7} {dataset_id:<45} {m.get('total_episodes', '?'):>8} {m.get('total_steps', '?'):>9} "
            f"{m.get('dataset_size', '?')!s:>7}MB {_fmt(m.get('ref_min_score')):>9} {_fmt(m.get('ref_max_score')):>9}"
        )


def _net(text: Optional[str]) -> Optional[tuple[int, ...]]:
    """``"256,256"`` -> (256, 256); None when the option was not given."""
    if text is None:
        return None
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise UserError(f"--expert-net must be positive layer sizes separated by commas, e.g. 256,256; got {text!r}")
    return sizes


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{float(x):.1f}"


@app.command()
@handles_user_errors
def demos(
    env: Annotated[Optional[str], typer.Option("--env", help="Gymnasium env id, e.g. Hopper-v5 or dm_control/cheetah-run-v0 (Dict observations are recorded flat) [params: demos.env_id].")] = None,
    dataset_id: Annotated[Optional[str], typer.Option("--dataset-id", help="Id of the new dataset, e.g. smiling/hopper/expert-v0.")] = None,
    expert_steps: Annotated[Optional[int], typer.Option("--expert-steps", min=1, help="True-reward training steps of the expert [params: demos.expert_steps].")] = None,
    expert_net: Annotated[Optional[str], typer.Option("--expert-net", help="Expert hidden layers, e.g. 256,256 [params: demos.expert_net].")] = None,
    eval_every: Annotated[Optional[int], typer.Option("--eval-every", min=1, help="Evaluate the expert every N steps; the best is recorded [params: demos.eval_every].")] = None,
    episodes: Annotated[Optional[int], typer.Option("--episodes", min=1, help="Expert episodes to record.")] = None,
    random_episodes: Annotated[Optional[int], typer.Option("--random-episodes", min=1, help="Random-policy episodes for ref_min_score.")] = None,
    algorithm: Annotated[Optional[str], typer.Option("--algorithm", help="Expert algorithm: sac | ppo [params: demos.algorithm].")] = None,
    policy: Annotated[Optional[str], typer.Option("--policy", help="Record this SB3 .zip (of --algorithm) instead of training an expert.")] = None,
    deterministic: Annotated[Optional[bool], typer.Option(
        "--deterministic/--stochastic", help="Record the expert's mean action, or its sampled actions as the official code does [params: demos.deterministic].")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing dataset with the same id.")] = False,
    seed: SeedOpt = None,
    params: ParamsOpt = None,
    workdir: WorkdirOpt = None,
    minari_root: RootOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Make a local expert dataset: train an SB3 expert (PPO or SAC) on the true reward (or load --policy), record with Minari."""
    from smiling_pipeline.demos import check_new_dataset_id, make_demos
    from smiling_pipeline.demos import minari_root as store
    from smiling_pipeline.io import write_json

    p = setup(params, workdir, device, threads)
    cfg = C.override(p.demos, env_id=env, dataset_id=dataset_id, algorithm=algorithm, expert_steps=expert_steps,
                     expert_net=_net(expert_net), eval_every=eval_every, episodes=episodes,
                     random_episodes=random_episodes, policy_path=policy, deterministic=deterministic, seed=seed)
    check_new_dataset_id(cfg.dataset_id)
    start(p, minari_root, dataset=False)
    from smiling_pipeline.runtime import resolve_device

    out = workdir_for(p) / "demos"
    result = make_demos(cfg, store(), out, str(resolve_device(p.runtime.device)), force=force)
    write_json(out / "demos.json", vars(result))
    typer.echo(
        f"recorded {result.episodes} episodes ({result.steps} steps) into {result.dataset_id}: expert return "
        f"{result.expert_return:.1f} ± {result.expert_return_std:.1f}, random {result.random_return:.1f}"
    )


@app.command()
@handles_user_errors
def ingest(
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="Minari id, full or bare (mujoco/humanoid) [params: ingest.dataset].")] = None,
    num_states: Annotated[Optional[int], typer.Option("--num-states", min=2, help="Expert states to keep (random subset).")] = None,
    every: Annotated[Optional[int], typer.Option("--every", min=1, help="Keep every k-th step of each episode.")] = None,
    max_episodes: Annotated[Optional[int], typer.Option("--max-episodes", min=1, help="Read at most this many episodes.")] = None,
    val_fraction: Annotated[Optional[float], typer.Option("--val-fraction", min=0.0, max=0.99, help="Share held out for validation.")] = None,
    with_actions: WithActionsOpt = None,
    seed: SeedOpt = None,
    params: ParamsOpt = None,
    workdir: WorkdirOpt = None,
    minari_root: RootOpt = None,
) -> None:
    """Read a Minari dataset once and write expert arrays, statistics and metadata under the workdir."""
    p = with_section(setup(params, workdir), "ingest", dataset=dataset, num_states=num_states, every=every,
                     max_episodes=max_episodes, val_fraction=val_fraction, with_actions=with_actions, seed=seed)
    start(p, minari_root)
    from smiling_pipeline.ingest import ingest as run_ingest

    out = workdir_for(p) / "ingest"
    meta = run_ingest(p.ingest, out)
    typer.echo(
        f"ingested {meta['dataset_id']}: {meta['train_rows']} train + {meta['val_rows']} val rows of dim "
        f"{meta['input_dim']} from {meta['episodes_used']} episodes -> {out}"
    )


@app.command()
@handles_user_errors
def pretrain(
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="Minari id [params: ingest.dataset]; ingested first if needed.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Training steps [params: pretrain.steps].")] = None,
    with_actions: WithActionsOpt = None,
    linear: LinearOpt = None,
    preset: PresetOpt = None,
    seed: SeedOpt = None,
    params: ParamsOpt = None,
    workdir: WorkdirOpt = None,
    minari_root: RootOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = None,
) -> None:
    """Pre-train the expert diffusion score model; logs losses and the model to MLflow."""
    p = C.apply_presets(setup(params, workdir, device, threads, precision), preset or [])
    p = with_section(p, "ingest", dataset=dataset, with_actions=with_actions)
    p = with_section(p, "score", linear=linear)
    p = with_section(p, "pretrain", steps=steps, seed=seed)
    check_settings(p)
    start(p, minari_root)
    from smiling_pipeline.pipeline import ensure_ingested
    from smiling_pipeline.pretrain import pretrain as run_pretrain

    m = run_pretrain(p, ensure_ingested(p), workdir_for(p) / "pretrain")
    loss = (f"train loss {m['final_train_loss']:.4f} (no validation rows)" if m["final_val_loss"] is None
            else f"val loss {m['final_val_loss']:.4f}")
    typer.echo(f"expert score model: {loss} after {m['steps']} steps -> {workdir_for(p) / 'pretrain'}; "
               f"MLflow model {m['model_uri']}")


@app.command()
@handles_user_errors
def train(
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="Minari id [params: ingest.dataset]; ingest/pretrain run first if needed.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Env steps [params: train.steps].")] = None,
    algorithm: Annotated[Optional[str], typer.Option("--algorithm", help="Imitation method: a name registered in smiling_pipeline.algorithms, e.g. smiling, dac, bc (an unknown name lists them) [params: train.algorithm].")] = None,
    rl: Annotated[Optional[str], typer.Option("--rl", help="SB3 off-policy learner: sac | td3 | ddpg [params: train.rl].")] = None,
    with_actions: WithActionsOpt = None,
    linear: LinearOpt = None,
    eval_every: Annotated[Optional[int], typer.Option("--eval-every", min=1, help="Env steps between evaluations.")] = None,
    eval_episodes: Annotated[Optional[int], typer.Option("--eval-episodes", min=1, help="Episodes per evaluation.")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option("--checkpoint-every", min=1, help="Env steps between checkpoints.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in the workdir (same settings; a larger --steps extends a finished run).")] = False,
    preset: PresetOpt = None,
    seed: SeedOpt = None,
    params: ParamsOpt = None,
    workdir: WorkdirOpt = None,
    minari_root: RootOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = None,
) -> None:
    """Iterative SMILING (or the DAC / BC / IQ-Learn baselines): RL on the imitation reward, refit every iteration."""
    p = C.apply_presets(setup(params, workdir, device, threads, precision), preset or [])
    p = with_section(p, "ingest", dataset=dataset, with_actions=with_actions)
    p = with_section(p, "score", linear=linear)
    p = with_section(p, "train", steps=steps, algorithm=algorithm, rl=rl, eval_every=eval_every, eval_episodes=eval_episodes,
                     checkpoint_every=checkpoint_every, seed=seed)
    check_settings(p)
    start(p, minari_root)
    from smiling_pipeline import algorithms
    from smiling_pipeline.envs import make_env
    from smiling_pipeline.pipeline import ensure_ingested, ensure_pretrained
    from smiling_pipeline.report import FINAL_EVALS
    from smiling_pipeline.train import train as run_train

    if resume:  # a missing checkpoint is refused before any stage runs
        from smiling_pipeline.checkpoint import load_state

        load_state(workdir_for(p) / "train" / "checkpoint")
    data = ensure_ingested(p, needs_env=True, resuming=resume)
    make_env(data.meta, "training", p.train.termination).close()  # the environment matches the data, before pretraining
    spec = algorithms.get(p.train.algorithm)
    expert = ensure_pretrained(p, data, resuming=resume) if spec.needs_expert_model else None
    m = run_train(p, data, expert, workdir_for(p), resume=resume)
    budget = f"{m['gradient_steps' if spec.run else 'env_steps']} {spec.budget_unit}"
    typer.echo(f"{spec.label} on {m['dataset_id']}: normalized return {m['final_normalized_return']:.3f} after "
               f"{budget} (mean of the last {FINAL_EVALS} evaluations {m['final_mean_normalized_return']:.3f}, "
               f"best {m['best_normalized_return']:.3f}) -> {workdir_for(p) / 'train'}")


@app.command()
@handles_user_errors
def evaluate(
    policy: Annotated[Optional[str], typer.Option("--policy", help="SB3 .zip or MLflow model URI (default: the trained policy).")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="Minari id the policy imitates [params: ingest.dataset].")] = None,
    episodes: Annotated[Optional[int], typer.Option("--episodes", min=1, help="Episodes [params: evaluate.episodes].")] = None,
    video: Annotated[Optional[bool], typer.Option("--video/--no-video", help="Record the first episode (MUJOCO_GL=egl) [params: evaluate.video, on by default].")] = None,
    seed: SeedOpt = None,
    params: ParamsOpt = None,
    workdir: WorkdirOpt = None,
    minari_root: RootOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Run a policy with the true reward: raw return and normalized return (random 0, expert 1)."""
    p = setup(params, workdir, device)
    p = with_section(p, "ingest", dataset=dataset)
    p = with_section(p, "evaluate", episodes=episodes, seed=seed)
    check_settings(p)
    start(p, minari_root)
    from smiling_pipeline.evaluate import evaluate as run_evaluate
    from smiling_pipeline.evaluate import policy_ref, trained_records
    from smiling_pipeline.pipeline import ensure_ingested

    ref = policy_ref(workdir_for(p), policy)
    trained = None if policy else trained_records(workdir_for(p))
    m = run_evaluate(p, ensure_ingested(p, needs_env=True), workdir_for(p), ref, video, trained)
    typer.echo(f"{m['policy']} on {m['env_id']}: return {m['return_mean']:.1f} ± {m['return_std']:.1f} over "
               f"{m['episodes']} episodes, normalized return {m['normalized_return']:.3f} ({m['reference_source']})")
    if "registered_model" in m:
        typer.echo(f"registered as {m['registered_model']}" + (f", the new champion: {m['champion_uri']}"
                                                                if m["champion"] else ""))


@app.command()
@handles_user_errors
def report(
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Folder for the PNGs and markdown [default: reports, or reports/compare with --compare].")] = None,
    dataset: Annotated[Optional[str], typer.Option(
        "--dataset", help="Minari id of the run [params: ingest.dataset]; with --compare: only this dataset.")] = None,
    compare: Annotated[bool, typer.Option(
        "--compare", help="Compare all finished train runs in the MLflow store over seeds and algorithms.")] = False,
    exp_prefix: Annotated[Optional[str], typer.Option(
        "--exp-prefix", help="With --compare: only DVC experiments or sweep cells whose name starts with this, e.g. cmp-.")] = None,
    cells: Annotated[Optional[list[Path]], typer.Option(
        "--cells", help="With --compare: also read the records of finished sweep cells in this folder (sweep --backend "
        "local); repeat for several.")] = None,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="With --compare and --cells: read only the cells.")] = False,
    budget: Annotated[Optional[int], typer.Option(
        "--budget", min=1, help="With --compare: cut every run at this many env steps, to compare runs of different "
        "lengths at one budget (runs that ended earlier are left out).")] = None,
    params: ParamsOpt = None,
    workdir: WorkdirOpt = None,
    minari_root: RootOpt = None,
) -> None:
    """Plots and a markdown summary of one run, or (--compare) of SMILING vs baselines over seeds from MLflow."""
    if compare:
        from smiling_pipeline.compare import write_comparison
        from smiling_pipeline.tracking import tracking_uri

        for folder in cells or []:
            if not folder.is_dir():
                raise UserError(f"--cells {folder} is not a folder")
        uri = None if no_mlflow else tracking_uri()
        written = write_comparison(uri, out or Path("reports/compare"), dataset, exp_prefix, cells or [], budget)
        typer.echo(f"comparison written: {written}")
        return
    if exp_prefix or cells or no_mlflow or budget is not None:
        raise UserError("--exp-prefix, --cells, --no-mlflow and --budget only apply with --compare")
    p = with_section(setup(params, workdir), "ingest", dataset=dataset)
    start(p, minari_root)
    from smiling_pipeline.report import write_report
    from smiling_pipeline.tracking import attach_files

    summary = write_report(workdir_for(p), out or Path("reports"))
    run_id = json.loads((workdir_for(p) / "train_metrics" / "run.json").read_text())["mlflow_run_id"]
    files = [summary, *(summary.parent / name for name in ("learning_curve.png", "cost.png", "score_losses.png"))]
    logged = attach_files(run_id, [f for f in files if f.is_file()], "report")
    typer.echo(f"report written: {summary}" + (f"; attached to MLflow run {run_id}" if logged else ""))


@app.command()
@handles_user_errors
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep grid, e.g. sweeps/compare.yaml.")],
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="DVC queue workers / local cells at once.")] = 2,
    start: Annotated[bool, typer.Option("--start/--no-start", help="Start the DVC queue after queueing.")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the cells without running them.")] = False,
    backend: Annotated[str, typer.Option("--backend", help="dvc: queued DVC experiments | local: train processes here | "
                                         "ray: Ray tasks on a cluster. local and ray skip finished cells on a rerun.")] = "dvc",
    runs: Annotated[Path, typer.Option("--runs", help="local, ray: the cells' working folders (on each node).")] = Path("data/sweeps"),
    results: Annotated[Optional[Path], typer.Option(
        "--results", help="local, ray: where each finished cell's records go [default: reports/<sweep name>/cells].")] = None,
    address: Annotated[Optional[str], typer.Option(
        "--address", help="ray: auto | HOST:PORT | ray://HOST:10001 [default: a one-node cluster on this machine].")] = None,
    tracking_uri: Annotated[Optional[str], typer.Option(
        "--tracking-uri", help="ray: the MLflow server every node logs to [default: $MLFLOW_TRACKING_URI, else ./mlflow.db].")] = None,
    cpus_per_cell: Annotated[float, typer.Option("--cpus-per-cell", min=0.01, help="ray: CPUs each cell reserves.")] = 1.0,
    gpus_per_cell: Annotated[Optional[float], typer.Option(
        "--gpus-per-cell", min=0.0, help="ray: GPU fraction each cell reserves [default: 0.25 where the cluster has GPUs].")] = None,
    retries: Annotated[int, typer.Option("--retries", min=0, help="ray: retries of a cell whose worker or node died.")] = 3,
    params: ParamsOpt = None,
) -> None:
    """Run seeds x algorithms x variants x datasets: queued DVC experiments, train processes here, or Ray tasks."""
    from smiling_pipeline.sweep import cell_note, load_sweep, queue, run_local

    if backend not in ("dvc", "local", "ray"):
        raise UserError(f"--backend must be dvc, local or ray, got {backend!r}")
    if backend != "ray" and (address or tracking_uri):
        raise UserError("--address and --tracking-uri apply with --backend ray only")
    if backend in ("local", "ray"):
        out = results or Path("reports") / load_sweep(sweep_file).name / "cells"
        if backend == "ray":
            from smiling_pipeline.cluster import RayOptions, run_ray

            opts = RayOptions(address, tracking_uri, cpus_per_cell, gpus_per_cell, retries)
            done = run_ray(sweep_file, params, runs, out, opts, dry_run)
        else:
            done = run_local(sweep_file, params, jobs, runs, out, dry_run)
        resumed = 0
        for cell in done if dry_run else []:
            typer.echo(f"{cell.name}: " + " ".join(f"{k}={v}" for k, v in cell.overrides.items()))
            note = cell_note(runs / cell.name)  # this machine's working folders
            if note:
                resumed += note.startswith("resumes")
                typer.echo(f"  {note}")
        more = f" ({resumed} from checkpoints in {runs})" if resumed else ""
        typer.echo(f"{'would run' if dry_run else 'ran'} {len(done)} cells{more}; records in {out}")
        return
    cells = queue(sweep_file, params, jobs, start, dry_run)
    for cell in cells:
        typer.echo(f"{cell.name}: " + " ".join(f"{k}={v}" for k, v in cell.overrides.items()))
    verb = "would queue" if dry_run else "queued"
    typer.echo(f"{verb} {len(cells)} experiments" + ("" if dry_run or not start else
                                                      f"; {jobs} workers started, follow with `dvc queue status`"))


@app.command("tracking-server")
@handles_user_errors
def tracking_server(
    folder: Annotated[Path, typer.Option("--folder", help="PostgreSQL's data and the artifacts (kept between starts).")] = Path(".tracking"),
    port: Annotated[int, typer.Option("--port", help="The MLflow server's port on 127.0.0.1.")] = 5000,
    db_port: Annotated[int, typer.Option("--db-port", help="PostgreSQL's port on 127.0.0.1.")] = 5433,
) -> None:
    """A local MLflow tracking server on PostgreSQL for many concurrent writers (sweep --backend ray); Ctrl-C stops it."""
    import time

    from smiling_pipeline.server import tracking_server as serve
    from smiling_pipeline.sweep import on_sigterm

    signal.signal(signal.SIGTERM, on_sigterm)  # `kill` stops both servers too, not only Ctrl-C
    typer.echo(f"starting PostgreSQL ({folder / 'postgres'}, port {db_port}) and the MLflow server ...")
    with serve(folder, port, db_port) as url:
        typer.echo(f"MLflow tracking server at {url}: export MLFLOW_TRACKING_URI={url}; Ctrl-C stops it")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            typer.echo("stopping")


@app.command()
@handles_user_errors
def ui(
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Open the MLflow UI on the project's store (MLFLOW_TRACKING_URI, else <repo>/mlflow.db)."""
    from smiling_pipeline.server import open_ui, ui_links
    from smiling_pipeline.tracking import check_store, tracking_uri

    uri = tracking_uri()
    check_store(uri)
    if not uri.startswith("sqlite:"):
        raise UserError(f"{uri} is a tracking server: open it in a browser instead")
    for line in ui_links(uri, port):
        typer.echo(line)
    typer.echo(f"MLflow UI on {uri}: http://127.0.0.1:{port} (Ctrl-C stops it)", err=True)
    open_ui(uri, port)


def check_settings(p: C.Params) -> None:
    """Rules between settings, and an MLflow store that can be reached, before a stage writes anything."""
    from smiling_pipeline import algorithms
    from smiling_pipeline.tracking import check_store, tracking_uri

    algorithms.check(p)
    check_store(tracking_uri())


def run(args: Optional[list[str]] = None) -> int:
    """Run the CLI on ``args`` (default: the command line) and return its exit code; usage errors (bad or
    out-of-range options) are one ``error:`` line too."""
    try:
        from typer._click import exceptions as click_errors  # Typer >= 0.2x vendors click
    except ImportError:  # older Typer uses click itself
        from click import exceptions as click_errors  # type: ignore[no-redef]

    try:
        code = app(args=args, standalone_mode=False)
    except click_errors.ClickException as e:
        if e.format_message():  # empty when the help was shown for a bare `smiling-cli`
            typer.echo(f"error: {e.format_message()} (see --help)", err=True)
        return e.exit_code
    except typer.Abort:  # Ctrl-C at a prompt
        return 130
    return code if isinstance(code, int) else 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
