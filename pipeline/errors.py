"""One exception type per kind of user mistake; the CLI prints each as one line."""

from __future__ import annotations


def first_line(e: object) -> str:
    """The first line of an error's message (pyarrow's run on), or its type when empty."""
    return str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__


class PipelineError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""

    exit_code = 2


class ConfigError(PipelineError):
    """The config file, an override or a value in it is invalid."""


class StorageError(PipelineError):
    """An S3 endpoint, bucket, prefix or local path cannot be used."""


class DataError(PipelineError):
    """The dataset does not match the config: files, schema, columns or records."""


class UserCodeError(PipelineError):
    """User code named in the config (model, preprocessing, loss, loop) cannot be imported,
    built or run as the pipeline calls it."""


class ClusterError(PipelineError):
    """The Ray cluster cannot run the job as configured (e.g. no node matches a selector)."""


class TrackingError(PipelineError):
    """The experiment tracker (tracking.mlflow.uri) does not answer, refuses the credentials,
    or its artifact store cannot be written."""


class RunLeaseError(PipelineError):
    """Another live run holds this run's name (storage.run_name), or this run lost it."""


class KubernetesError(PipelineError):
    """The Kubernetes API, a CRD or a namespace needed for submission is missing."""


def find_pipeline_error(exc: BaseException | None) -> PipelineError | None:
    """Find a PipelineError inside an exception raised through Ray.

    Ray wraps errors from tasks and actors (RayTaskError subclasses the original type),
    and Ray Train collects worker errors in ``worker_failures``; walk all of these.
    """
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)  # RayTaskError keeps the original here
        if isinstance(e, PipelineError) and not isinstance(cause, BaseException):
            return e
        stack.append(cause)
        stack.append(e.__cause__)
        stack.append(e.__context__)
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            stack.extend(failures.values())
        stack.append(getattr(e, "controller_failure", None))
    return None
