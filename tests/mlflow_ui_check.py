"""What `mlflow ui` shows of a sweep: `python tests/mlflow_ui_check.py mlflow.db quick [--pages DIR]`.

Starts `mlflow server` on a free loopback port against the SQLite database, asks it for the sweep's
experiment, its one parent run, the parent's child runs, their provenance and data sets, per-epoch
metric histories and artifacts (the same endpoints the UI's pages call), then stops it. With `--pages`
headless Chromium also loads the UI's pages as a user opens them, saves a screenshot of each in DIR
and checks their text: the experiment opens on its runs, whose Source and Dataset cells are filled,
and each finished trial's page shows its commit, dirty flag, versions, device and data digest.
Exits 1 naming the first problem, 2 when the database or Chromium is missing.

MLflow 3.17's UI opens an experiment as the sidebar's workflow switch says (GenAI by default, kept in
the browser); the experiment's `mlflow.experimentKind` tag does not override it, so the pages are
opened with the switch's `workflowType=machine_learning` in the link, as the README's link does.
"""
from __future__ import annotations

import argparse
import contextlib
import html.parser
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

EPOCH_METRICS = ("train/loss", "train/recon", "train/kl", "kl_beta", "tfr", "lr", "val/psnr", "val/psnr_1step",
                 "epoch_seconds")
