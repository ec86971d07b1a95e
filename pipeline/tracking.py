"""Experiment tracking: every pipeline run in MLflow (``tracking.mlflow``) and/or Weights &
Biases (``tracking.wandb``), with no tracking code in a training loop.

Where each part runs:

- the driver, before connecting to Ray: ``check_tracking`` (the server answers, takes the
  credentials) so a bad URI costs seconds and writes nothing;
- the driver, once every other check passed: ``open_tracking`` finds the MLflow run of this
  pipeline run (tags ``ray_pipeline.run_name`` + ``ray_pipeline.checkpoint_uri``: a resumed run
  continues it) or creates it, logs the resolved config as parameters, and writes
  ``config.yaml`` as its first artifact (an artifact store that cannot be written stops the run
  here);
- rank 0 of the train workers: ``EpochLog.log`` from ``TrainContext.report`` (every loop, the
  built-in one and a user's, ends its epochs there): the epoch's figures as metrics with the
  epoch as step. A tracking outage does not stop training: figures that could not be sent wait
  and go with the next epoch's;
- the driver, after ``summary.json``: ``finish_tracking`` sends the epochs the workers could not
  (from the run's history), ``summary.json``, the report's PNG and (``log_model``) the model, and
  says in ``summary.json`` what could still not be logged.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, dump_config
from pipeline.errors import TrackingError, first_line

log = logging.getLogger(__name__)

TAG_RUN_NAME = "ray_pipeline.run_name"
TAG_CHECKPOINTS = "ray_pipeline.checkpoint_uri"
TAG_RAY_JOB = "ray_pipeline.ray_job_id"
TAG_DATASET = "ray_pipeline.dataset_uri"
TAG_VALIDATION = "ray_pipeline.validation_uri"
TAG_IMAGE = "ray_pipeline.image"
IMAGE_ENV = "RAY_PIPELINE_IMAGE"  # set by the chart on every Ray container
PROBE_TIMEOUT_S = 15.0  # a loaded server answers its first API call in seconds
PARAM_MAX_CHARS = 6000  # MLflow refuses longer parameter values
# The MLflow client retries a request 7 times with doubling back-off (minutes against a server
# that is down): a training step must not wait that long; the driver sends what is left.
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def mlflow_uri(cfg: PipelineConfig) -> str | None:
    return cfg.tracking.mlflow.tracking_uri()


def _client(uri: str):
    for k, v in CLIENT_ENV.items():
        os.environ.setdefault(k, v)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


# --- what is logged ---------------------------------------------------------------------------


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow parameters: ``train.learning_rate`` -> ``"0.003"``."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    text = json.dumps(tree) if isinstance(tree, list | tuple) else str(tree)
    return {prefix: text[:PARAM_MAX_CHARS]}


def epoch_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of one epoch's record (the loop's own figures, rows/s, data wait, ...);
    skipped records as their total and per split."""
    out: dict[str, float] = {}
    for k, v in record.items():
        if k == "epoch":
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        out[k] = float(v)
    skipped = record.get("skipped_records")
    if isinstance(skipped, dict):
        counts = {k: v for k, v in skipped.items() if isinstance(v, int | float)}
        out["skipped_records"] = float(sum(counts.values()))
        out.update({f"skipped_records.{k}": float(v) for k, v in counts.items()})
    return out


def run_tags(cfg: PipelineConfig, checkpoints: str, ray_job_id: str | None) -> dict[str, str]:
    tags = {
        TAG_RUN_NAME: cfg.storage.run_name,
        TAG_CHECKPOINTS: checkpoints,
        TAG_DATASET: cfg.data.train_uri or "",
        TAG_VALIDATION: cfg.data.validation_uri or "",
        TAG_RAY_JOB: ray_job_id or "",
        TAG_IMAGE: os.environ.get(IMAGE_ENV, ""),
    }
    return {k: v for k, v in tags.items() if v}


# --- pre-flight -------------------------------------------------------------------------------


