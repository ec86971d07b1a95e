"""The `submit` and `status` commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import yaml

from pipeline.config import load_config
from pipeline.errors import ConfigError, KubernetesError
from pipeline.k8s.api import KubeApi, cluster_config, context_namespace, find_target
from pipeline.k8s.dashboard import overdue, stop_overdue
from pipeline.k8s.rayjob import (
    DEFAULT_DEADLINE_S,
    config_file_overrides,
    job_name,
    release_target,
    render_rayjob,
)
from pipeline.k8s.status import dashboard_hint, finish, follow, interpret


def _code_checks(args: argparse.Namespace) -> list[str]:
    """--working-dir and --pip, checked before anything else runs (one line, exit 2)."""
    from pipeline import runtime_env

    if args.working_dir:
        runtime_env.check_working_dir(args.working_dir, "--working-dir")
    return runtime_env.read_pip(args.pip, "--pip")


def _runtime_env(args: argparse.Namespace, cfg: Any, pip: list[str], upload: bool) -> dict:
    """The job's runtime env: the working dir zipped and uploaded to the bucket of the job's
    storage.checkpoint_uri (content-addressed, so an unchanged folder is not sent again)."""
    from pipeline import runtime_env

    working_dir = None
    if args.working_dir:
        uri = cfg.storage.checkpoint_uri
        if not upload:  # --dry-run: the name it would have, nothing sent
            _, digest = runtime_env.zip_working_dir(args.working_dir, "--working-dir")
            working_dir = f"{uri.rstrip('/')}/{runtime_env.WORKING_DIRS}/{digest}.zip"
        else:
            s3 = cfg.s3
            # The config's endpoint is the one the cluster reaches (e.g. the in-cluster MinIO);
            # from here AWS_ENDPOINT_URL_S3 (a port-forward, say) may name another.
            local = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if local:
                s3 = s3.model_copy(update={"endpoint": local})
            working_dir = runtime_env.upload_working_dir(args.working_dir, uri, s3, "--working-dir")
            print(f"uploaded {args.working_dir} to {working_dir}", file=sys.stderr, flush=True)
    return runtime_env.build_runtime_env(working_dir, pip)


def _stop_if_overdue(api: KubeApi, obj: dict, dashboard: str | None) -> None:
    if overdue(obj):
        print(stop_overdue(api, obj, dashboard), file=sys.stderr, flush=True)


def _namespace(args: argparse.Namespace, api: KubeApi | None) -> str:
    """--namespace, else the kubeconfig context's (read locally: --dry-run calls no API)."""
    if args.namespace:
        return args.namespace
    if api is not None:
        return api.namespace
    try:
        return context_namespace(args.context)
    except Exception:  # no kubeconfig at all: a dry run still renders
        return "default"


def cmd_submit(args: argparse.Namespace) -> int:
    overrides = config_file_overrides(args.config) if args.config else []
    overrides += list(args.overrides)
    if args.deadline < 1:
        raise ConfigError("--deadline must be at least 1 second")
    pip = _code_checks(args)
    if args.dry_run:
        if not args.release:
            raise KubernetesError(
                "--dry-run does not read the cluster: name the chart's release with --release "
                "(and its RayCluster with --cluster when it has a fullnameOverride)"
            )
        cfg = load_config(None, overrides)
        run_name = cfg.storage.run_name
        target = release_target(_namespace(args, None), args.release, args.cluster, args.image)
        env = _runtime_env(args, cfg, pip, upload=False)
        manifest = render_rayjob(
            target, job_name(run_name), overrides, run_name, args.deadline, env
        )
        print(yaml.safe_dump(manifest, sort_keys=False, width=120), end="", flush=True)
        return 0

    api = KubeApi(args.context)
    target = find_target(api, _namespace(args, api), args.release, args.cluster, args.image)
    cfg = cluster_config(api, target, overrides) or load_config(None, overrides)
    run_name = cfg.storage.run_name
    env = _runtime_env(args, cfg, pip, upload=True)
    manifest = render_rayjob(target, job_name(run_name), overrides, run_name, args.deadline, env)
    name, namespace = manifest["metadata"]["name"], target.namespace
    api.create_rayjob(manifest)
    print(
        f"created RayJob {namespace}/{name} on RayCluster {target.cluster}: "
        f"{manifest['spec']['entrypoint']}\n"
        f"  driver logs: kubectl -n {namespace} logs -f job/{name}\n"
        f"  Ctrl-C stops following, not the job (kubectl -n {namespace} delete rayjob {name} "
        "stops it)",
        file=sys.stderr,
        flush=True,
    )
    if args.no_wait:
        print(json.dumps({"name": name, "namespace": namespace}), flush=True)
        return 0
    obj, state = follow(lambda: api.rayjob(namespace, name), timeout_s=args.timeout)
    _stop_if_overdue(api, obj, args.dashboard)
    return finish(obj, state, args.timeout)


