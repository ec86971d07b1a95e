"""A real MLflow tracking server for the tests: ``mlflow server`` with a sqlite backend store and
its artifacts on the moto S3 server, as a platform team runs one next to its clusters.

The server's package (``mlflow``) pins pyarrow<26, which the pipeline's environment does not
take, so it runs from its own venv: $MLFLOW_SERVER_PYTHON's, else ``.venv-mlflow-server`` in
the repository, created here on first use (the version of the client pinned in
constraints.txt). The pipeline itself only has the client, ``mlflow-skinny``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import FAKE_AWS, ROOT, free_port

SERVER_VENV = ROOT / ".venv-mlflow-server"
START_TIMEOUT_S = 300  # a first start migrates the sqlite schema (minutes on 2 busy cores)


def client_version() -> str:
    text = (ROOT / "constraints.txt").read_text()
    return re.search(r"^mlflow-skinny==(\S+)", text, re.M).group(1)


def server_bin() -> Path:
    """The ``mlflow`` command of a venv with the server, made once."""
    python = os.environ.get("MLFLOW_SERVER_PYTHON")
    if python:
        return Path(python).parent / "mlflow"
    mlflow = SERVER_VENV / "bin" / "mlflow"
    if not mlflow.exists():
        subprocess.run([sys.executable, "-m", "venv", str(SERVER_VENV)], check=True)
        subprocess.run(
            [
                str(SERVER_VENV / "bin" / "pip"),
                "install",
                "-q",
                "--disable-pip-version-check",
                f"mlflow[auth]=={client_version()}",  # auth: a server that checks credentials
                "boto3",
            ],
            check=True,
        )
    return mlflow


@dataclass
class MlflowServer:
    uri: str
    process: subprocess.Popen
    log: Path

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    workdir: Path, s3_endpoint: str, artifacts: str, *extra: str, env: dict | None = None
) -> MlflowServer:
    """``mlflow server`` on 127.0.0.1 (sqlite in ``workdir``, artifacts proxied to
    ``artifacts`` on the moto endpoint), answering its REST API."""
    import requests

    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"mlflow-server-{port}.log"
    env = {**os.environ, **FAKE_AWS, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint, **(env or {})}
    cmd = [
        str(server_bin()),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        artifacts,
        *extra,
    ]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True
        )
    server = MlflowServer(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited:\n{log.read_text()[-3000:]}")
        try:
            # the REST API, not only /health: its first call initialises the store
            r = requests.get(
                f"{server.uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30
            )
            if r.status_code in (200, 401):  # 401: it answers, and wants credentials
                return server
        except requests.RequestException:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"mlflow server did not answer in {START_TIMEOUT_S}s:\n{log.read_text()}")
