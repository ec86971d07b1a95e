"""User code named in the config: import strings ``package.module:attr`` plus keyword arguments.

Each is resolved with importlib where it runs (the driver, a data task, a train worker), so
only the string travels across the cluster. From Python (``pipeline.run(model=...)``) the
object itself may stand in for the string; it then travels as Ray pickles it.

Calling convention, the same for every extension point: a function is called with the
point's positional arguments plus ``**args``; a class is instantiated once with ``**args``
and the instance is then called with the positional arguments (expensive set-up goes in
``__init__``). A callable that takes a parameter named ``split`` also gets ``split=``
("train" or "validation").
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import UserCodeError, first_line

IMPORT_STRING = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_import_string(text: str) -> bool:
    return bool(IMPORT_STRING.match(text))


def check_import_string(text: str, field_name: str) -> str:
    if not is_import_string(text):
        raise ValueError(
            f"{field_name}: {text!r} is not an import string: expected package.module:attr "
            "(e.g. mypkg.models:build_model)"
        )
    return text


def _where(group: str | None) -> str:
    if not group:
        return ""
    return " on the driver" if group == "driver" else f" on the {group} group"


@functools.lru_cache(maxsize=64)
def _import(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def load(spec: str, field_name: str, group: str | None = None) -> Any:
    """The object an import string names; one line naming the field when it cannot be had."""
    module_name, _, attr = spec.partition(":")
    try:
        obj = _import(spec)
    except ModuleNotFoundError as e:
        raise UserCodeError(
            f"{field_name}: cannot import '{module_name}'{_where(group)}: {first_line(e)}"
        ) from None
    except AttributeError:
        raise UserCodeError(
            f"{field_name}: module '{module_name}' has no attribute '{attr}'{_where(group)}"
        ) from None
    except Exception as e:  # the module itself raised while importing
        raise UserCodeError(
            f"{field_name}: importing '{module_name}'{_where(group)} failed: "
            f"{e.__class__.__name__}: {first_line(e)}"
        ) from None
    if not callable(obj):
        raise UserCodeError(
            f"{field_name}: '{spec}' is a {type(obj).__name__}, not a function or class"
        )
    return obj


@dataclass
class UserCallable:
    """One extension point: the field it comes from, an import string or an object, and the
    keyword arguments it is built or called with. Picklable when its object is."""

    field: str
    spec: str | None = None
    obj: Any = None
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        if self.spec:
            return self.spec
        return getattr(self.obj, "__qualname__", type(self.obj).__name__)

    def target(self, group: str | None = None) -> Any:
        """The function or class itself (resolved here, where it runs)."""
        if self.obj is not None:
            if not callable(self.obj):
                raise UserCodeError(f"{self.field}: {self.obj!r} is not a function or class")
            return self.obj
        if self.spec is None:
            raise UserCodeError(f"{self.field}: not set")
        return load(self.spec, self.field, group)

    def build(self, group: str | None = None, **extra_args: Any) -> Built:
        """A ready callable: a class is instantiated with ``args`` (+ ``extra_args``), a
        function gets them bound. Errors in a constructor name the field and its first line."""
        target = self.target(group)
        kwargs = {**extra_args, **self.args}
        if inspect.isclass(target):
            try:
                instance = target(**kwargs)
            except Exception as e:
                raise UserCodeError(
                    f"{self.field}: {self.name}(**{_arg_names(kwargs)}) raised"
                    f"{_where(group)}: {e.__class__.__name__}: {first_line(e)}"
                ) from None
            return Built(self.field, self.name, instance, {}, _split_param(instance))
        return Built(self.field, self.name, target, kwargs, _split_param(target))


def _arg_names(kwargs: dict) -> str:
    return "{" + ", ".join(sorted(kwargs)) + "}"


def accepts(fn: Any, name: str) -> bool:
    """Whether ``fn`` (a function or a callable instance) takes a parameter called ``name``."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def _split_param(fn: Any) -> bool:
    return accepts(fn, "split")


@dataclass
class Built:
    """A built extension point: call it with the point's positional arguments, and ``split``
    when the callable takes it (looked up once, not per call)."""

    field: str
    name: str
    fn: Any
    kwargs: dict[str, Any]
    takes_split: bool = False

    def __call__(self, *args: Any, split: str | None = None) -> Any:
        if self.takes_split and split is not None:
            return self.fn(*args, split=split, **self.kwargs)
        return self.fn(*args, **self.kwargs)


def call_factory(ref: UserCallable, facts: dict[str, Any], group: str | None = None) -> Any:
    """``factory(**args)``, with the dataset's facts (``num_classes``, ``num_features``,
    ``in_channels``, ``image_size``, ...) filled into parameters of those names that
    ``args`` leaves unset. A factory that raises is named with its first line."""
    target = ref.target(group)
    kwargs = dict(ref.args)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        params = {}
    for key, value in facts.items():
        if key in params and key not in kwargs and value is not None:
            kwargs[key] = value
    try:
        return target(**kwargs)
    except Exception as e:
        raise UserCodeError(
            f"{ref.field}: {ref.name}(**{_arg_names(kwargs)}) raised{_where(group)}: "
            f"{e.__class__.__name__}: {first_line(e)}"
        ) from None