def cmd_status(args: argparse.Namespace) -> int:
    api = KubeApi(args.context)
    namespace = _namespace(args, api)
    if args.follow:
        obj, state = follow(lambda: api.rayjob(namespace, args.name), timeout_s=args.timeout)
        _stop_if_overdue(api, obj, args.dashboard)
        return finish(obj, state, args.timeout)
    obj = api.rayjob(namespace, args.name)
    state = interpret(obj.get("status"))
    print(f"{args.name}: {state.describe()}", file=sys.stderr)
    if (obj.get("status") or {}).get("dashboardURL"):
        print(dashboard_hint(obj), file=sys.stderr)
    _stop_if_overdue(api, obj, args.dashboard)
    return finish(obj, state)


def _cluster_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--namespace", "-n", help="namespace (default: the kubeconfig context's)")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    p.add_argument(
        "--dashboard", metavar="URL",
        help="the Ray dashboard, to stop a job KubeRay reports past its deadline (default: "
        "through the Kubernetes API server's Service proxy; e.g. http://127.0.0.1:8265 with a "
        "kubectl port-forward)",
    )  # fmt: skip
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `submit` and `status` subcommands to the CLI."""
    p = sub.add_parser(
        "submit",
        help="run `ray-pipeline train` as a RayJob on the chart's RayCluster and follow it",
        description="Create a RayJob (KubeRay) that runs `ray-pipeline train` on the Helm "
        "chart's long-lived RayCluster with the config mounted there plus your overrides, "
        "under a unique name, and follow it. Exit 0 only when the Ray job SUCCEEDED.",
    )
    p.add_argument(
        "--config", "-c", default=None,
        help="a local config file: its values are passed to the job as --set overrides",
    )  # fmt: skip
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a value of the cluster's config, e.g. --set train.epochs=5 (repeatable)",
    )  # fmt: skip
    p.add_argument("--release", help="the chart's Helm release (default: the only one)")
    p.add_argument("--cluster", help="the RayCluster's name (default: the release's)")
    p.add_argument("--image", help="submitter image (default: the RayCluster's head image)")
    p.add_argument(
        "--deadline", type=int, default=DEFAULT_DEADLINE_S, metavar="SECONDS",
        help="activeDeadlineSeconds: KubeRay marks the job Failed then, and the driver stops "
        f"itself that long after it started (default {DEFAULT_DEADLINE_S})",
    )  # fmt: skip
    p.add_argument(
        "--working-dir", metavar="DIR",
        help="ship DIR to the cluster: zipped, uploaded to the bucket of storage.checkpoint_uri "
        "and set as the job's runtime env working_dir (importable on every node)",
    )  # fmt: skip
    p.add_argument(
        "--pip", metavar="REQS",
        help="pip requirements of the job's runtime env: a requirements file, or names "
        "separated by commas",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the RayJob; touch nothing")
    p.add_argument("--no-wait", action="store_true", help="create the job and return")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop following after this long (exit 3; the job goes on)",
    )
    _cluster_flags(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser(
        "status",
        help="show a RayJob's state (exit 0 SUCCEEDED, 1 failed, 3 not finished)",
    )
    p.add_argument("name", help="the RayJob's name")
    p.add_argument("--follow", "-f", action="store_true", help="follow it until it finishes")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --follow: stop following after this long (exit 3)",
    )
    _cluster_flags(p)
    p.set_defaults(func=cmd_status)
