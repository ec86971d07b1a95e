"""``prepare --format iceberg``: the bundled datasets written as a table with a split column,
as lakehouse users keep them (one table, ``split`` = train / validation)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.config import PipelineConfig
from pipeline.errors import DataError, first_line
from pipeline.prepare import Source, split_indices

SPLIT_COLUMN = "split"


def split_table(src: Source, validation_fraction: float = 0.2, seed: int = 0) -> pa.Table:
    """image (encoded bytes), label, split: every row of ``src`` once."""
    train_idx, val_idx = split_indices(src.labels, validation_fraction, seed)
    order = np.concatenate([train_idx, val_idx])
    return pa.table(
        {
            "image": pa.array([src.images[i] for i in order], pa.binary()),
            "label": pa.array(src.labels[order], pa.int64()),
            SPLIT_COLUMN: pa.array(["train"] * len(train_idx) + ["validation"] * len(val_idx)),
        }
    )


def write_iceberg(table: pa.Table, cfg: PipelineConfig, name: str, *, overwrite: bool) -> dict:
    """Create ``name`` (<namespace>.<table>) in data.catalog and append ``table`` as one
    snapshot; an existing table is refused unless ``overwrite``."""
    from pyiceberg.exceptions import NoSuchTableError

    from pipeline.sources.iceberg import catalog_properties, load_catalog

    if "." not in name:
        raise DataError(f"--table {name}: expected <namespace>.<table>")
    props = catalog_properties(cfg)
    catalog = load_catalog(props)
    namespace = name.rsplit(".", 1)[0]
    try:
        catalog.create_namespace_if_not_exists(namespace)
        try:
            catalog.load_table(name)
            if not overwrite:
                raise DataError(
                    f"iceberg table {name} already exists in catalog '{props['name']}'; pass "
                    "--overwrite to replace it"
                )
            catalog.drop_table(name)
        except NoSuchTableError:
            pass
        ice = catalog.create_table(name, schema=table.schema)
        ice.append(table)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot write iceberg table {name}: {first_line(e)}") from None
    snapshot = ice.current_snapshot().snapshot_id
    return {"table": name, "catalog": props["name"], "snapshot": snapshot, "rows": table.num_rows}
