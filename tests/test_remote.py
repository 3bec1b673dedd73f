"""Remote Minari datasets end to end, against a loopback stand-in for the Hugging Face Hub.

The stand-in is a real HTTP server on 127.0.0.1 (a random port) that serves, under the
``farama-minari`` organisation, a dataset repository laid out as Minari's remote lays out its own:
a repository per top namespace (``mujoco``), its ``namespace_metadata.json`` listing the datasets and
sub-namespaces, and each dataset's ``data/metadata.json`` and ``data/main_data.hdf5``. The datasets
are real Minari datasets (two versions of one InvertedPendulum-v5 dataset, recorded with Minari's
``DataCollector``, without reference scores like Minari's own remote ones, Farama-Foundation/Minari#323).
It answers just the Hub endpoints that Minari 0.5.4 calls through ``huggingface_hub``: the dataset
search (``/api/datasets``), repository info at a revision, the recursive tree listing, and
``HEAD``/``GET`` of ``resolve/<revision>/<file>`` with the ``X-Repo-Commit`` and ``ETag`` headers the
client requires. The CLI runs as a subprocess with ``HF_ENDPOINT`` pointed at the server, as a user
runs it (the client reads ``HF_ENDPOINT`` once, when it is imported).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pytest
import yaml
from conftest import make_dataset, minari_store, terminal_lines, tree

REPO = Path(__file__).resolve().parents[1]
ORG = "farama-minari"
BARE = "mujoco/invertedpendulum"
NEWEST = "mujoco/invertedpendulum/expert-v1"
EPISODES = {"mujoco/invertedpendulum/expert-v0": 3, NEWEST: 4}  # v1 is told apart by its episode count
HDF5 = "invertedpendulum/expert-v1/data/main_data.hdf5"  # the newest version's data, as a path in the repo


class Hub(ThreadingHTTPServer):
    """The dataset repositories of one organisation, read from folders (``repo name -> folder``).

    ``cut`` holds repo paths whose every download the hub cuts off half-way, ``log`` every request as
    ``METHOD path``.
    """

    daemon_threads = True

    def __init__(self, repos: dict[str, Path]) -> None:
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.repos = repos
        self.files = {name: {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
                      for name, folder in repos.items()}
        self.commits = {name: hashlib.sha1(b"".join(blob_id(p).encode() for p in files.values())).hexdigest()
                        for name, files in self.files.items()}
        self.cut: set[str] = set()
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def blob_id(path: Path) -> str:
    """A file's git blob id, what the Hub gives as its ``oid`` and ``ETag``."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubHandler(BaseHTTPRequestHandler):
    """The Hub endpoints Minari 0.5.4's Hugging Face remote calls, nothing more."""

    server: Hub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        """Requests go to ``server.log``, not stderr."""

    def do_HEAD(self) -> None:
        self.answer(body=False)

    def do_GET(self) -> None:
        self.answer(body=True)

    def answer(self, body: bool) -> None:
        url = urlparse(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        self.server.log.append(f"{self.command} {path}")
        parts = path.strip("/").split("/")
        if path == "/api/datasets":
            self.datasets(query)
        elif parts[:2] == ["api", "datasets"] and len(parts) >= 5 and parts[4] in ("revision", "tree"):
            self.repo_api(parts[2], parts[3], parts[4], parts[5] if len(parts) > 5 else "main")
        elif parts[0] == "datasets" and len(parts) > 5 and parts[3] == "resolve":
            self.resolve(parts[1], parts[2], parts[4], "/".join(parts[5:]), body)
        else:
            self.error(404, "RepoNotFound")

    def datasets(self, query: dict[str, list[str]]) -> None:
        """``/api/datasets?author=ORG&search=NAME``: the organisation's repositories whose name holds NAME."""
        words = query.get("search", [])
        found = [{"id": f"{ORG}/{name}", "sha": self.server.commits[name], "private": False}
                 for name in self.server.repos if query.get("author") == [ORG] and all(w in name for w in words)]
        self.json(found)

    def repo_api(self, org: str, name: str, what: str, revision: str) -> None:
        """Repository info at a revision (its commit) and its recursive tree listing."""
        if org != ORG or name not in self.server.repos:
            return self.error(404, "RepoNotFound")
        commit = self.server.commits[name]
        if revision not in ("main", commit):
            return self.error(404, "RevisionNotFound")
        files = self.server.files[name]
        if what == "revision":
            return self.json({"id": f"{ORG}/{name}", "sha": commit, "private": False,
                              "siblings": [{"rfilename": f} for f in files]})
        folders = sorted({"/".join(f.split("/")[:i]) for f in files for i in range(1, f.count("/") + 1)})
        self.json([{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest()} for d in folders]
                  + [{"type": "file", "path": f, "size": p.stat().st_size, "oid": blob_id(p)} for f, p in files.items()])

    def resolve(self, org: str, name: str, revision: str, file: str, body: bool) -> None:
        """A file at a revision, with the headers ``hf_hub_download`` requires; a file in ``cut`` is sent
        half-way, then the connection drops."""
        if org != ORG or name not in self.server.repos:
            return self.error(404, "RepoNotFound")
        commit = self.server.commits[name]
        if revision not in ("main", commit):
            return self.error(404, "RevisionNotFound")
        path = self.server.files[name].get(file)
        if path is None:
            return self.error(404, "EntryNotFound", {"X-Repo-Commit": commit})
        cut = body and file in self.server.cut
        data = path.read_bytes()
        self.send_response(200)
        for key, value in {"X-Repo-Commit": commit, "ETag": f'"{blob_id(path)}"', "Content-Length": str(len(data)),
                           "Content-Type": "application/octet-stream"}.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data[: len(data) // 2] if cut else data)
            if cut:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

    def json(self, value: object) -> None:
        data = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status: int, code: str, headers: dict[str, str] | None = None) -> None:
        """The Hub's error answer: ``X-Error-Code`` tells the client what was not found."""
        data = json.dumps({"error": code}).encode()
        self.send_response(status)
        for key, value in {"X-Error-Code": code, **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def publish(store: Path, namespace: str, out: Path) -> Path:
    """The repository Minari's upload makes of a top namespace of ``store``: its folder, with the namespace
    metadata at the top listing every dataset and sub-namespace below it."""
    repo = shutil.copytree(store / namespace, out / namespace)
    datasets = sorted(f"{namespace}/{p.parent.parent.relative_to(repo).as_posix()}" for p in repo.rglob("data/metadata.json"))
    namespaces = sorted(f"{namespace}/{p.parent.relative_to(repo).as_posix()}" for p in repo.rglob("*/namespace_metadata.json"))
    top = repo / "namespace_metadata.json"
    top.write_text(json.dumps({**json.loads(top.read_text()), "datasets": datasets, "namespaces": namespaces}))
    return repo


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """The stand-in Hub, serving both versions of ``mujoco/invertedpendulum/expert`` (no reference scores)."""
    base = tmp_path_factory.mktemp("hub")
    for dataset_id, episodes in EPISODES.items():
        make_dataset(base / "made", dataset_id, episodes=episodes, max_steps=40, seed=episodes,
                     ref_min_score=None, ref_max_score=None)
    server = Hub({"mujoco": publish(base / "made", "mujoco", base / "repos")})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def user(hub: Hub, tmp_path: Path) -> dict[str, str]:
    """A user's environment: an empty Minari store and Hugging Face cache, the Hub at the stand-in."""
    hub.cut.clear()
    hub.log.clear()
    return {"MINARI_DATASETS_PATH": str(tmp_path / "store"), "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.url}


def cli(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess:
    """``smiling-cli args`` as a fresh process of this checkout, in the test's folder (its MLflow store)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "smiling_pipeline.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": path, **env})


def one_error_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """The CLI's error contract: exit 1, one ``error:`` line on stderr, no traceback."""
    lines = terminal_lines(proc.stderr)
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def downloaded(hub: Hub) -> list[str]:
    """Dataset files the hub sent in full or in part (GET of a resolve URL), in request order."""
    return [entry.split("/resolve/", 1)[1].split("/", 1)[1] for entry in hub.log
            if entry.startswith("GET ") and "/resolve/" in entry and "/data/" in entry]


def local_episodes(store: Path, dataset_id: str) -> int:
    """Episodes of a dataset in ``store``, read by Minari itself."""
    import minari

    with minari_store(store):
        return minari.load_dataset(dataset_id).total_episodes


def demo_return(store: Path, dataset_id: str) -> float:
    """Mean return of a dataset's episodes, read by Minari itself: the fallback's expert reference."""
    import minari
    import numpy as np

    with minari_store(store):
        return float(np.mean([e.rewards.sum() for e in minari.load_dataset(dataset_id).iterate_episodes()]))


def test_a_bare_id_resolves_to_the_newest_remote_version_downloads_ingests_and_pretrains(hub, user, tmp_path):
    store = Path(user["MINARI_DATASETS_PATH"])
    proc = cli(user, "ingest", "--dataset", BARE, "--workdir", tmp_path / "w")
    assert proc.returncode == 0, proc.stderr
    assert f"ingested {NEWEST}:" in proc.stdout
    assert f"downloading {NEWEST} from the Minari remote" in proc.stderr
    assert "Fetching 2 files" in proc.stderr  # the Hugging Face client's progress bar (bytes too, in a terminal)
    assert local_episodes(store, NEWEST) == EPISODES[NEWEST]
    assert not (store / "mujoco/invertedpendulum/expert-v0").exists()
    assert not [p for p in store.iterdir() if p.name.startswith(".")]  # no staging left behind
    assert [f for f in downloaded(hub) if f.endswith(".hdf5")] == [HDF5]  # only the newest version's data, once

    hub.log.clear()
    params = tmp_path / "tiny.yaml"
    params.write_text(yaml.safe_dump({"pretrain": {"steps": 20, "batch_size": 32}, "score": {"hidden": 16}}))
    proc = cli(user, "pretrain", "--dataset", BARE, "--workdir", tmp_path / "w", "--params", params, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "after 20 steps" in proc.stdout
    assert hub.log == []  # resolved in the local store: the hub is not asked again


def test_datasets_lists_the_newest_remote_versions_without_reference_scores(hub, user):
    proc = cli(user, "datasets", "--remote")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("remote")]
    assert [r[1] for r in rows] == [NEWEST]
    assert rows[0][2] == str(EPISODES[NEWEST]) and rows[0][-2:] == ["-", "-"]  # no ref_min_score / ref_max_score


def test_training_on_a_remote_dataset_normalizes_with_measured_references_and_says_so_once(hub, user, tmp_path):
    params = tmp_path / "tiny.yaml"
    params.write_text(yaml.safe_dump({
        "pretrain": {"steps": 20}, "train": {"steps": 200, "learning_starts": 100, "iteration_steps": 100,
                                             "learner_fit_steps": 5, "eval_every": 200, "eval_episodes": 1,
                                             "checkpoint_every": 200, "net": [16, 16]}}))
    proc = cli(user, "train", "--dataset", f"{BARE}/expert", "--workdir", tmp_path / "w", "--params", params,
               "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "pretraining first" in proc.stderr and f"SMILING on {NEWEST}: normalized return" in proc.stdout
    notes = [line for line in terminal_lines(proc.stderr) if "normalized return uses" in line]
    assert len(notes) == 1 and "fallback: random policy measured over 20 episodes" in notes[0], proc.stderr
    assert f"expert {demo_return(Path(user['MINARI_DATASETS_PATH']), NEWEST):.1f} -> 1" in notes[0]


def test_an_interrupted_download_leaves_nothing_in_the_store_and_a_rerun_succeeds(hub, user, tmp_path):
    store = Path(user["MINARI_DATASETS_PATH"])
    hub.cut.add(HDF5)
    proc = cli(user, "ingest", "--dataset", BARE, "--workdir", tmp_path / "w")
    lines = terminal_lines(proc.stderr)  # the download's note and progress bar, then the error
    assert proc.returncode == 1 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], proc.stderr
    assert f"downloading {NEWEST} failed: peer closed connection" in lines[-1]
    assert downloaded(hub).count(HDF5) > 1  # the client tried again (from the start), then gave up
    assert tree(store) == set()  # not the half file, nor the namespace metadata that came before it
    assert not (tmp_path / "w").exists()

    hub.cut.clear()
    proc = cli(user, "ingest", "--dataset", BARE, "--workdir", tmp_path / "w")
    assert proc.returncode == 0, proc.stderr
    assert local_episodes(store, NEWEST) == EPISODES[NEWEST]


@pytest.mark.parametrize("dataset", ["mujoco/nothing", "mujoco/invertedpendulum/medium-v0", "elsewhere/thing"])
def test_an_id_absent_on_the_hub_is_one_error_line(hub, user, tmp_path, dataset):
    one_error_line(cli(user, "ingest", "--dataset", dataset, "--workdir", tmp_path / "w"), repr(dataset),
                   "nor on the remote")
    assert not any(p.is_file() for p in Path(user["MINARI_DATASETS_PATH"]).rglob("*"))


def test_an_unreachable_hub_is_one_error_line_in_seconds(user, tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    proc = cli({**user, "HF_ENDPOINT": f"http://127.0.0.1:{port}"}, "ingest", "--dataset", BARE,
               "--workdir", tmp_path / "w")
    elapsed = time.monotonic() - start
    one_error_line(proc, repr(BARE), "unreachable", "smiling-cli demos")
    # against a Python start with the same imports, timed now (~3 s on a quiet machine, more under load): the
    # client's own timeouts are 10 s a request, retried, so waiting on them would add 10 s or more
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", "import smiling_pipeline.cli, minari, huggingface_hub"], check=True,
                   env={**os.environ, **user})
    start_up = time.monotonic() - start
    assert elapsed < start_up + 7, f"took {elapsed:.1f} s, a start with the imports {start_up:.1f} s"
