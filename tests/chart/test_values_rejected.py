"""Bad values never reach a cluster: `helm install/template/lint` refuse them, and the message
names the value to fix (values.schema.json for shapes, template checks for relations)."""

from __future__ import annotations

import pytest

VALID_GROUP = {
    "replicas": 1,
    "minReplicas": 0,
    "maxReplicas": 2,
    "resources": {"cpu": "2", "memory": "4Gi"},
}

REJECTED = {
    # values.schema.json
    "negative replicas": (
        {"workerGroups": {"data": {"replicas": -1}}},
        ["/workerGroups/data/replicas", "minimum"],
    ),
    "negative maxReplicas": (
        {"workerGroups": {"train": {"maxReplicas": -3}}},
        ["/workerGroups/train/maxReplicas"],
    ),
    "empty image repository": ({"image": {"repository": ""}}, ["/image/repository"]),
    "image repository removed": ({"image": {"repository": None}}, ["/image", "repository"]),
    "cpu not a quantity": (
        {"workerGroups": {"data": {"resources": {"cpu": "8 cores"}}}},
        ["/workerGroups/data/resources/cpu", "8 cores"],
    ),
    "memory in millibytes": (
        {"workerGroups": {"train": {"resources": {"memory": "512m"}}}},
        ["/workerGroups/train/resources/memory", "512m"],
    ),
    "memory unit typo": (
        {"head": {"resources": {"memory": "8GB"}}},
        ["/head/resources/memory", "8GB"],
    ),
    "shm size not a quantity": (
        {"workerGroups": {"train": {"shmSizeLimit": "lots"}}},
        ["/workerGroups/train/shmSizeLimit", "lots"],
    ),
    "negative gpu": (
        {"workerGroups": {"train": {"resources": {"gpu": -1}}}},
        ["/workerGroups/train/resources/gpu"],
    ),
    "unknown group key": (
        {"workerGroups": {"data": {"replica": 3}}},
        ["/workerGroups/data", "replica"],
    ),
    "unknown resources key": (
        {"workerGroups": {"train": {"resources": {"gpus": 2}}}},
        ["/workerGroups/train/resources", "gpus"],
    ),
    "unknown top-level key": ({"workergroups": {}}, ["workergroups"]),
    "group name not a DNS label": (
        {"workerGroups": {"Big_Memory": VALID_GROUP}},
        ["Big_Memory"],
    ),
    "unknown pipelineConfig section": ({"pipelineConfig": {"trian": {}}}, ["trian"]),
    "lease TTL under a second": (
        {"pipelineConfig": {"storage": {"lease_ttl_s": 0}}},
        ["/pipelineConfig/storage/lease_ttl_s", "minimum"],
    ),
    "bad bucket name": ({"s3": {"bucket": "My_Bucket"}}, ["/s3/bucket", "My_Bucket"]),
    "createSecret without keys": (
        {"s3": {"credentials": {"createSecret": {"enabled": True}}}},
        [
            "/s3/credentials/createSecret/accessKeyId",
            "/s3/credentials/createSecret/secretAccessKey",
        ],
    ),
    # template checks
    "min above max": (
        {"workerGroups": {"train": {"minReplicas": 5, "maxReplicas": 2}}},
        ["workerGroups.train.minReplicas (5) is above maxReplicas (2)"],
    ),
    "replicas above max": (
        {"workerGroups": {"data": {"replicas": 9}}},
        ["workerGroups.data.replicas (9) must lie between minReplicas (1) and maxReplicas (8)"],
    ),
    "placement names no group": (
        {"placement": {"dataGroup": "cpu"}},
        ["placement.dataGroup (cpu) names no group in workerGroups"],
    ),
    "no train pod": (
        {"workerGroups": {"train": {"replicas": 0, "minReplicas": 0}}},
        ["workerGroups.train.replicas is 0"],
    ),
    "fewer cpus than train workers": (
        {"workerGroups": {"train": {"resources": {"gpu": 4, "cpu": "2"}}}},
        ["workerGroups.train.resources.cpu (2)", "4 Ray Train workers"],
    ),
    "rayStartParams num-gpus": (
        {"workerGroups": {"train": {"rayStartParams": {"num-gpus": "2"}}}},
        ["workerGroups.train.rayStartParams.num-gpus", "resources.gpu"],
    ),
    "head rayStartParams num-cpus": (
        {"head": {"rayStartParams": {"num-cpus": "4"}}},
        ["head.rayStartParams.num-cpus"],
    ),
    "rayLabels in ray.io/": (
        {"workerGroups": {"data": {"rayLabels": {"ray.io/node-group": "data"}}}},
        ["workerGroups.data.rayLabels", "ray.io/node-group", "reserves"],
    ),
    "autoscaling without group labels": (
        {"autoscaling": {"enabled": True}, "ray": {"groupLabels": False}},
        ["autoscaling.enabled needs Ray labels on workerGroups.data", "ray.groupLabels"],
    ),
    "chart-owned placement in pipelineConfig": (
        {"pipelineConfig": {"data": {"placement": {"selector": {"a": "b"}}}}},
        ["pipelineConfig.data.placement.selector is set by the chart", "workerGroups.data"],
    ),
    "chart-owned num_workers in pipelineConfig": (
        {"pipelineConfig": {"train": {"num_workers": 3}}},
        ["pipelineConfig.train.num_workers is set by the chart"],
    ),
    "chart-owned s3 endpoint in pipelineConfig": (
        {"pipelineConfig": {"s3": {"endpoint": "minio:9000"}}},
        ["pipelineConfig.s3.endpoint is set by the chart", "s3.endpoint"],
    ),
    "S3 key in pipelineConfig": (
        {"pipelineConfig": {"s3": {"secret_access_key": "hunter2hunter2"}}},
        ["pipelineConfig.s3.secret_access_key", "credentials never go into the pipeline config"],
    ),
    "password anywhere in pipelineConfig": (
        {"pipelineConfig": {"storage": {"extra": {"db_password": "hunter2hunter2"}}}},
        [
            "pipelineConfig.storage.extra.db_password",
            "credentials never go into the pipeline config",
        ],
    ),
    "credential as an env literal": (
        {"workerGroups": {"train": {"env": [{"name": "AWS_SESSION_TOKEN", "value": "abc"}]}}},
        ["workerGroups.train.env[0]", "AWS_SESSION_TOKEN has a literal value"],
    ),
    "chart-owned env": (
        {
            "head": {
                "env": [
                    {
                        "name": "AWS_ACCESS_KEY_ID",
                        "valueFrom": {"secretKeyRef": {"name": "x", "key": "y"}},
                    }
                ]
            }
        },
        ["head.env[0]", "AWS_ACCESS_KEY_ID is set by the chart"],
    ),
    "createSecret and existingSecret": (
        {
            "s3": {
                "credentials": {
                    "existingSecret": "keys",
                    "createSecret": {
                        "enabled": True,
                        "accessKeyId": "local",
                        "secretAccessKey": "local-secret",
                    },
                }
            }
        },
        ["s3.credentials.createSecret.enabled and s3.credentials.existingSecret (keys)"],
    ),
    "MinIO with ambient credentials": (
        {"minio": {"enabled": True}, "s3": {"credentials": {"useAmbient": True}}},
        ["minio.enabled needs a key Secret", "s3.credentials.useAmbient"],
    ),
    "MinIO latest tag": (
        {"minio": {"enabled": True, "image": {"tag": "latest"}}},
        ["minio.image.tag is latest"],
    ),
    "autoscaler rights on the default account": (
        {"autoscaling": {"enabled": True}, "serviceAccount": {"create": False}},
        ["serviceAccount.name", "not default"],
    ),
    "token auth on an old Ray": (
        {"ray": {"version": "2.50.0"}},
        ["ray.auth.enabled needs Ray 2.52 or newer", "2.50.0"],
    ),
}