ARTIFACTS = ("val_psnr_per_frame.csv", "val_rollout.gif", "checkpoints/best.ckpt")
START_TIMEOUT_S = 180
TRAINING_KIND = "custom_model_development"  # the UI's "Machine learning" experiment kind
VERSIONS = ("python", "torch", "cuda", "optuna", "mlflow")
DEVICE_SECONDS = "cost/device_seconds"
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
PAGE_BUDGET_MS = 30_000  # virtual time a page gets; Chromium pauses it while requests are pending
PAGE_TIMEOUT_S = 300  # a page loads in about 4 s on an idle 2-core machine, many times slower under load
WINDOW = "1920,1080"
# the runs table as its link opens it, sorted by name so that child runs are rows of their own, not folded
# into their parent's
RUNS_PAGE = "/#/experiments/{id}/runs?workflowType=machine_learning&orderByKey=tags.%60mlflow.runName%60&orderByAsc=true"
EXPERIMENT_PAGE = "/#/experiments/{id}?workflowType=machine_learning"
RUN_PAGE = "/#/experiments/{id}/runs/{run}?workflowType=machine_learning"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(db: Path | str, artifacts: Path | None = None) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 for the duration of the block; yields its base URL.

    `db` is an SQLite file, or a backend store URI (postgresql://...) with `artifacts` the folder it serves
    artifacts from (else the SQLite file's folder's mlartifacts/).
    """
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    backend = db if isinstance(db, str) else f"sqlite:///{db.resolve()}"
    folder = artifacts.parent if artifacts is not None else Path(db).resolve().parent
    command = [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", backend]
    if artifacts is not None:
        command += ["--artifacts-destination", str(artifacts)]
    with tempfile.TemporaryFile("w+") as output:
        server = subprocess.Popen(command, cwd=folder, stdout=output, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_until_up(url, server, output)
            yield url
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def _wait_until_up(url: str, server: subprocess.Popen, output) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            output.seek(0)
            raise RuntimeError(f"mlflow server exited with {server.returncode}:\n{output.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not answer on {url} within {START_TIMEOUT_S} s")


def get(url: str, endpoint: str, **query: Any) -> Any:
    """GET `endpoint` with `query`: the JSON of an /api/ endpoint, the bytes of anything else."""
    with urllib.request.urlopen(f"{url}{endpoint}?{urllib.parse.urlencode(query)}", timeout=30) as response:
        body = response.read()
    return json.loads(body) if endpoint.startswith("/api/") else body


def post(url: str, path: str, payload: dict) -> Any:
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def search_runs(url: str, experiment_id: str, filter_string: str) -> list[dict]:
    runs, token = [], None
    while True:
        payload = {"experiment_ids": [experiment_id], "filter": filter_string, "max_results": 1000}
        if token:
            payload["page_token"] = token
        page = post(url, "/api/2.0/mlflow/runs/search", payload)
        runs += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            return runs


def tags_of(run: dict) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}


def datasets_of(run: dict) -> list[str]:
    """The run's data sets as the UI labels them: `name (digest)`."""
    return [f"{found['dataset']['name']} ({found['dataset']['digest']})"
            for found in run.get("inputs", {}).get("dataset_inputs", [])]


def check_provenance(run: dict, trains: bool) -> None:
    """Source, git, version and host tags as the UI shows them; a trial's run also names its device."""
    run_id, tags = run["info"]["run_id"], tags_of(run)
    assert tags.get("mlflow.source.type") == "LOCAL" and tags.get("mlflow.source.name"), \
        f"run {run_id}: no source tags, so the UI's Source column is empty"
    assert tags.get("git.dirty") in ("true", "false", "unknown"), f"run {run_id}: git.dirty is {tags.get('git.dirty')}"
    assert tags["git.dirty"] == "unknown" or len(tags.get("mlflow.source.git.commit", "")) == 40, \
        f"run {run_id}: a git checkout but no mlflow.source.git.commit"
    missing = [f"version.{name}" for name in VERSIONS if not tags.get(f"version.{name}")]
    missing += [key for key in ("host.name", *(("host.device",) if trains else ())) if not tags.get(key)]
    assert not missing, f"run {run_id}: no {', '.join(missing)} tags"


def check_sweep(url: str, experiment: str) -> dict[str, Any]:
    """Assert what the UI needs to show the sweep; returns what it found, for the caller to check counts."""
    found = get(url, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=experiment)["experiment"]
    experiment_id = found["experiment_id"]
    kind = {tag["key"]: tag["value"] for tag in found.get("tags", [])}.get("mlflow.experimentKind")
    assert kind == TRAINING_KIND, f"experiment {experiment!r} has kind {kind!r}, not {TRAINING_KIND!r}"
    parents = search_runs(url, experiment_id, "tags.`sweep.parent` = 'true'")
    assert len(parents) == 1, f"expected one parent run in {experiment!r}, found {len(parents)}"
    parent_id = parents[0]["info"]["run_id"]
    check_provenance(parents[0], trains=False)
    children = search_runs(url, experiment_id, f"tags.`mlflow.parentRunId` = '{parent_id}'")
    for run in children:
        check_provenance(run, trains=True)
    complete = [run for run in children if tags_of(run).get("sweep.status") == "COMPLETE"]
    assert complete, f"parent run {parent_id} has no COMPLETE child run"
    epochs = set()
    for run in complete:
        run_id = run["info"]["run_id"]
        assert run["info"]["status"] == "FINISHED", f"run {run_id} is {run['info']['status']}"
        assert datasets_of(run), f"run {run_id} logged no data set, so the UI's Dataset column is empty"
        assert set(datasets_of(run)) <= set(datasets_of(parents[0])), f"parent run lacks the data set of run {run_id}"
        assert run["data"].get("metrics") and any(
            metric["key"] == DEVICE_SECONDS and metric["value"] > 0 for metric in run["data"]["metrics"]), \
            f"run {run_id}: no {DEVICE_SECONDS}"
        for key in EPOCH_METRICS:
            history = get(url, "/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key=key)["metrics"]
            steps = sorted(point["step"] for point in history)
            assert steps == list(range(len(steps))) and steps, f"run {run_id}: {key} has steps {steps}"
            epochs.add(len(steps))
        frames = get(url, "/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key="val/psnr_frame")["metrics"]
        assert sorted(p["step"] for p in frames) == list(range(1, len(frames) + 1)), f"run {run_id}: val/psnr_frame"
        listed = {item["path"] for item in get(url, "/api/2.0/mlflow/artifacts/list", run_id=run_id).get("files", [])}
        listed |= {item["path"] for item in
                   get(url, "/api/2.0/mlflow/artifacts/list", run_id=run_id, path="checkpoints").get("files", [])}
        assert set(ARTIFACTS) <= listed, f"run {run_id}: artifacts {sorted(listed)}, expected {ARTIFACTS}"
        csv = get(url, "/get-artifact", path="val_psnr_per_frame.csv", run_uuid=run_id).decode()
        assert csv.startswith("frame,psnr\n1,") and csv.count("\n") == len(frames) + 1, f"run {run_id}: CSV {csv[:40]!r}"
    assert len(epochs) == 1, f"child runs have different numbers of epochs: {sorted(epochs)}"
    return {"experiment_id": experiment_id, "parent_run_id": parent_id, "children": len(children),
            "complete": len(complete), "epochs": epochs.pop(), "parent": parents[0], "complete_runs": complete}


def find_chromium() -> str | None:
    return next((path for name in CHROMIUM if (path := shutil.which(name))), None)


def load_page(url: str, screenshot: Path, profile: Path) -> str:
    """The DOM of `url` once headless Chromium has loaded it with the user profile `profile`; its screenshot saved.

    The pages of one check share a profile: the UI's scripts come from Chromium's cache after the first page.
    """
    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError(f"no Chromium found (tried {', '.join(CHROMIUM)}); `apt-get install chromium`")
    with tempfile.TemporaryFile("w+") as log:
        browser = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
             f"--window-size={WINDOW}", f"--virtual-time-budget={PAGE_BUDGET_MS}", f"--screenshot={screenshot}",
             "--dump-dom", url], stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        try:
            dom, _ = browser.communicate(timeout=PAGE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"chromium did not load {url} within {PAGE_TIMEOUT_S} s") from None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(browser.pid, signal.SIGKILL)  # its renderer and GPU processes too
            browser.wait()
        log.seek(0)
        if browser.returncode != 0 or not screenshot.is_file():
            raise RuntimeError(f"chromium exited with {browser.returncode} on {url}:\n{log.read()[-2000:]}")
    return dom


class PageText(html.parser.HTMLParser):
    """A page's visible text, and the text of each cell of the runs table: run id -> column -> text."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self, dom: str):
        super().__init__()
        self.words: list[str] = []
        self.cells: dict[str, dict[str, str]] = {}
        self._open: list[tuple[str, str | None, str | None]] = []  # (tag, row id, column id) of each open element
        self.feed(dom)
        self.close()

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        attributes = dict(attrs)
        row = attributes.get("row-id") or (self._open[-1][1] if self._open else None)
        column = attributes.get("col-id") or (self._open[-1][2] if self._open else None)
        self._open.append((tag, row, column))

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        if not data.strip() or any(tag in ("script", "style", "title") for tag, _, _ in self._open):
            return
        self.words.extend(data.split())
        if self._open and self._open[-1][1] and self._open[-1][2]:
            _, row, column = self._open[-1]
            cells = self.cells.setdefault(row, {})
            cells[column] = " ".join(filter(None, (cells.get(column), *[" ".join(data.split())])))


def check_pages(url: str, found: dict[str, Any], folder: Path) -> list[Path]:
    """Load the experiment's pages in headless Chromium and check their text; returns the screenshots."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        return _check_pages(url, found, folder, Path(profile))


def _check_pages(url: str, found: dict[str, Any], folder: Path, profile: Path) -> list[Path]:
    experiment_id, parent = found["experiment_id"], found["parent"]
    shots = [folder / "experiment.png", folder / "runs.png"]
    opened = PageText(load_page(url + EXPERIMENT_PAGE.format(id=experiment_id), shots[0], profile)).text
    assert "Token Usage" not in opened and "Run Name" in opened and parent["info"]["run_name"] in opened, \
        f"the experiment's link does not open on its runs table: {opened[:400]!r} (see {shots[0]})"
    table = PageText(load_page(url + RUNS_PAGE.format(id=experiment_id), shots[1], profile)).cells
    for run in (parent, *found["complete_runs"]):
        run_id, tags = run["info"]["run_id"], tags_of(run)
        cells = table.get(run_id, {})
        source = Path(tags["mlflow.source.name"]).name
        assert cells.get("attributes.`Source`", "").startswith(source), \
            f"run {run_id}: Source cell {cells.get('attributes.`Source`')!r}, expected {source!r} (see {shots[1]})"
        assert datasets_of(run)[0] in cells.get("attributes.`Dataset`", ""), \
            f"run {run_id}: Dataset cell {cells.get('attributes.`Dataset`')!r}, expected {datasets_of(run)[0]!r}"
    for number, run in enumerate(found["complete_runs"]):
        run_id, tags = run["info"]["run_id"], tags_of(run)
        shots.append(folder / f"run{number}.png")
        page = PageText(load_page(url + RUN_PAGE.format(id=experiment_id, run=run_id), shots[-1], profile)).text
        expected = [f"git.dirty : {tags['git.dirty']}", f"host.device : {tags['host.device']}",
                    *[f"version.{name} : {tags[f'version.{name}']}" for name in VERSIONS], *datasets_of(run)]
        if "mlflow.source.git.commit" in tags:
            expected.append(tags["mlflow.source.git.commit"][:7])
        missing = [text for text in expected if text not in page]
        assert not missing, f"the page of run {run_id} does not show {missing} (see {shots[-1]})"
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path, help="the sweep's MLflow SQLite database, e.g. mlflow.db")
    parser.add_argument("experiment", help="the sweep's name")
    parser.add_argument("--pages", type=Path, metavar="DIR",
                        help="also load the UI's pages in headless Chromium and save their screenshots in DIR")
    args = parser.parse_args(argv)
    if not args.db.is_file():
        print(f"error: {args.db} does not exist", file=sys.stderr)
        return 2
    if args.pages is not None and find_chromium() is None:
        print(f"error: --pages needs Chromium (tried {', '.join(CHROMIUM)}); `apt-get install chromium`",
              file=sys.stderr)
        return 2
    try:
        with mlflow_server(args.db) as url:
            found = check_sweep(url, args.experiment)
            shots = [] if args.pages is None else check_pages(url, found, args.pages)
    except (AssertionError, RuntimeError, urllib.error.URLError) as err:
        print(f"FAILED: {err}", file=sys.stderr)
        return 1
    print(f"ok: experiment {args.experiment!r} has parent run {found['parent_run_id']} with {found['children']} "
          f"child runs, {found['complete']} COMPLETE with {found['epochs']} epochs of metrics and their artifacts, "
          f"provenance and data sets")
    if shots:
        print(f"ok: the UI opens it on its runs, fills their Source and Dataset cells and shows each run's "
              f"provenance; screenshots in {args.pages}: {', '.join(shot.name for shot in shots)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
