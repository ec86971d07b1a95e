"""The three examples under examples/, end to end as a user runs them: on the 3-node labelled
cluster with moto's S3, the user's code shipped as an S3 working_dir (`--working-dir`: zipped,
uploaded to the run's bucket, downloaded by every node's Ray; the code is not on any
PYTHONPATH), each checked for the validation metric it reaches, where its preprocessing and
its training ran, and (the user's loop) that a killed train worker resumes from its
checkpoint."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.conftest import ROOT, run_cli, write_config
from tests.faults.conftest import TrainRun

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

BUCKET = "ray-pipeline-examples"
EXAMPLES = ROOT / "examples"


def example_config(tmp_path, name: str, s3, **sections) -> str:
    import yaml

    tree = yaml.safe_load((EXAMPLES / name / "config.yaml").read_text())
    tree["storage"]["checkpoint_uri"] = f"s3://{BUCKET}/runs"
    tree["s3"] = {"endpoint": s3.endpoint}
    tree.setdefault("train", {})["resources_per_worker"] = {"CPU": 1}
    for section, values in sections.items():
        tree.setdefault(section, {}).update(values)
    return str(write_config(tmp_path / f"{name}.yaml", tree))


def job_placement(address: str, job_id: str) -> tuple[list, list]:
    import ray
    from ray.util.state import list_actors, list_tasks

    ray.init(address=address)
    try:
        filters = [("job_id", "=", job_id)]
        tasks = list_tasks(filters=filters, limit=10_000, raise_on_missing_output=False)
        actors = list_actors(filters=filters, limit=10_000, raise_on_missing_output=False)
    finally:
        ray.shutdown()
    return tasks, actors


def assert_ran_on_the_groups(ray_cluster, summary: dict, *, pooled: bool = False) -> None:
    tasks, actors = job_placement(ray_cluster.address, summary["ray_job_id"])
    reads = [t for t in tasks if "ReadParquet" in t.name]
    assert reads and {t.node_id for t in reads} == {ray_cluster.node_ids["data"]}
    if pooled:  # a preprocessing class: Ray Data's actor pool
        pool = [a for a in actors if "MapWorker" in a.class_name]
        assert pool, sorted({a.class_name for a in actors})
        assert {a.node_id for a in pool} == {ray_cluster.node_ids["data"]}
    else:
        maps = [t for t in tasks if "preprocess_block" in t.name]
        assert maps and {t.node_id for t in maps} == {ray_cluster.node_ids["data"]}
    workers = [a for a in actors if a.class_name == "RayTrainWorker"]
    assert workers and {a.node_id for a in workers} == {ray_cluster.node_ids["train"]}


def assert_shipped_through_s3(s3, summary: dict, package: str) -> None:
    assert importlib.util.find_spec(package) is None  # not importable here: only shipped
    uri = summary["runtime_env"]["working_dir"]
    assert uri.startswith(f"s3://{BUCKET}/runs/working-dirs/") and uri.endswith(".zip")
    assert uri[len(f"s3://{BUCKET}/") :] in s3.keys(BUCKET, "runs/working-dirs/")


@pytest.fixture(scope="module")
def bucket(s3):
    return s3.make_bucket(BUCKET)


def test_hugging_face_image_dataset_with_a_user_model(ray_cluster, s3, bucket, tmp_path):
    data = f"s3://{BUCKET}/hf-digits"
    r = run_cli(
        "prepare", "digits", "--layout", "huggingface", "--out", data,
        "--set", f"s3.endpoint={s3.endpoint}",
    )  # fmt: skip
    assert r.returncode == 0, r.output
    assert any("data/train-00000-of-" in k for k in s3.keys(BUCKET, "hf-digits/data/"))
    cfg = example_config(tmp_path, "hf_images", s3, data={"uri": data})
    r = run_cli(
        "train", "--address", ray_cluster.address, "--config", cfg,
        "--working-dir", str(EXAMPLES / "hf_images"),
    )  # fmt: skip
    assert r.returncode == 0, r.output[-5000:]
    summary = r.summary()
    assert summary["val_accuracy"] >= 0.85, summary["metrics"]
    assert summary["epochs"] == 8
    assert summary["class_names"] == [str(i) for i in range(10)]  # from the HF metadata
    assert_ran_on_the_groups(ray_cluster, summary)
    assert_shipped_through_s3(s3, summary, "myvision")


def test_table_with_a_user_preprocessing_class_and_mlp(ray_cluster, s3, bucket, tmp_path):
    sys.path.insert(0, str(EXAMPLES / "table"))
    try:
        from make_dataset import write
    finally:
        sys.path.pop(0)
    data = f"s3://{BUCKET}/wine"
    made = write(data, s3.endpoint)
    assert made["rows"] == {"train": 143, "validation": 35}
    cfg = example_config(
        tmp_path,
        "table",
        s3,
        data={"uri": data, "preprocess_args": {"stats_uri": f"{data}/feature_stats.json"}},
    )
    r = run_cli(
        "train", "--address", ray_cluster.address, "--config", cfg,
        "--working-dir", str(EXAMPLES / "table"),
    )  # fmt: skip
    assert r.returncode == 0, r.output[-5000:]
    summary = r.summary()
    assert summary["val_accuracy"] >= 0.9, summary["metrics"]
    assert {h["train_rows"] for h in summary["history"]} == {143}
    assert_ran_on_the_groups(ray_cluster, summary, pooled=True)
    assert_shipped_through_s3(s3, summary, "mytable")


def test_user_training_loop_resumes_after_its_worker_is_killed(ray_cluster, s3, bucket, tmp_path):
    data = f"s3://{BUCKET}/digits"
    r = run_cli("prepare", "digits", "--out", data, "--set", f"s3.endpoint={s3.endpoint}")
    assert r.returncode == 0, r.output
    cfg = example_config(tmp_path, "custom_loop", s3, data={"uri": data})
    run = TrainRun(
        ray_cluster,
        cfg,
        s3,
        "custom-loop",
        "--working-dir",
        str(EXAMPLES / "custom_loop"),
        bucket=BUCKET,
        prefix="runs",
    ).start()
    run.kill_train_worker_after_epoch(1, ray_cluster.address)
    r = run.wait()
    assert r.returncode == 0, r.output[-5000:]
    summary = r.summary()
    assert "resuming from epoch" in r.output  # the user's loop restored its own state
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3, 4, 5, 6]
    assert summary["val_accuracy"] >= 0.9, summary["metrics"]
    assert_ran_on_the_groups(ray_cluster, summary)
    assert_shipped_through_s3(s3, summary, "myloop")