@pytest.mark.parametrize("values, fragments", REJECTED.values(), ids=REJECTED.keys())
def test_bad_values_are_refused_with_a_message_naming_them(render_error, values, fragments):
    message = render_error(values)
    for fragment in fragments:
        assert fragment in message, message


def test_harmless_names_are_not_mistaken_for_credentials(render):
    rendered = render(
        {
            "workerGroups": {
                "train": {"env": [{"name": "TOKENIZERS_PARALLELISM", "value": "false"}]}
            },
            "pipelineConfig": {"data": {"image_column": "image"}},
        }
    )
    env = rendered.worker_group("train")["template"]["spec"]["containers"][0]["env"]
    assert {"name": "TOKENIZERS_PARALLELISM", "value": "false"} in env


def test_a_valid_extra_group_is_accepted(render):
    """The refusals above are about the values, not about adding groups at all."""
    rendered = render({"workerGroups": {"big-memory": VALID_GROUP}})
    assert rendered.worker_group("big-memory")["maxReplicas"] == 2


def test_every_key_the_pipeline_treats_as_a_credential_is_refused(render_error):
    config = pytest.importorskip("pipeline.config")
    for key in sorted(config.SECRET_KEYS):
        message = render_error({"pipelineConfig": {"s3": {key: "not-for-a-configmap"}}})
        assert f"pipelineConfig.s3.{key}: credentials never go into the pipeline config" in message
