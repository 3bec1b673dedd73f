"""The chaining of stages, in one place: a command that needs an earlier stage's output runs that
stage first when the output is missing. Stage functions themselves take inputs and return outputs.

The stages (and with them torch, SB3, Minari) are imported where they are run, so that the CLI, which
imports this module, parses its options and refuses bad input before any heavy import."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from smiling_pipeline.config import Params
from smiling_pipeline.demos import load_dataset, resolve_dataset, use_minari_root
from smiling_pipeline.errors import UserError
from smiling_pipeline.io import check_writable

if TYPE_CHECKING:
    from smiling_pipeline.ingest import ExpertData
    from smiling_pipeline.score import ScoreModel

log = logging.getLogger(__name__)


def slug(dataset: str) -> str:
    """A folder name for a dataset id (``mujoco/humanoid`` -> ``mujoco-humanoid``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset).strip("-")


def workdir(p: Params) -> Path:
    """``runtime.workdir``, else ``data/<dataset>`` so different datasets never share outputs."""
    return Path(p.runtime.workdir) if p.runtime.workdir else Path("data") / slug(p.ingest.dataset)


def prepare(p: Params, minari_root: Path | None = None) -> None:
    """Point Minari at ``minari_root``, else ``$MINARI_DATASETS_PATH``, else ``runtime.minari_root``, and set
    torch threads: what a process running stages (a command, a sweep cell on a cluster node) does first."""
    from smiling_pipeline.runtime import set_threads

    use_minari_root(minari_root or os.environ.get("MINARI_DATASETS_PATH") or p.runtime.minari_root)
    set_threads(p.runtime.threads)


def _refuse_redo(resuming: bool, what: str) -> None:
    """A resumed run continues on the outputs its checkpoint was made with: redoing a stage first would
    replace them and then be refused by the checkpoint, so it is refused before anything is written."""
    if resuming:
        raise UserError(f"cannot resume: {what}, so the checkpoint was made with other inputs; resume with the "
                        "settings it was made with, or train without --resume")


def ensure_ingested(p: Params, needs_env: bool = False, resuming: bool = False) -> ExpertData:
    """The ingested expert data for ``p.ingest``; ingests first when missing or made from another dataset.
    ``needs_env``: the command runs the dataset's environment, so a dataset without an environment spec
    is refused before anything is written. ``resuming``: refuse instead of ingesting (a resumed run)."""
    from smiling_pipeline.envs import check_has_env
    from smiling_pipeline.ingest import ingest, load_expert_data

    check_writable(workdir(p))
    folder = workdir(p) / "ingest"
    if (folder / "meta.json").is_file():
        data = load_expert_data(folder)
        same = p.ingest.dataset in (data.meta.get("requested"), data.meta.get("dataset_id"))
        if same and data.meta.get("with_actions") == p.ingest.with_actions:
            if needs_env:
                check_has_env(data.meta.get("env_spec"), data.meta["dataset_id"])
            return data
        problem = "was for another dataset or variant"
    else:
        problem = "was missing"
    _refuse_redo(resuming, f"the ingested data in {folder} {problem}")
    dataset_id = resolve_dataset(p.ingest.dataset)
    if needs_env:
        check_has_env(load_dataset(dataset_id).spec.env_spec, dataset_id)
    ingest(p.ingest, folder)
    log.info(f"ingested {p.ingest.dataset} into {folder} first: the ingested data there {problem}")  # after: a
    return load_expert_data(folder)  # refused dataset gets its one error line alone


def ensure_pretrained(p: Params, data: ExpertData, resuming: bool = False) -> ScoreModel:
    """The expert score model for ``data`` and ``p``'s score and pretrain settings, pretraining first when it
    is missing or was made from other data or with other settings (it is never reused under other ones).
    ``resuming``: refuse instead of pretraining (a resumed run)."""
    from smiling_pipeline.pretrain import MODEL_FILE, load_expert_model, pretrain, stale_settings
    from smiling_pipeline.score import load_model

    path = workdir(p) / "pretrain" / MODEL_FILE
    if not path.is_file():
        _refuse_redo(resuming, f"there is no expert score model at {path}")
        log.info(f"no expert score model at {path}; pretraining first")
        pretrain(p, data, path.parent)
    else:
        extra = load_model(path)[1]
        changed = stale_settings(extra, p)
        if extra.get("content_hash") != data.meta["content_hash"]:
            changed.insert(0, f"expert data {extra.get('dataset_id')}")
        if changed:
            _refuse_redo(resuming, f"the expert score model at {path} was made with other settings or data "
                                   f"({', '.join(changed)})")
            log.info(f"the expert score model at {path} was made with other settings or data ({', '.join(changed)}); "
                     "pretraining again")
            pretrain(p, data, path.parent)
    return load_expert_model(path, data, p.runtime.device)
