"""User code named by import strings: resolving, building, calling, and what the pipeline
says when it is wrong; the checks on what a preprocessing returns and on the model and loss,
run as a data worker and a train worker run them (without Ray)."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from pipeline.data import ROW_DIGEST_COLUMN, BatchSpec, Preprocessor
from pipeline.errors import DataError, UserCodeError
from pipeline.usercode import UserCallable, call_factory, load


@pytest.fixture
def userpkg(tmp_path, monkeypatch):
    """A user's package `userpkg` on sys.path, with good and bad code in it."""
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "code.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            import torch

            NOT_CALLABLE = 3

            def model(num_features, num_classes, hidden=8):
                return torch.nn.Sequential(
                    torch.nn.Linear(num_features, hidden), torch.nn.Linear(hidden, num_classes)
                )

            def broken_model(**kwargs):
                raise ValueError("hidden must be positive\\nsecond line")

            def wrong_width():
                return torch.nn.Linear(3, 2)

            def double(batch, factor=2.0, split=None):
                x = np.stack([batch["a"], batch["b"]], 1).astype(np.float32) * factor
                is_train = np.full(len(x), split == "train")
                return {"features": x, "label": batch["label"], "split": is_train}

            def as_list(batch):
                return [batch["a"]]

            def unequal(batch):
                return {"features": batch["a"][:, None], "label": batch["label"][:-1]}

            def with_text(batch):
                return {"features": batch["a"][:, None], "label": batch["label"],
                        "caption": np.array(["x"] * len(batch["a"]))}

            def no_label(batch):
                return {"features": batch["a"][:, None]}

            def raises(batch):
                raise KeyError("b")

            class Scale:
                built = 0

                def __init__(self, factor):
                    Scale.built += 1
                    self.factor = factor

                def __call__(self, batch):
                    x = batch["a"][:, None].astype(np.float32) * self.factor
                    return {"features": x, "label": batch["label"]}

            def per_row_loss(outputs, labels):
                return torch.nn.functional.cross_entropy(outputs, labels, reduction="none")

            def widen(batch, copies=2, split=None):
                batch["features"] = batch["features"].repeat(1, copies)
                return batch

            def drop_features(batch):
                return {"label": batch["label"]}

            def tensor_only(batch):
                return batch["features"]

            def divide_by_zero(batch):
                return 1 / 0

            def widen_train_only(batch, split):
                if split == "train":
                    batch["features"] = batch["features"].repeat(1, 2)
                return batch
            """
        )
    )
    (pkg / "broken.py").write_text("import not_installed_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "userpkg"
    for name in [m for m in sys.modules if m.startswith("userpkg")]:
        del sys.modules[name]


def test_import_errors_name_the_field_the_module_and_the_group(userpkg):
    with pytest.raises(UserCodeError) as e:
        load("mypkg.models:build", "train.model", "train")
    assert str(e.value) == (
        "train.model: cannot import 'mypkg.models' on the train group: No module named 'mypkg'"
    )
    with pytest.raises(
        UserCodeError,
        match=r"data.preprocess: module 'userpkg.code' has no "
        r"attribute 'nope' on the driver",
    ):
        load("userpkg.code:nope", "data.preprocess", "driver")
    with pytest.raises(UserCodeError, match="is a int, not a function or class"):
        load("userpkg.code:NOT_CALLABLE", "train.loss")
    with pytest.raises(UserCodeError, match="cannot import 'userpkg.broken'.*not_installed"):
        load("userpkg.broken:x", "train.loop", "data")


def test_factories_get_their_args_and_the_facts_they_name(userpkg):
    ref = UserCallable("train.model", "userpkg.code:model", args={"hidden": 4})
    model = call_factory(ref, {"num_features": 2, "num_classes": 3, "image_size": 8})
    assert model[0].in_features == 2 and model[0].out_features == 4
    assert model[1].out_features == 3
    broken = UserCallable("train.model", "userpkg.code:broken_model", args={"hidden": -1})
    with pytest.raises(UserCodeError) as e:
        call_factory(broken, {}, "train")
    assert str(e.value) == (
        "train.model: userpkg.code:broken_model(**{hidden}) raised on the train group: "
        "ValueError: hidden must be positive"
    )


def _spec(fn: str, args=None) -> BatchSpec:
    return BatchSpec(
        columns=["a", "b", "label"],
        digest_columns=["a", "b", "label"],
        input_column="features",
        label_column="label",
        task="classification",
        num_classes=3,
        preprocess=UserCallable("data.preprocess", f"userpkg.code:{fn}", args=args or {}),
    )


def _batch(n=4):
    return {
        "a": np.arange(n, dtype=np.float64),
        "b": np.ones(n),
        "label": np.array([0, 1, 2, 1][:n]),
        "path": np.array(["/d/train/part-0.parquet"] * n, dtype=object),
    }


def test_a_preprocessing_function_gets_its_args_and_the_split(userpkg):
    out = Preprocessor(_spec("double", {"factor": 3.0}), "train", None, "", None).batch(_batch())
    np.testing.assert_array_equal(out["features"][:, 0], [0, 3, 6, 9])
    assert out["split"].all()  # split="train" reached the function
    assert out["label"].dtype == np.int64 and len(out[ROW_DIGEST_COLUMN]) == 4
    val = Preprocessor(_spec("double"), "validation", None, "", None).batch(_batch())
    assert not val["split"].any()


def test_a_preprocessing_class_is_built_once_per_worker(userpkg):
    from userpkg.code import Scale

    pre = Preprocessor(_spec("Scale", {"factor": 0.5}), "train", None, "", None)
    for _ in range(3):
        out = pre.batch(_batch())
    assert Scale.built == 1
    np.testing.assert_array_equal(out["features"][:, 0], [0, 0.5, 1, 1.5])


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        ("as_list", "data.preprocess (userpkg.code:as_list) returned list, expected a dict"),
        ("unequal", "columns have different lengths (features: 4, label: 3)"),
        ("with_text", "column 'caption' is <U1"),
        ("no_label", "returned no column 'label' (the label, data.label_column)"),
        ("raises", "raised on a batch of /d/train/part-0.parquet: KeyError: 'b'"),
    ],
)
def test_what_a_preprocessing_returns_is_checked_and_named(userpkg, fn, message):
    with pytest.raises(UserCodeError) as e:
        Preprocessor(_spec(fn), "train", None, "", None).batch(_batch())
    assert message in str(e.value)


def test_labels_outside_the_classes_follow_the_bad_record_policy(userpkg):
    batch = _batch()
    batch["label"] = np.array([0, 7, 2, 1])
    with pytest.raises(DataError, match="bad record in /d/train/part-0.parquet.*outside"):
        Preprocessor(_spec("double"), "train", None, "", None).batch(batch)
    spec = _spec("double")
    spec.bad_records = "skip"
    out = Preprocessor(spec, "train", None, "", None).batch(batch)
    assert list(out["label"]) == [0, 2, 1] and len(out[ROW_DIGEST_COLUMN]) == 3


def _workload(userpkg, model: str, loss: str | None = None, overrides=()):
    from pipeline.config import load_config
    from pipeline.datasets import Columns
    from pipeline.workload import UserCode, build_workload

    cfg = load_config(None, [f"train.model={model}", "data.feature_columns=[a, b]", *overrides])
    cfg.data.num_classes = 3
    if loss:
        cfg.train.loss = loss
    cols = Columns("table", ["a", "b", "label"], "label", features=["a", "b"], input="features")
    w = build_workload(cfg, cols, UserCode())
    w.facts = {"num_features": 2, "num_classes": 3}
    return w


def test_the_forward_and_the_loss_run_on_the_first_batch(userpkg):
    from pipeline.preflight import _train_side

    rows = {"features": np.ones((4, 2), np.float32), "label": np.array([0, 1, 2, 1])}
    _train_side(_workload(userpkg, "userpkg.code:model"), rows, True)  # fine
    with pytest.raises(UserCodeError) as e:
        _train_side(_workload(userpkg, "userpkg.code:wrong_width"), rows, True)
    assert "train.model (userpkg.code:wrong_width): forward failed on the first batch" in str(
        e.value
    )
    assert "input 'features' float32 [4, 2]" in str(e.value)
    with pytest.raises(UserCodeError) as e:
        _train_side(
            _workload(userpkg, "userpkg.code:model", "userpkg.code:per_row_loss"), rows, True
        )
    assert str(e.value) == (
        "train.loss (userpkg.code:per_row_loss) returned [4], expected a scalar tensor "
        "(reduce it, e.g. .mean())"
    )


def test_a_device_transform_runs_before_the_forward_and_sets_the_facts(userpkg):
    from pipeline.preflight import _train_side

    rows = {"features": np.ones((4, 2), np.float32), "label": np.array([0, 1, 2, 1])}
    widen = ["data.device_transform=userpkg.code:widen", "data.device_transform_args.copies=3"]
    # the model factory is told the width the transform makes (6), not the data group's (2)
    facts = _train_side(_workload(userpkg, "userpkg.code:model", overrides=widen), rows, True)
    assert facts["num_features"] == 6 and facts["input_shape"] == (6,)


@pytest.mark.parametrize(
    "transform, message",
    [
        (
            "drop_features",
            "data.device_transform: the train batch it returns has no tensor 'features' (the "
            "model's input, train.input_column); it has: label",
        ),
        (
            "tensor_only",
            "data.device_transform (userpkg.code:tensor_only) returned Tensor on a train batch, "
            "expected the batch: a dict of tensors keyed by column",
        ),
        (
            "divide_by_zero",
            "data.device_transform (userpkg.code:divide_by_zero) raised on a train batch: "
            "ZeroDivisionError: division by zero",
        ),
    ],
)
def test_a_device_transform_that_breaks_the_batch_is_named(userpkg, transform, message):
    from pipeline.preflight import _train_side

    rows = {"features": np.ones((4, 2), np.float32), "label": np.array([0, 1, 2, 1])}
    w = _workload(
        userpkg, "userpkg.code:model", overrides=[f"data.device_transform=userpkg.code:{transform}"]
    )
    with pytest.raises(UserCodeError) as e:
        _train_side(w, rows, True)
    assert str(e.value) == message


def test_a_device_transform_is_also_checked_on_the_validation_batch(userpkg):
    from pipeline.preflight import _train_side

    rows = {"features": np.ones((4, 2), np.float32), "label": np.array([0, 1, 2, 1])}
    w = _workload(
        userpkg, "userpkg.code:model", overrides=["data.device_transform=userpkg.code:widen"]
    )
    # the same steps on both splits: the model takes both batches
    assert _train_side(w, rows, True, dict(rows))["num_features"] == 4
    # a transform that widens train batches only: the model (4 wide) fails on validation's
    w = _workload(
        userpkg,
        "userpkg.code:model",
        overrides=["data.device_transform=userpkg.code:widen_train_only"],
    )
    with pytest.raises(UserCodeError) as e:
        _train_side(w, rows, True, dict(rows))
    assert str(e.value).startswith(
        "train.model (userpkg.code:model): forward failed on the first validation batch "
        "(input 'features' float32 [4, 2]): RuntimeError: "
    )
    w = _workload(
        userpkg, "userpkg.code:model", overrides=["data.device_transform=userpkg.code:tensor_only"]
    )
    with pytest.raises(UserCodeError, match="returned Tensor on a train batch"):
        _train_side(w, rows, False, dict(rows))


def test_a_preprocessing_that_drops_rows_still_gets_the_bad_record_policy(userpkg, tmp_path):
    (tmp_path / "userpkg" / "drop.py").write_text(
        "def drop_first(batch):\n"
        "    return {'features': batch['a'][1:, None], 'label': batch['label'][1:]}\n"
    )
    batch = _batch()
    batch["label"] = np.array([0, 1, 7, 2])  # 7: outside the 3 classes, row 1 of the output
    spec = _spec("x")
    spec.preprocess = UserCallable("data.preprocess", "userpkg.drop:drop_first")
    spec.bad_records = "skip"
    out = Preprocessor(spec, "train", None, "", None).batch(batch)
    assert list(out["label"]) == [1, 2] and len(out[ROW_DIGEST_COLUMN]) == 2
    spec.bad_records = "fail"
    with pytest.raises(DataError, match="bad record in /d/train/part-0.parquet, a row: label 7"):
        Preprocessor(spec, "train", None, "", None).batch(_batch() | {"label": batch["label"]})


def test_what_a_loop_reports_and_saves_may_hold_numpy_values(tmp_path):
    import torch
    from ray.train import Checkpoint

    from pipeline.train.context import STATE_FILE, TrainContext, _plain, torch_dtypes

    assert _plain(np.float32(0.5)) == 0.5 and _plain(np.array([1, 2])) == [1, 2]
    assert _plain(torch.tensor(3.0)) == 3.0
    assert torch_dtypes({"tokens": "uint16", "x": "float16"})["tokens"] == torch.uint16
    # state.pt keeps the user's own keys as given; the pipeline's epoch count beside them
    ctx = TrainContext.__new__(TrainContext)
    ctx.epoch, ctx.history = 2, [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}]
    user = {
        "epoch": 2,
        "model": {"w": torch.ones(2)},
        "best": np.float64(0.9),
    }
    torch.save(ctx._saved(user), tmp_path / STATE_FILE)
    ctx._checkpoint = Checkpoint.from_directory(str(tmp_path))
    state, done, history = ctx._load_state()
    assert done == 3 and len(history) == 3
    assert state["epoch"] == 2 and set(state) == {"epoch", "model", "best"}
    torch.save(ctx._saved({"model": {}}), tmp_path / STATE_FILE)
    state, done, _ = ctx._load_state()
    assert state == {"model": {}} and done == 3
