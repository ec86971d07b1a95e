"""Prometheus and Grafana: the optional PodMonitor scrapes every Ray pod of the release on the
port Ray exports its metrics on and passes the Prometheus Operator's CRD schema; the optional
dashboard ConfigMap is what Grafana's sidecar loads, and its panels query only series that exist
(the pipeline's, pipeline/metrics.py, and Ray's own) with labels those series carry."""

from __future__ import annotations

import copy
import json
import re

import pytest

from pipeline import metrics as pipeline_metrics

ON = {"monitoring": {"podMonitor": {"enabled": True}, "grafanaDashboard": {"enabled": True}}}
BOTH_JOBS = {"prepare": {"enabled": True}, "train": {"enabled": True}}
DASHBOARD_CM = "rp-ray-pipeline-dashboard"

# Ray 2.60's own series the dashboard draws: the reporter agent's node gauges
# (dashboard/modules/reporter/reporter_agent.py: METRICS_GAUGES) and Ray Data's operator gauge
# (data/_internal/stats.py, tags dataset and operator), with the labels they carry besides the
# PodMonitor's.
RAY_SERIES = {
    "ray_node_cpu_utilization": set(),
    "ray_node_gpus_utilization": set(),
    "ray_data_output_rows": {"dataset", "operator"},
}


def pipeline_series() -> dict[str, set[str]]:
    """Every series of pipeline/metrics.py as Prometheus names it, with its labels."""
    found = {**pipeline_metrics.GAUGES, **pipeline_metrics.COUNTERS}
    return {f"ray_{name}": set(tags) for name, (_, tags) in found.items()}


def podmonitor_labels(pm: dict) -> set[str]:
    """Labels the PodMonitor's relabelings add to every series it scrapes."""
    return {
        r["targetLabel"]
        for endpoint in pm["spec"]["podMetricsEndpoints"]
        for r in endpoint.get("relabelings", [])
    }


def dashboard(rendered) -> dict:
    return json.loads(rendered.one("ConfigMap", DASHBOARD_CM)["data"]["ray-pipeline.json"])


# --- off by default --------------------------------------------------------------------------


def test_neither_is_rendered_by_default(render, ci):
    for rendered in (render(), ci):
        assert rendered.all("PodMonitor") == []
        assert [c["metadata"]["name"] for c in rendered.all("ConfigMap")] == [
            "rp-ray-pipeline-config"
        ]


# --- the PodMonitor --------------------------------------------------------------------------


def _selected(pm: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in pm["spec"]["selector"]["matchLabels"].items())


def test_the_podmonitor_scrapes_every_ray_pod_on_its_metrics_port(render):
    rendered = render(ON)
    pm = rendered.one("PodMonitor")
    assert pm["metadata"]["namespace"] == "ml"
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == (
        "metrics",
        "/metrics",
        "30s",
    )
    groups = []
    for group, template in rendered.ray_pod_templates():
        assert _selected(pm, template["metadata"]["labels"]), group
        ray = template["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in ray.get("ports", [])}
        assert ports.get("metrics") == 8080, group  # KubeRay's default metrics-export-port
        groups.append(group)
    assert groups == ["headgroup", "data", "train"]


def test_the_podmonitor_also_scrapes_the_clusters_of_ephemeral_rayjobs(render):
    rendered = render({**ON, "rayJobs": {"mode": "ephemeral", **BOTH_JOBS}})
    pm = rendered.one("PodMonitor")
    jobs = rendered.all("RayJob")
    assert len(jobs) == 2
    for job in jobs:
        spec = job["spec"]["rayClusterSpec"]
        templates = [spec["headGroupSpec"]["template"]] + [
            g["template"] for g in spec["workerGroupSpecs"]
        ]
        for template in templates:
            assert _selected(pm, template["metadata"]["labels"])


def test_the_podmonitor_selects_no_other_pod_of_the_release(render):
    rendered = render({**ON, "minio": {"enabled": True}, "s3": {"credentials": {
        "existingSecret": "keys"}}})  # fmt: skip
    pm = rendered.one("PodMonitor")
    others = [o for o in rendered.all("Deployment") + rendered.all("Job")]
    assert others
    for obj in others:
        assert not _selected(pm, obj["spec"]["template"]["metadata"]["labels"]), obj["kind"]


def test_the_podmonitor_follows_its_values(render):
    rendered = render({"monitoring": {"podMonitor": {
        "enabled": True, "interval": "1m30s", "labels": {"release": "kube-prometheus-stack"},
        "namespace": "monitoring"}}})  # fmt: skip
    pm = rendered.one("PodMonitor")
    assert pm["metadata"]["namespace"] == "monitoring"
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}  # the pods stay where they are
    assert pm["spec"]["podMetricsEndpoints"][0]["interval"] == "1m30s"


