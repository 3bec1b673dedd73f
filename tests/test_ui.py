"""The MLflow UI in a real browser: headless Chromium (driven by Playwright) on ``mlflow ui`` over a store
holding a small study (two SMILING seeds, their pretrain and evaluate runs, the registered policy), checking
what a user sees: run names and the Dataset column, the learning curves, the compare page, the champion alias.

Needs Chromium at /usr/bin/chromium (Debian package ``chromium``; ``.ci/run`` installs it) and is skipped,
with that reason, only when it is missing. Screenshots go to the test's tmp folder; with
``SMILING_UI_SCREENSHOTS=1`` they are also copied to ``reports/ui/`` (``runs.png``, ``charts.png``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import DEMOS_DATASET, UNREACHABLE_ENDPOINT, run_cli
from test_train import write_params

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SEEDS = (0, 1)
TRAIN_RUNS = [f"smiling-state-only-s{s}" for s in SEEDS]
MODEL = DEMOS_DATASET.replace("/", "-") + "-policy"
WAIT = 60_000  # ms: generous, the machine may be busy
ML = "workflowType=machine_learning"  # MLflow 3.17's switch between the GenAI and the model-training UI


# The only reason to skip, decided before any training: no browser to drive.
pytestmark = [pytest.mark.timeout(300), pytest.mark.skipif(
    not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)),
    reason=f"Chromium not found at {CHROMIUM}: install the Debian package (apt-get install -y chromium); "
           ".ci/run does this before make test")]


@pytest.fixture(scope="module")
def study(recorded, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two SMILING seeds trained (each pretrains first) and evaluated into one sqlite store, the way a user
    runs a small study: ``train --seed 0``, ``train --seed 1``, then ``evaluate`` in each workdir."""
    import mlflow

    assert recorded["run"].exit_code == 0, recorded["run"].output
    base = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    params = write_params(base / "p.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(recorded["store"]))
        mp.setenv("HF_ENDPOINT", UNREACHABLE_ENDPOINT)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(base)
        for seed in SEEDS:
            run = run_cli(["train", "--params", params, "--seed", seed, "--workdir", base / f"seed{seed}"])
            assert run.exit_code == 0, run.output
        for seed in SEEDS:
            run = run_cli(["evaluate", "--params", params, "--workdir", base / f"seed{seed}"])
            assert run.exit_code == 0, run.output
        by_alias = run_cli(["evaluate", "--params", params, "--workdir", base / "alias", "--policy",
                            f"models:/{MODEL}@champion"])  # the registered champion, as a user would load it
        assert by_alias.exit_code == 0 and "normalized return" in by_alias.stdout, by_alias.output
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(DEMOS_DATASET)
    assert experiment is not None
    runs = {r.info.run_name: r.info.run_id for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("stage") == "train"}
    assert set(TRAIN_RUNS) <= set(runs), runs
    champion = client.get_model_version_by_alias(MODEL, "champion").version
    return {"uri": uri, "experiment": experiment.experiment_id, "train_runs": [runs[n] for n in TRAIN_RUNS],
            "champion": champion, "base": base}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(study) -> Iterator[str]:
    """``mlflow server`` on the study's store on a free port (one worker, no job runner), stopped at the end."""
    from smiling_pipeline.server import mlflow_server

    with mlflow_server(study["uri"], study["base"] / "artifacts", free_port(), workers=1) as url:
        yield url


@pytest.fixture(scope="module")
def browser(study):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh browser profile (no remembered UI settings), 1400x900."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(WAIT)
    yield context.new_page()
    context.close()


def screenshot(page, tmp_path: Path, name: str, publish: bool = False) -> Path:
    """Full-page screenshot into tmp_path; ``publish`` ones also into reports/ui/ with SMILING_UI_SCREENSHOTS=1
    (off by default, so test runs leave the checkout alone)."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if publish and os.environ.get("SMILING_UI_SCREENSHOTS") == "1":
        (REPO / "reports" / "ui").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, REPO / "reports" / "ui" / name)
    return path


def close_assistant(page) -> None:
    """Close the MLflow Assistant side panel (it takes a third of the width) when it is open; call it once
    the page has rendered."""
    close = page.get_by_role("button", name="Close", exact=True)
    if close.count():
        close.first.click()
        close.first.wait_for(state="detached")
        page.wait_for_timeout(1000)  # the page re-lays out to the full width


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "MLflow 3.17 ignores the experiment tag mlflow.experimentKind=custom_model_development: the UI takes the "
    "experiment kind from its global GenAI / Model training switch (?workflowType=, else localStorage "
    "mlflow.workflowType, default genai), so a fresh browser following the experiment link "
    "(#/experiments/<id>) lands on #/experiments/<id>/overview/usage?workflowType=genai, the GenAI overview"))
def test_experiment_link_opens_on_the_runs_table(ui, study, page):
    page.goto(ui + "/")
    page.get_by_role("link", name=DEMOS_DATASET, exact=True).first.click()
    page.wait_for_url(re.compile(rf"#/experiments/{study['experiment']}/\w"))
    assert f"/experiments/{study['experiment']}/runs" in page.url, f"opened {page.url}"
    page.get_by_role("columnheader", name="Run Name").first.wait_for()


def test_runs_table_shows_run_names_and_the_dataset(ui, study, page, tmp_path):
    page.goto(f"{ui}/#/experiments/{study['experiment']}?{ML}")
    page.wait_for_url(re.compile(rf"#/experiments/{study['experiment']}/runs\?"))
    dataset_header = page.get_by_role("columnheader", name="Dataset", exact=True).first
    dataset_header.wait_for()
    for name in TRAIN_RUNS:
        cell = page.get_by_role("gridcell").filter(has=page.get_by_role("link", name=name, exact=True))
        cell.wait_for()
        row = cell.locator("xpath=ancestor::*[@role='row'][1]").get_attribute("row-index")
        # the Dataset cell of the same row (ag-grid splits a row into a pinned and a scrolling part)
        dataset_cell = page.locator(f"[role=row][row-index='{row}'] [role=gridcell][col-id*=Dataset]")
        assert DEMOS_DATASET in dataset_cell.inner_text(), f"{name}: Dataset column {dataset_cell.inner_text()!r}"
    close_assistant(page)
    screenshot(page, tmp_path, "runs.png", publish=True)


def test_chart_view_draws_normalized_return_and_ds_divergence_for_both_runs(ui, study, page, tmp_path):
    page.goto(f"{ui}/#/experiments/{study['experiment']}/runs?{ML}&compareRunsMode=CHART")
    search = page.get_by_placeholder("Search metric charts")
    search.fill("normalized_return|ds_divergence")  # the chart filter takes a regular expression
    for metric in ("normalized_return", "ds_divergence"):
        card = page.get_by_test_id("experiment-view-compare-runs-card").filter(
            has=page.get_by_role("heading", name=metric, exact=True))
        card.wait_for()
        card.locator(".js-plotly-plot .scatterlayer .trace").first.wait_for()
        lines = card.locator(".scatterlayer .trace path.js-line").evaluate_all(
            "paths => paths.filter(p => (p.getAttribute('d') || '').includes('L')).length")
        assert lines >= len(TRAIN_RUNS), f"{metric}: {lines} curves drawn"  # evaluate runs are single points
        legend = card.inner_text()
        for name in TRAIN_RUNS:
            assert f"{name} ({metric})" in legend, f"{name} missing from the {metric} chart: {legend!r}"
    close_assistant(page)
    page.wait_for_timeout(1000)  # let the plots redraw at the new width
    screenshot(page, tmp_path, "charts.png", publish=True)


def test_compare_page_lists_the_parameters_of_both_runs(ui, study, page, tmp_path):
    runs = quote(json.dumps(study["train_runs"]))
    page.goto(f"{ui}/#/compare-runs?runs={runs}&experiments={quote(json.dumps([study['experiment']]))}")
    page.get_by_text("Comparing 2 Runs from 1 Experiment").wait_for()
    for name in TRAIN_RUNS:
        page.get_by_text(name, exact=True).first.wait_for()
    seed_row = page.get_by_role("row").filter(has=page.get_by_text("train.seed", exact=True))
    seed_row.first.wait_for()
    cells = [c.strip() for c in seed_row.first.inner_text().split("\t")]
    assert cells[0] == "train.seed" and cells[1:] == [str(s) for s in SEEDS], cells
    page.get_by_role("row").filter(has=page.get_by_text("train.algorithm", exact=True)).first.wait_for()
    screenshot(page, tmp_path, "compare.png")


def test_model_page_shows_the_champion_alias(ui, study, page, tmp_path):
    page.goto(f"{ui}/#/models/{MODEL}")
    page.get_by_role("heading", name=MODEL).first.wait_for()
    champion_row = page.get_by_role("row").filter(has=page.get_by_text(f"Version {study['champion']}", exact=True))
    champion_row.get_by_text("champion").wait_for()
    others = page.get_by_role("row").filter(has_text="Version").filter(has_not_text=f"Version {study['champion']}")
    assert "champion" not in " ".join(others.all_inner_texts())
    screenshot(page, tmp_path, "model.png")