def _auth() -> dict[str, Any]:
    """requests' auth arguments from MLflow's own environment variables."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    kwargs: dict[str, Any] = {}
    if token:
        kwargs["headers"] = {"Authorization": f"Bearer {token}"}
    elif user:
        kwargs["auth"] = (user, os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        kwargs["verify"] = False
    return kwargs


def check_tracking(cfg: PipelineConfig) -> None:
    """The MLflow server answers and takes our credentials: one line naming
    tracking.mlflow.uri otherwise. Reads only."""
    uri = mlflow_uri(cfg)
    if uri is None:
        return
    import requests

    field_ = "tracking.mlflow.uri" if cfg.tracking.mlflow.uri else "MLFLOW_TRACKING_URI"
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name"
    try:
        r = requests.get(
            url,
            params={"experiment_name": cfg.tracking.mlflow.experiment},
            timeout=PROBE_TIMEOUT_S,
            **_auth(),
        )
    except requests.RequestException as e:
        raise TrackingError(
            f"{field_} {uri}: the MLflow tracking server does not answer ({_reason(e)})"
        ) from None
    if r.status_code in (401, 403):
        raise TrackingError(
            f"{field_} {uri} refused the credentials (HTTP {r.status_code}): set "
            "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN"
        )
    if r.status_code == 404 and "RESOURCE_DOES_NOT_EXIST" in r.text:
        return  # no such experiment yet: open_tracking creates it
    if r.status_code != 200 or "experiment" not in _json(r):
        raise TrackingError(
            f"{field_} {uri}: not an MLflow tracking server (HTTP {r.status_code} from {url})"
        )


def _json(r) -> dict:
    try:
        return r.json()
    except ValueError:
        return {}


def _reason(e: BaseException) -> str:
    text = first_line(e)
    for short in ("Connection refused", "timed out", "Name or service not known"):
        if short in text:
            return short
    return text[:200]


# --- the run ----------------------------------------------------------------------------------


@dataclass
class MlflowRun:
    """What the train workers and the driver's end need: where the run is."""

    uri: str
    run_id: str
    experiment_id: str
    resumed: bool


@dataclass
class Tracking:
    """The runs this pipeline run logs to (none when tracking is off)."""

    mlflow: MlflowRun | None = None
    wandb: dict | None = None  # project, entity, run id

    @property
    def active(self) -> bool:
        return self.mlflow is not None or self.wandb is not None


def open_tracking(cfg: PipelineConfig, checkpoints: str, ray_job_id: str | None) -> Tracking:
    """The tracking runs of this pipeline run, found (resume) or created, with the config."""
    return Tracking(
        mlflow=_open_mlflow(cfg, checkpoints, ray_job_id), wandb=_wandb_target(cfg, checkpoints)
    )