@pytest.mark.parametrize(
    "values",
    [
        ON,
        {"monitoring": {"podMonitor": {"enabled": True, "interval": "15s", "namespace": "obs",
                                        "labels": {"release": "prom"}}}},
        {**ON, "rayJobs": {"mode": "ephemeral", **BOTH_JOBS}},
    ],
    ids=["default", "values", "ephemeral"],
)  # fmt: skip
def test_the_podmonitor_matches_the_prometheus_operator_crd(render, podmonitor_crd, values):
    assert podmonitor_crd.errors(render(values).one("PodMonitor")) == []


def test_strict_podmonitor_validation_catches_what_the_api_server_would_refuse_or_drop(
    render, podmonitor_crd
):
    pm = copy.deepcopy(render(ON).one("PodMonitor"))
    endpoint = pm["spec"]["podMetricsEndpoints"][0]
    endpoint["portname"] = "metrics"  # unknown: pruned
    endpoint["interval"] = "30 seconds"  # not a Prometheus duration
    endpoint["relabelings"][0]["action"] = "rename"  # not an action
    errors = podmonitor_crd.errors(pm)
    assert any("'portname'" in e for e in errors), errors
    assert any("interval" in e for e in errors), errors
    assert any("action" in e for e in errors), errors


def test_the_podmonitor_labels_series_with_the_pods_kuberay_labels(render):
    """KubeRay labels each Ray pod ray.io/group, ray.io/cluster and ray.io/node-type;
    Prometheus's pod discovery offers them as __meta_kubernetes_pod_label_<sanitised name>."""
    relabelings = render(ON).one("PodMonitor")["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert {r["targetLabel"]: r["sourceLabels"] for r in relabelings} == {
        "ray_group": ["__meta_kubernetes_pod_label_ray_io_group"],
        "ray_cluster": ["__meta_kubernetes_pod_label_ray_io_cluster"],
        "ray_node_type": ["__meta_kubernetes_pod_label_ray_io_node_type"],
    }


def test_a_workers_metrics_port_param_is_refused(render_error):
    """The port is the container's `metrics` port, which KubeRay passes to ray start."""
    message = render_error({"workerGroups": {"data": {"rayStartParams": {
        "metrics-export-port": "9090"}}}})  # fmt: skip
    assert "workerGroups.data.rayStartParams.metrics-export-port" in message
    assert "remove it" in message


def test_notes_warn_when_the_networkpolicy_would_drop_the_scrapes(render_notes):
    notes = render_notes(ON)
    assert "PodMonitor rp-ray-pipeline-ray in namespace ml scrapes them every 30s" in notes
    assert "WARNING: networkPolicy.metricsFrom is empty" in notes
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert "WARNING" not in render_notes({**ON, "networkPolicy": {"metricsFrom": peers}})


# --- the Grafana dashboard -------------------------------------------------------------------


