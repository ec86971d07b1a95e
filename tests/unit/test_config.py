"""Config: one typed schema from YAML, --set overrides, errors that name the field."""

from __future__ import annotations

import pytest

from pipeline.config import DATA_GROUP, NODE_GROUP_LABEL, TRAIN_GROUP, load_config
from pipeline.errors import ConfigError


def test_defaults_are_the_embedded_digits_run_with_chart_group_selectors():
    cfg = load_config()
    # the dataset root the demo prepares; its image shape and classes are read from the files
    assert cfg.data.uri == "data/digits" and cfg.data.train_uri is None
    assert cfg.data.image_shape is None and cfg.data.num_classes is None
    assert cfg.train.model == "simple_cnn" and cfg.train.task == "classification"
    assert (
        cfg.data.placement.selector
        == {NODE_GROUP_LABEL: DATA_GROUP}
        == {"ray.io/node-group": "data"}
    )
    assert cfg.train.placement.selector == {"ray.io/node-group": TRAIN_GROUP}
    assert not cfg.train.use_gpu


def test_yaml_file_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "data:\n  train_uri: s3://b/train\n  batch_size: 32\n"
        "train:\n  epochs: 2\n  resources_per_worker: {CPU: 4, GPU: 1}\n"
        "s3:\n  endpoint: http://minio:9000\n"
    )
    cfg = load_config(
        f,
        [
            "train.epochs=7",
            "data.image_shape=[28,28,1]",
            "train.use_gpu=true",
            "data.placement.selector={pool: cpu}",
        ],
    )
    assert cfg.data.train_uri == "s3://b/train" and cfg.data.batch_size == 32
    assert cfg.train.epochs == 7 and cfg.train.use_gpu is True
    assert cfg.train.resources_per_worker == {"CPU": 4.0, "GPU": 1.0}
    assert cfg.data.image_shape == (28, 28, 1)
    assert cfg.data.placement.selector == {"pool": "cpu"}
    assert cfg.s3.endpoint == "http://minio:9000"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["data.batch_size=0"], "data.batch_size: Input should be greater than or equal to 1"),
        (["train.epochs=-2"], "train.epochs"),
        (["train.model=vgg"], "train.model"),
        (["data.image_encoding=gif"], "data.image_encoding"),
        (["data.train_uri=gs://bucket/x"], "data.train_uri"),
        (["storage.checkpoint_uri=s3://"], "storage.checkpoint_uri"),
        (["storage.run_name=has space"], "storage.run_name"),
        (["data.preprocessing.std=[0.0]"], "data.preprocessing.std"),
        (
            ["data.image_shape=[8,8,1]", "data.preprocessing.mean=[0.1,0.2]"],
            "preprocessing.mean has 2 values",
        ),
        (["train.model=mypkg.models"], "train.model: 'mypkg.models' is neither a built-in"),
        (["train.model=mypkg:"], "train.model"),
        (["data.preprocess=prep"], "data.preprocess: 'prep' is not an import string"),
        (["train.loss=torch.nn.MSELoss"], "train.loss: 'torch.nn.MSELoss' is not an import"),
        (["train.loop=my loop:x"], "train.loop"),
        (["train.task=ranking"], "train.task"),
        (["data.feature_columns=[]"], "data.feature_columns"),
        (["data.uri=null"], "data.uri: set a dataset root"),
        (["data.bad_records=ignore"], "data.bad_records"),
        (["train.resources_per_worker={GPU: -1}"], "train.resources_per_worker"),
        (["train.epochs"], "expected KEY=VALUE"),
        (["nosuchsection.x=1"], "nosuchsection: unknown field"),
        (["train.epochs.x=1"], "train.epochs: Input should be a valid integer"),
    ],
)
def test_invalid_values_name_the_field(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert fragment in str(e.value)


@pytest.mark.parametrize(
    "key", ["access_key_id", "secret_access_key", "aws_secret_access_key", "session_token"]
)
def test_credentials_in_the_config_are_refused(tmp_path, key):
    f = tmp_path / "c.yaml"
    f.write_text(f"s3:\n  endpoint: http://minio:9000\n  {key}: hunter2\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert f"s3.{key}" in str(e.value) and "AWS_SECRET_ACCESS_KEY" in str(e.value)
    assert "hunter2" not in str(e.value)


def test_unreadable_and_malformed_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file .*missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(top)


def test_extension_points_take_import_strings_and_arguments():
    cfg = load_config(
        None,
        [
            "train.model=mypkg.models:build_mlp",
            "train.model_args={hidden: [64, 32]}",
            "train.task=regression",
            "train.loss=torch.nn:SmoothL1Loss",
            "train.loop=mypkg.loops:train_loop",
            "data.preprocess=mypkg.prep:Standardise",
            "data.preprocess_args={eps: 1.0e-6}",
            "data.feature_columns=[a, b]",
            "data.uri=s3://bucket/tables",
        ],
    )
    assert cfg.train.model == "mypkg.models:build_mlp"
    assert cfg.train.model_args == {"hidden": [64, 32]}
    assert cfg.train.loss == "torch.nn:SmoothL1Loss" and cfg.train.task == "regression"
    assert cfg.data.preprocess == "mypkg.prep:Standardise"
    assert cfg.data.preprocess_args == {"eps": 1e-6}
    assert cfg.data.feature_columns == ["a", "b"]