def _open_mlflow(cfg: PipelineConfig, checkpoints: str, ray_job_id: str | None):
    uri = mlflow_uri(cfg)
    if uri is None:
        return None
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    name = cfg.tracking.mlflow.experiment
    try:
        exp = client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else client.create_experiment(name)
        found = client.search_runs(
            [exp_id],
            filter_string=(
                f"tags.`{TAG_RUN_NAME}` = '{cfg.storage.run_name}' and "
                f"tags.`{TAG_CHECKPOINTS}` = '{checkpoints}'"
            ),
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        tags = run_tags(cfg, checkpoints, ray_job_id)
        if found:
            run = found[0]
            client.update_run(run.info.run_id, status="RUNNING")
            for k, v in tags.items():
                client.set_tag(run.info.run_id, k, v)
        else:
            run = client.create_run(exp_id, run_name=cfg.storage.run_name, tags=tags)
    except MlflowException as e:
        raise TrackingError(f"tracking.mlflow.uri {uri}: {first_line(e)[:300]}") from None
    target = MlflowRun(uri, run.info.run_id, exp_id, resumed=bool(found))
    _log_params(client, target, cfg)
    try:  # the first artifact: an artifact store that cannot be written stops the run here
        client.log_text(target.run_id, dump_config(cfg), "config.yaml")
    except Exception as e:
        if not target.resumed:
            client.delete_run(target.run_id)
        raise TrackingError(
            f"tracking.mlflow.uri {uri}: the run's artifact store cannot be written "
            f"({first_line(e)[:300]})"
        ) from None
    verb = "continues" if target.resumed else "is"
    log.warning("MLflow: this run %s %s", verb, run_url(target))
    return target


def _log_params(client, target: MlflowRun, cfg: PipelineConfig) -> None:
    """The resolved config as parameters. MLflow refuses to change a logged parameter: a
    resumed run with a changed value (more epochs, say) keeps the first and tags the new."""
    from mlflow.entities import Param, RunTag

    params = flatten(cfg.model_dump(mode="json"))
    logged = client.get_run(target.run_id).data.params if target.resumed else {}
    new = [Param(k, v) for k, v in params.items() if k not in logged]
    changed = [RunTag(f"resumed_with.{k}", v) for k, v in params.items() if logged.get(k, v) != v]
    for i in range(0, len(new), 100):  # MLflow takes at most 100 parameters a request
        client.log_batch(target.run_id, params=new[i : i + 100])
    if changed:
        client.log_batch(target.run_id, tags=changed)


def run_url(target: MlflowRun) -> str:
    return f"{target.uri.rstrip('/')}/#/experiments/{target.experiment_id}/runs/{target.run_id}"


def _wandb_target(cfg: PipelineConfig, checkpoints: str) -> dict | None:
    w = cfg.tracking.wandb
    if not w.project:
        return None
    import hashlib

    # one W&B run per pipeline run: its id follows from the run's name and folder (a resumed
    # run continues it)
    run_id = hashlib.sha256(f"{cfg.storage.run_name}|{checkpoints}".encode()).hexdigest()[:16]
    return {"project": w.project, "entity": w.entity, "id": run_id, "name": cfg.storage.run_name}


# --- on the train worker (rank 0) -------------------------------------------------------------


class EpochLog:
    """Rank 0's epoch figures to the tracking runs. What a tracker does not take now waits for
    the next epoch; the driver sends what is still missing at the end."""

    def __init__(self, tracking: Tracking | None, cfg: PipelineConfig, say=None):
        self.tracking = tracking or Tracking()
        self.cfg = cfg
        self.say = say or log.warning
        self.pending: list[dict] = []
        self._client = None
        self._wandb = None
        self._said_outage = False

    def log(self, record: dict[str, Any]) -> None:
        if self.tracking.wandb is not None:
            self._log_wandb(record)
        if self.tracking.mlflow is None:
            return
        self.pending.append(record)
        try:
            self._send_mlflow()
        except Exception as e:
            if not self._said_outage:
                self.say(
                    f"tracking: MLflow at {self.tracking.mlflow.uri} did not take epoch "
                    f"{record['epoch']}'s figures ({_reason(e)}); training goes on, they "
                    "are sent later"
                )
                self._said_outage = True

    def _send_mlflow(self) -> None:
        if self._client is None:
            self._client = _client(self.tracking.mlflow.uri)
        while self.pending:
            send_epoch(self._client, self.tracking.mlflow.run_id, self.pending[0])
            self.pending.pop(0)

    def _log_wandb(self, record: dict[str, Any]) -> None:
        try:
            if self._wandb is None:
                self._wandb = _wandb_run(self.tracking.wandb, self.cfg)
            self._wandb.log(epoch_metrics(record), step=int(record["epoch"]))
            if int(record["epoch"]) >= self.cfg.train.epochs:
                self._wandb.finish()
                self._wandb = None
        except Exception as e:
            self.say(f"tracking: W&B did not take epoch {record['epoch']} ({_reason(e)})")


def send_epoch(client, run_id: str, record: dict[str, Any]) -> None:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    step = int(record["epoch"])
    client.log_batch(
        run_id, metrics=[Metric(k, v, ts, step) for k, v in epoch_metrics(record).items()]
    )


def _wandb_run(target: dict, cfg: PipelineConfig):
    import wandb

    return wandb.init(
        project=target["project"],
        entity=target["entity"],
        id=target["id"],
        name=target["name"],
        resume="allow",
        config=cfg.model_dump(mode="json"),
        reinit="create_new",
    )


# --- on the driver, after training ------------------------------------------------------------


def finish_tracking(tracking: Tracking, summary: dict, model_factory=None) -> dict:
    """Send what the workers could not, then summary.json, the report's PNG and (log_model) the
    model; returns what ``summary.json`` says about tracking (what could not be logged).

    ``model_factory`` builds the final model (an nn.Module with the last checkpoint's weights)."""
    out: dict[str, Any] = {}
    if tracking.mlflow is not None:
        out["mlflow"] = _finish_mlflow(tracking.mlflow, summary, model_factory)
    if tracking.wandb is not None:
        out["wandb"] = {"project": tracking.wandb["project"], "run_id": tracking.wandb["id"]}
    return out


def _finish_mlflow(target: MlflowRun, summary: dict, model_factory) -> dict:
    from pipeline.report import Run, draw

    out: dict[str, Any] = {"run_id": target.run_id, "url": run_url(target)}
    not_logged: list[str] = []
    try:
        client = _client(target.uri)
        logged = {m.step for m in client.get_metric_history(target.run_id, "epoch_s")}
    except Exception as e:
        out["not_logged"] = ["everything after training"]
        out["error"] = _reason(e)
        return out
    error = None
    for record in summary.get("history", []):
        if int(record["epoch"]) in logged:
            continue
        try:
            send_epoch(client, target.run_id, record)
        except Exception as e:
            not_logged.append(f"epoch {record['epoch']} metrics")
            error = error or _reason(e)
    with tempfile.TemporaryDirectory() as d:
        artifacts = {}
        try:
            artifacts["report.png"] = draw(
                Run(
                    summary.get("summary_uri", ""),
                    summary.get("history", []),
                    "summary.json",
                    True,
                    summary,
                ),
                Path(d) / "report.png",
            )
        except Exception as e:
            not_logged.append("report.png")
            error = error or f"drawing the report: {first_line(e)}"
        tracked = {**summary, "tracking": {"mlflow": {**out, "not_logged": not_logged}}}
        artifacts["summary.json"] = Path(d) / "summary.json"
        artifacts["summary.json"].write_text(json.dumps(tracked, indent=2, default=str))
        for name, path in artifacts.items():
            try:
                client.log_artifact(target.run_id, str(path))
            except Exception as e:
                not_logged.append(name)
                error = error or _reason(e)
    if model_factory is not None:
        try:
            _log_model(target, model_factory())
        except Exception as e:
            not_logged.append("model")
            error = error or f"the model: {first_line(e)[:200]}"
    try:
        client.set_terminated(target.run_id, "FINISHED")
    except Exception as e:
        error = error or _reason(e)
    out["not_logged"] = not_logged
    if error:
        out["error"] = error
    return out


def final_model(workload, checkpoint):
    """A function that builds train.model with the weights the last epoch saved under
    ``state["model"]`` (what the built-in loop saves; a user's loop saves its own keys)."""

    def build():
        import torch

        from pipeline.train.context import META_KEY, STATE_FILE
        from pipeline.usercode import call_factory

        if checkpoint is None:
            raise ValueError("the run has no checkpoint")
        with checkpoint.as_directory() as d:
            saved = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False)
        weights = saved.get("model")
        if not isinstance(weights, dict):
            keys = (saved.get(META_KEY) or {}).get("user_keys", [])
            raise ValueError(
                f"the last checkpoint's state has no 'model' weights (keys: {keys}): report "
                "state={'model': model.state_dict(), ...}"
            )
        model = call_factory(workload.model, workload.facts, "train")
        model.load_state_dict(weights)
        return model.eval()

    return build


def _log_model(target: MlflowRun, model) -> None:
    import mlflow
    import mlflow.pytorch
    import torch

    mlflow.set_tracking_uri(target.uri)
    with mlflow.start_run(run_id=target.run_id):
        # pickle: the default (pt2) traces forward() and needs an input example; the pins are
        # given so MLflow does not infer them by loading the model in a subprocess
        mlflow.pytorch.log_model(
            model,
            name="model",
            serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
