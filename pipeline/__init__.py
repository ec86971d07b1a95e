"""ray-pipeline: Parquet on S3/MinIO -> Ray Data (CPU group) -> Ray Train (GPU group).

From Python (a RayJob entrypoint of your own, a notebook)::

    import pipeline

    summary = pipeline.run("config.yaml", model=build_model, preprocess=my_preprocess)

``run`` takes the same config as ``ray-pipeline train``; objects given to it stand in for the
config's import strings (``model`` for ``train.model``, ``preprocess`` for
``data.preprocess``, ``loss`` for ``train.loss``, ``loop`` for ``train.loop``,
``device_transform`` for ``data.device_transform``).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["BadRecord", "TrainContext", "run"]


def run(
    config: Any = None,
    *,
    model: Any = None,
    preprocess: Any = None,
    loss: Any = None,
    loop: Any = None,
    device_transform: Any = None,
    address: str | None = None,
    working_dir: str | None = None,
    pip: list[str] | None = None,
    overrides: list[str] = (),
    wait_for_run: bool = False,
) -> dict:
    """Train as ``ray-pipeline train`` does and return the run's summary.

    ``config``: a YAML path, a dict of sections, or a ``PipelineConfig`` (None: defaults);
    ``overrides``: ``--set``-style ``a.b=c`` strings. ``address``: the Ray cluster (default
    ``$RAY_ADDRESS``, else a local Ray). ``wait_for_run``: wait while another live run holds
    ``storage.run_name`` (``--wait-for-run``) instead of refusing. User mistakes raise
    ``pipeline.errors.PipelineError`` with the same one-line message the CLI prints."""
    import copy

    from pipeline.config import (
        PipelineConfig,
        apply_override,
        load_config,
        parse_override,
        validate_config,
    )
    from pipeline.train import run_training
    from pipeline.workload import UserCode

    if isinstance(config, PipelineConfig | dict):
        tree = config.model_dump(mode="json") if isinstance(config, PipelineConfig) else config
        tree = copy.deepcopy(tree)
        for item in overrides:
            apply_override(tree, *parse_override(item))
        cfg = validate_config(tree, "pipeline.run(config=...)")
    else:
        cfg = load_config(config, list(overrides))
    code = UserCode(
        model=model, preprocess=preprocess, loss=loss, loop=loop, device_transform=device_transform
    )
    return run_training(
        cfg, address, code=code, working_dir=working_dir, pip=pip, wait_for_run=wait_for_run
    )


def __getattr__(name: str):  # the CLI stays light: torch and Ray load only when used
    if name == "BadRecord":
        from pipeline.records import BadRecord

        return BadRecord
    if name == "TrainContext":
        from pipeline.train.context import TrainContext

        return TrainContext
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
