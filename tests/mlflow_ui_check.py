"""What `mlflow ui` shows of a sweep, checked through its REST API: `python tests/mlflow_ui_check.py mlflow.db quick`.

Starts `mlflow server` on a free loopback port against the SQLite database, asks it for the sweep's
experiment, its one parent run, the parent's child runs, their per-epoch metric histories and their
artifacts (the same endpoints the UI's pages call), then stops it. Exits 1 naming the first problem.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
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


def check_sweep(url: str, experiment: str) -> dict[str, Any]:
    """Assert what the UI needs to show the sweep; returns what it found, for the caller to check counts."""
    found = get(url, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=experiment)["experiment"]
    experiment_id = found["experiment_id"]
    parents = search_runs(url, experiment_id, "tags.`sweep.parent` = 'true'")
    assert len(parents) == 1, f"expected one parent run in {experiment!r}, found {len(parents)}"
    parent_id = parents[0]["info"]["run_id"]
    children = search_runs(url, experiment_id, f"tags.`mlflow.parentRunId` = '{parent_id}'")
    complete = [run for run in children if tags_of(run).get("sweep.status") == "COMPLETE"]
    assert complete, f"parent run {parent_id} has no COMPLETE child run"
    epochs = set()
    for run in complete:
        run_id = run["info"]["run_id"]
        assert run["info"]["status"] == "FINISHED", f"run {run_id} is {run['info']['status']}"
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
            "complete": len(complete), "epochs": epochs.pop()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path, help="the sweep's MLflow SQLite database, e.g. mlflow.db")
    parser.add_argument("experiment", help="the sweep's name")
    args = parser.parse_args(argv)
    if not args.db.is_file():
        print(f"error: {args.db} does not exist", file=sys.stderr)
        return 2
    try:
        with mlflow_server(args.db) as url:
            found = check_sweep(url, args.experiment)
    except (AssertionError, RuntimeError, urllib.error.URLError) as err:
        print(f"FAILED: {err}", file=sys.stderr)
        return 1
    print(f"ok: experiment {args.experiment!r} has parent run {found['parent_run_id']} with {found['children']} "
          f"child runs, {found['complete']} COMPLETE with {found['epochs']} epochs of metrics and their artifacts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
