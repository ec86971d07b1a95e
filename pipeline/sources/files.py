"""Splits made of files (Parquet, CSV, JSON lines): found by file or folder name under a
dataset root, as Hugging Face lays datasets out (``data/train-00000-of-00002.parquet``,
``train/part-0.parquet``, ``validation``, ``valid``, ``val``, ``test``), or one URI per split."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import ClassVar

from pipeline.config import PipelineConfig
from pipeline.errors import DataError
from pipeline.sources.base import Split
from pipeline.storage import Location, check_bucket, list_files, resolve

log = logging.getLogger(__name__)

SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}
_TOKEN = re.compile(r"[-_.]")


def split_of(relpath: str) -> str | None:
    """The split a file belongs to, from the first folder or file-name word that names one:
    ``data/train-00000-of-00002.parquet`` and ``train/part-0.parquet`` are both train."""
    parts = relpath.strip("/").split("/")
    parts[-1] = parts[-1].rsplit(".", 1)[0]
    for part in parts:
        for token in _TOKEN.split(part.lower()):
            if token in SPLIT_NAMES:
                return SPLIT_NAMES[token]
    return None


@dataclass
class FileSplit(Split):
    """One split's files: where they are and which it reads."""

    loc: Location
    files: list[str]
    sizes: dict[str, int] = field(default_factory=dict)  # path -> bytes, from the listing

    suffixes: ClassVar[tuple[str, ...]] = ()  # set by each format
    kind: ClassVar[str] = ""  # "Parquet", "CSV": how messages name the files

    @property
    def where(self) -> str:
        return self.loc.uri

    @property
    def fs(self):
        return self.loc.fs

    @property
    def uri_prefix(self) -> str:
        return "s3://" if self.loc.is_s3 else ""

    def read_args(self, shuffle, read_tasks: int, ray_args: dict) -> dict:
        """What every Ray file reader takes: the files' order per epoch, the file paths as a
        column (errors name the file), one read task per file unless data.read_tasks says."""
        return dict(
            filesystem=self.loc.fs,
            shuffle=shuffle,
            include_paths=True,
            override_num_blocks=read_tasks or len(self.files),
            **ray_args,
        )


def discover_splits(
    loc: Location, suffixes: tuple[str, ...], kind: str, sizes: dict[str, int] | None = None
) -> dict[str, list[str]]:
    """Every file with one of ``suffixes`` under a dataset root, grouped by split (files of no
    split left out); ``sizes`` gets each file's size."""
    files = list_files(loc, suffixes, sizes=sizes)
    if not files:
        raise DataError(f"no {kind} files under {loc.uri} ({loc.field})")
    root = loc.path.rstrip("/")
    found: dict[str, list[str]] = {}
    for path in files:
        rel = path[len(root) :].lstrip("/") if path.startswith(root) else path
        split = split_of(rel)
        if split is not None:
            found.setdefault(split, []).append(path)
    return found


def find_file_splits(cfg: PipelineConfig, make: type[FileSplit]) -> tuple[FileSplit, FileSplit]:
    """The train and validation files: named by data.train_uri / data.validation_uri, else
    found by name under data.uri (validation: validation/valid/val/dev, else test).
    ``make`` is the format's split."""
    data = cfg.data
    suffixes, kind = make.suffixes, make.kind
    found: dict[str, list[str]] | None = None
    root = None
    sizes: dict[str, int] = {}
    if data.train_uri is None or data.validation_uri is None:
        root = resolve(data.uri, cfg.s3, "data.uri")
        check_bucket(root, cfg.s3)
        found = discover_splits(root, suffixes, kind, sizes)

    def one(name: str, uri: str | None, field_name: str) -> FileSplit:
        if uri is not None:
            loc = resolve(uri, cfg.s3, field_name)
            check_bucket(loc, cfg.s3)
            own: dict[str, int] = {}
            files = list_files(loc, suffixes, sizes=own)
            if not files:
                raise DataError(f"no {kind} files under {loc.uri} ({field_name})")
            return make(name, loc, files, own)
        files = found.get(name)
        if not files and name == "validation" and found.get("test"):
            log.info("no validation split under %s: validating on its test split", root.uri)
            files = found["test"]
        if not files:
            names = "train" if name == "train" else "validation, valid, val, dev or test"
            have = ", ".join(f"{k} ({len(v)} files)" for k, v in sorted(found.items())) or "none"
            raise DataError(
                f"no {name} split under {root.uri} (data.uri): expected {kind} files or folders "
                f"named {names}; splits found: {have}; or set data.{name}_uri"
            )
        return make(name, root, files, {p: sizes[p] for p in files})

    return (
        one("train", data.train_uri, "data.train_uri"),
        one("validation", data.validation_uri, "data.validation_uri"),
    )
