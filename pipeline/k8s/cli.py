"""The `submit` and `status` commands."""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from pipeline.config import load_config
from pipeline.errors import ConfigError, KubernetesError
from pipeline.k8s.api import KubeApi, cluster_config, context_namespace, find_target
from pipeline.k8s.rayjob import (
    DEFAULT_DEADLINE_S,
    config_file_overrides,
    job_name,
    release_target,
    render_rayjob,
)
from pipeline.k8s.status import dashboard_hint, finish, follow, interpret


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
    if args.dry_run:
        if not args.release:
            raise KubernetesError(
                "--dry-run does not read the cluster: name the chart's release with --release "
                "(and its RayCluster with --cluster when it has a fullnameOverride)"
            )
        run_name = load_config(None, overrides).storage.run_name
        target = release_target(_namespace(args, None), args.release, args.cluster, args.image)
        manifest = render_rayjob(target, job_name(run_name), overrides, run_name, args.deadline)
        print(yaml.safe_dump(manifest, sort_keys=False, width=120), end="", flush=True)
        return 0

    api = KubeApi(args.context)
    target = find_target(api, _namespace(args, api), args.release, args.cluster, args.image)
    run_name = cluster_config(api, target, overrides)
    if run_name is None:
        run_name = load_config(None, overrides).storage.run_name
    manifest = render_rayjob(target, job_name(run_name), overrides, run_name, args.deadline)
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
    return finish(obj, state, args.timeout)


def cmd_status(args: argparse.Namespace) -> int:
    api = KubeApi(args.context)
    namespace = _namespace(args, api)
    if args.follow:
        obj, state = follow(lambda: api.rayjob(namespace, args.name), timeout_s=args.timeout)
        return finish(obj, state, args.timeout)
    obj = api.rayjob(namespace, args.name)
    state = interpret(obj.get("status"))
    print(f"{args.name}: {state.describe()}", file=sys.stderr)
    if (obj.get("status") or {}).get("dashboardURL"):
        print(dashboard_hint(obj), file=sys.stderr)
    return finish(obj, state)


def _cluster_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--namespace", "-n", help="namespace (default: the kubeconfig context's)")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
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
        help=f"activeDeadlineSeconds: KubeRay fails the job then (default {DEFAULT_DEADLINE_S})",
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
