"""Stage 2: pre-train the expert diffusion score model on the ingested expert rows."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from stable_baselines3.common.utils import set_random_seed

from smiling_pipeline import tracking
from smiling_pipeline.config import Params, as_dict
from smiling_pipeline.demos import minari_root
from smiling_pipeline.errors import UserError
from smiling_pipeline.ingest import ExpertData
from smiling_pipeline.io import write_json
from smiling_pipeline.report import plot_curves
from smiling_pipeline.runtime import dtype_name, resolve_device, resolve_precision
from smiling_pipeline.score import FitSettings, ScoreModel, fit, load_model, save_model

log = logging.getLogger(__name__)
MODEL_FILE = "expert_score.pt"


def pretrain(p: Params, data: ExpertData, out: Path) -> dict[str, Any]:
    """Fit the expert score model on ``data``; write it to ``out`` and log curves and model to MLflow."""
    cfg = p.pretrain
    device = resolve_device(p.runtime.device)
    dtype = resolve_precision(p.runtime.precision, device)
    set_random_seed(cfg.seed)
    model = ScoreModel(data.dim, p.score, data.mean, data.std).to(device)
    dataset_id = data.meta["dataset_id"]
    settings = {"score": as_dict(p.score), "pretrain": as_dict(cfg), "ingest": as_dict(p.ingest),
                "runtime": {"precision": dtype_name(dtype)}}
    tags = tracking.run_tags({"seed": cfg.seed, "algorithm": "smiling", "linear": p.score.linear,
                              "variant": "state-action" if data.meta["with_actions"] else "state-only"})
    with tracking.run("pretrain", dataset_id, settings, tags) as run_id:
        tracking.log_dataset(data.meta, data.train, minari_root() / dataset_id, "training")
        _, history = fit(
            model, data.train,
            FitSettings(cfg.steps, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.eval_every, dtype),
            seed=cfg.seed, val=data.val, progress=True,
            on_eval=_log_losses,
        )
        save_model(model, out / MODEL_FILE, extra={"dataset_id": dataset_id, "content_hash": data.meta["content_hash"],
                                                   "made_with": made_with(p)})
        plot = plot_curves(out / "loss.png", f"Expert score model: {dataset_id}", "step",
                           "denoising loss", {"train": history.train, "validation": history.val}, yscale="log")
        tracking.log_artifact(plot)
        uri = tracking.log_torch_model(model.cpu(), "expert_score_model")
        metrics: dict[str, Any] = {
            "final_train_loss": history.train[-1][1],
            "final_val_loss": history.val[-1][1] if history.val else None,
            "steps": cfg.steps,
        }
        info = {"dataset_id": dataset_id, "model_uri": uri, "mlflow_run_id": run_id}
        write_json(out / "metrics.json", metrics)
        write_json(out / "run.json", info)
        write_json(out / "loss.json", {"train": history.train, "val": history.val})
    return {**metrics, **info}


def _log_losses(step: int, train_loss: float, val_loss: Optional[float]) -> None:
    tracking.log_metrics({"train_loss": train_loss, **({"val_loss": val_loss} if val_loss is not None else {})}, step)


def made_with(p: Params) -> dict[str, Any]:
    """The settings an expert score model depends on (all of ``score`` and ``pretrain`` but the logging cadence),
    recorded with it so it is never reused under other ones."""
    return {"score": as_dict(p.score), "pretrain": {k: v for k, v in as_dict(p.pretrain).items() if k != "eval_every"}}


def stale_settings(extra: dict[str, Any], p: Params) -> list[str]:
    """The settings (``section.key``) the model with record ``extra`` was made with that differ from ``p``'s."""
    before, now = extra.get("made_with"), made_with(p)
    if before is None:
        return ["(not recorded: made by an older version)"]
    return [f"{s}.{k}" for s in now for k in now[s] if before.get(s, {}).get(k) != now[s][k]]


def load_expert_model(path: Path, data: ExpertData, device: str) -> ScoreModel:
    """The pretrained expert model at ``path``, refused if it was fitted on other data than ``data``."""
    model, extra = load_model(path, resolve_device(device))
    if model.dim != data.dim or extra.get("content_hash") != data.meta["content_hash"]:
        raise UserError(f"expert score model {path} was trained on other data ({extra.get('dataset_id')}, input dim "
                        f"{model.dim}) than the ingested {data.meta['dataset_id']} (dim {data.dim}); run pretrain again")
    return model
