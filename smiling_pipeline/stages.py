"""Pipeline stages as functions of (settings, dataset): each writes only below its own output folder
and to MLflow, and runs the stages it needs first when their outputs are missing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Optional


from smiling_pipeline import tracking
from smiling_pipeline.config import Params, as_dict
from smiling_pipeline.errors import UserError
from smiling_pipeline.ingest import ExpertData, ingest, load_expert_data
from smiling_pipeline.io import check_writable, write_json
from smiling_pipeline.report import plot_curves
from smiling_pipeline.runtime import dtype_name, resolve_device, resolve_precision, seed_everything
from smiling_pipeline.score import FitSettings, ScoreModel, fit, load_model, save_model

Say = Callable[[str], None]


def slug(dataset: str) -> str:
    """A folder name for a dataset id (``mujoco/humanoid`` -> ``mujoco-humanoid``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset).strip("-")


def workdir(p: Params) -> Path:
    """``runtime.workdir``, else ``data/<dataset>`` so different datasets never share outputs."""
    return Path(p.runtime.workdir) if p.runtime.workdir else Path("data") / slug(p.ingest.dataset)


def ensure_ingested(p: Params, say: Say) -> ExpertData:
    """The ingested expert data for ``p.ingest``; ingests first when missing or made from another dataset."""
    check_writable(workdir(p))
    folder = workdir(p) / "ingest"
    if (folder / "meta.json").is_file():
        data = load_expert_data(folder)
        same = p.ingest.dataset in (data.meta.get("requested"), data.meta.get("dataset_id"))
        if same and data.meta.get("with_actions") == p.ingest.with_actions:
            return data
        say(f"ingested data in {folder} is for another dataset or variant; ingesting {p.ingest.dataset} again")
    else:
        say(f"no ingested data in {folder}; ingesting {p.ingest.dataset} first")
    ingest(p.ingest, folder)
    return load_expert_data(folder)


def _dvc_tags(extra: dict[str, Any]) -> dict[str, str]:
    import os

    tags = {k: str(v) for k, v in extra.items()}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("SMILING_SWEEP_CELL"):  # set by `smiling-cli sweep --backend local`
        tags["sweep_cell"] = os.environ["SMILING_SWEEP_CELL"]
    return tags


def pretrain(p: Params, say: Say) -> dict[str, Any]:
    """Fit the expert score model on the ingested expert data; log curves and the model to MLflow."""
    cfg = p.pretrain
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.eval_every < 1:
        raise UserError("pretrain.steps, batch_size and eval_every must be at least 1")
    tracking.check_store(tracking.tracking_uri())
    data = ensure_ingested(p, say)
    device = resolve_device(p.runtime.device)
    dtype = resolve_precision(p.runtime.precision, device)
    seed_everything(cfg.seed)
    model = ScoreModel(data.dim, p.score, data.mean, data.std).to(device)
    out = workdir(p) / "pretrain"
    dataset_id = data.meta["dataset_id"]
    settings = {"score": as_dict(p.score), "pretrain": as_dict(cfg), "ingest": as_dict(p.ingest),
                "runtime": {"precision": dtype_name(dtype)}}
    with tracking.run("pretrain", dataset_id, settings, _dvc_tags({"seed": cfg.seed, "algorithm": "smiling"})) as run:
        _, history = fit(
            model, data.train,
            FitSettings(cfg.steps, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.eval_every, dtype),
            seed=cfg.seed, val=data.val, progress=True,
            on_eval=lambda step, tl, vl: tracking.log_metrics({"train_loss": tl, "val_loss": vl}, step),
        )
        save_model(model, out / "expert_score.pt", extra={"dataset_id": dataset_id, "content_hash": data.meta["content_hash"]})
        plot = plot_curves(out / "loss.png", f"Expert score model: {dataset_id}", "step",
                           "denoising loss", {"train": history.train, "validation": history.val}, yscale="log")
        import mlflow

        mlflow.log_artifact(str(plot))
        uri = tracking.log_torch_model(model.cpu(), "expert_score_model")
        metrics = {
            "final_train_loss": history.train[-1][1],
            "final_val_loss": history.val[-1][1] if history.val else None,
            "steps": cfg.steps,
        }
        info = {"dataset_id": dataset_id, "model_uri": uri, "mlflow_run_id": run.info.run_id}
        write_json(out / "metrics.json", metrics)
        write_json(out / "run.json", info)
        write_json(out / "loss.json", {"train": history.train, "val": history.val})
    return {**metrics, **info}


def load_expert_model(p: Params, say: Say) -> tuple[ExpertData, ScoreModel]:
    """The ingested data and the pretrained expert model, pretraining first when it is missing."""
    data = ensure_ingested(p, say)
    path = workdir(p) / "pretrain" / "expert_score.pt"
    if not path.is_file():
        say(f"no expert score model at {path}; pretraining first")
        pretrain(p, say)
    model, extra = load_model(path, resolve_device(p.runtime.device))
    if model.dim != data.dim or extra.get("content_hash") != data.meta["content_hash"]:
        raise UserError(f"expert score model {path} was trained on other data ({extra.get('dataset_id')}, input dim "
                        f"{model.dim}) than {workdir(p) / 'ingest'} ({data.meta['dataset_id']}, dim {data.dim}); "
                        "run pretrain again")
    return data, model


def evaluate(p: Params, say: Say, policy_ref: Optional[str] = None, video: Optional[bool] = None) -> dict[str, Any]:
    """Evaluate a policy (default: the trained one) with the true reward; log the normalized return."""
    from smiling_pipeline.evaluate import evaluate_policy, load_policy, policy_fn, references

    cfg = p.evaluate
    if cfg.episodes < 1:
        raise UserError("evaluate.episodes must be at least 1")
    tracking.check_store(tracking.tracking_uri())
    data = ensure_ingested(p, say)
    env_id = data.meta["env_id"]
    ref = policy_ref or str(workdir(p) / "train" / "policy.zip")
    policy = load_policy(ref, "sac" if p.train.algorithm == "bc" else p.train.rl, str(resolve_device(p.runtime.device)))
    act = policy_fn(policy, env_id)
    refs = references(data.meta, env_id)
    out = workdir(p) / "evaluate"
    record = cfg.video if video is None else video
    dataset_id = data.meta["dataset_id"]
    tags = _dvc_tags({"seed": p.train.seed, "algorithm": p.train.algorithm, "policy": ref,
                      "variant": "state-action" if data.meta["with_actions"] else "state-only"})
    with tracking.run("evaluate", dataset_id, {"evaluate": as_dict(cfg), "policy": ref}, tags) as run:
        result = evaluate_policy(act, env_id, refs, cfg.episodes, cfg.seed, video_dir=out / "video" if record else None)
        tracking.log_metrics({"normalized_return": result.normalized_return, "return_mean": result.return_mean,
                              "return_std": result.return_std}, step=0)
        numbers = {k: v for k, v in result.as_dict().items() if k != "reference_source"}
        metrics = {**numbers, "reference_random": refs.random, "reference_expert": refs.expert}
        info = {"dataset_id": dataset_id, "env_id": env_id, "policy": ref, "mlflow_run_id": run.info.run_id,
                "reference_source": refs.source}
        write_json(out / "metrics.json", metrics)
        write_json(out / "run.json", info)
    return {**metrics, **info}