def test_the_dashboard_configmap_is_labelled_for_grafanas_sidecar(render, chart_dir):
    cm = render(ON).one("ConfigMap", DASHBOARD_CM)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "ml"
    assert cm["data"]["ray-pipeline.json"] == (
        chart_dir / "dashboards" / "ray-pipeline.json"
    ).read_text().rstrip("\n")
    values = {"enabled": True, "label": "grafana.com/dashboard", "labelValue": "ml",
              "namespace": "grafana", "annotations": {"grafana_folder": "ML"}}  # fmt: skip
    own = render({"monitoring": {"grafanaDashboard": values}}).one("ConfigMap", DASHBOARD_CM)
    assert own["metadata"]["labels"]["grafana.com/dashboard"] == "ml"
    assert "grafana_dashboard" not in own["metadata"]["labels"]
    assert own["metadata"]["namespace"] == "grafana"
    assert own["metadata"]["annotations"] == {"grafana_folder": "ML"}


def test_the_dashboard_configmap_is_valid_kubernetes(render):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(render(ON).one("ConfigMap", DASHBOARD_CM), "1.33.0", strict=True)


def test_the_dashboard_is_a_grafana_dashboard_with_a_datasource_and_a_run_variable(render):
    board = dashboard(render(ON))
    assert board["title"] == "ray-pipeline" and board["uid"] == "ray-pipeline"
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource", "prometheus")  # fmt: skip
    run = variables["run"]
    assert run["type"] == "query" and run["datasource"]["uid"] == "${datasource}"
    assert run["query"]["query"] == run["definition"] == "label_values(ray_pipeline_epoch, run)"


def test_every_panel_has_an_id_a_place_and_queries_on_the_templated_datasource(render):
    panels = dashboard(render(ON))["panels"]
    assert len(panels) >= 8
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        assert p["type"] in {"timeseries", "stat", "gauge", "bargauge", "table"}, p["title"]
        assert p["title"]
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in "xywh") and g["w"] > 0 and g["h"] > 0
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(set(refs)) == len(refs)
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"] == p["datasource"]


SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")
BY = re.compile(r"\bby\s*\(([^)]*)\)")


def test_panels_query_only_series_that_exist_by_labels_they_carry(render):
    rendered = render(ON)
    ours = pipeline_series()
    known = {**ours, **RAY_SERIES}
    added = podmonitor_labels(rendered.one("PodMonitor"))
    drawn: set[str] = set()
    for p in dashboard(rendered)["panels"]:
        for t in p["targets"]:
            names = set(SELECTOR.findall(t["expr"]))
            assert names and names <= set(known), (p["title"], names - set(known))
            drawn |= names
            grouped = {label.strip() for by in BY.findall(t["expr"]) for label in by.split(",")}
            for name in names:
                carried = known[name] | added
                assert grouped <= carried, (p["title"], name, grouped - carried)
            if names & set(ours):
                assert 'run=~"$run"' in t["expr"], p["title"]  # the run variable applies
    assert set(ours) <= drawn, set(ours) - drawn  # a panel for every series the pipeline exports


def test_the_ray_series_named_exist_in_this_ray():
    """The dashboard's Ray series, checked against the Ray the image and the tests run."""
    import inspect

    from ray.dashboard.modules.reporter.reporter_agent import METRICS_GAUGES
    from ray.data._internal import stats

    for name in RAY_SERIES:
        bare = name.removeprefix("ray_")
        assert bare in METRICS_GAUGES or f'"{bare}"' in inspect.getsource(stats), name


@pytest.mark.parametrize(
    "values, field",
    [
        ({"podMonitor": {"interval": "30 seconds"}}, "interval"),
        ({"podMonitor": {"scrapeEvery": "30s"}}, "scrapeEvery"),
        ({"grafanaDashboard": {"label": "app.kubernetes.io/name"}}, "label"),
        ({"grafanaDashboard": {"labelValue": "not ok"}}, "labelValue"),
        ({"grafanaDashboard": {"namespace": "Grafana"}}, "namespace"),
    ],
    ids=["interval", "unknown-key", "chart-label", "label-value", "namespace"],
)
def test_bad_monitoring_values_are_refused_naming_the_value(render_error, values, field):
    message = render_error({"monitoring": values})
    assert "monitoring" in message and field in message, message


def test_helm_lint_is_clean_with_both_on(lint):
    assert lint(ON) == []
