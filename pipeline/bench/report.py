"""The bench's figures: ratios, advice on data-group CPUs, and the table it prints."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.bench.paths import ALL_PATHS

if TYPE_CHECKING:
    from pipeline.bench.run import BenchOptions

import math

ADVICE_HEADROOM = 1.25


def advise_data_cpus(per: dict, model: str) -> dict:
    """Data-group CPUs per train worker that keep ``model`` fed: the rows/s its steps take when
    they never wait, over the rows/s one data core preprocesses, plus headroom.

    The per-core rate is the ray path's own when the bench could time its data tasks (at least
    0.1 of a core, on the embedded Ray: on a cluster they run on other machines), else the
    limit's, measured on the machine running the bench: usually above what the ray path
    reaches (0.65-0.88 of it on the 2-core machine of benchmarks/RESULTS.md), so the advice
    is then a floor. Without either rate, ``data_cpus_per_train_worker`` is None and
    ``missing`` says what to add."""
    ray_path = per["ray"]
    need = ray_path.get("model_rows_per_s") or 0.0
    out: dict = {
        "model": model,
        "model_rows_per_s": need,
        "from_first_epoch": len(ray_path["epochs"]) == 1,  # see measure_ray
        "data_cpus_per_train_worker": None,
    }
    source = next((p for p in ("ray", "limit") if per.get(p, {}).get("rows_per_data_core_s")), None)
    if source is None:
        out["missing"] = (
            "no per-core rate: the data tasks used under 0.1 of a core; add limit to --paths"
        )
    elif need <= 0:
        out["missing"] = "no model rate: no rows after the first epoch"
    else:
        per_core = per[source]["rows_per_data_core_s"]
        out.update(
            rows_per_data_core_s=per_core,
            per_core_from=source,
            data_cores_needed=need / per_core,
            data_cpus_per_train_worker=max(1, math.ceil(ADVICE_HEADROOM * need / per_core)),
        )
    return out


def add_epoch_rates(epochs: list[dict]) -> None:
    """Each epoch's rows/s over the whole epoch and from its first batch (rows over the epoch's
    seconds less its first-batch wait ``ttfb_s``): what the stream delivers once it runs,
    next to what an epoch's restart costs. In place."""
    for e in epochs:
        e["rows_per_s"] = e["rows"] / e["seconds"] if e["seconds"] > 0 else None
        streaming = e["seconds"] - (e.get("ttfb_s") or 0.0)
        e["rows_per_s_from_first_batch"] = e["rows"] / streaming if streaming > 0 else None


def finalize(results: dict, opts: BenchOptions) -> dict:
    """Top-level keys from the primary storage (S3 when measured: the product's path)."""
    primary = "s3" if "s3" in results["storages"] else "local"
    per = results["storages"][primary]
    results["primary_storage"] = primary
    for path in ALL_PATHS:
        if path in per:
            results[path] = per[path]["rows_per_s"]
    for p in results["storages"].values():
        if "ray" in p and "limit" in p:
            p["ray"]["efficiency"] = efficiency(p["ray"], p["limit"]["rows_per_s"])
    if "model_ceiling" in per:
        results["model_ceiling"] = per["model_ceiling"]["rows_per_s"]
        for path in ("dataloader", "ray"):
            if path in per:
                results[f"{path}_vs_model_ceiling"] = (
                    per[path]["rows_per_s"] / per["model_ceiling"]["rows_per_s"]
                )
    if "ray" in per:
        results["ttfb_s"] = per["ray"]["ttfb_s"]
        results["peak_memory_bytes"] = per["ray"]["peak_memory_bytes"]
        results["fit_startup_s"] = per["ray"]["fit_startup_s"]
        results["teardown_s"] = per["ray"]["teardown_s"]
        results["data_wait_fraction"] = per["ray"]["data_wait_fraction"]
        if "dataloader" in per:
            results["ray_vs_dataloader"] = (
                per["ray"]["rows_per_s"] / per["dataloader"]["rows_per_s"]
            )
        if "limit" in per:
            results["ray_vs_limit"] = per["ray"]["rows_per_s"] / per["limit"]["rows_per_s"]
            results["efficiency"] = per["ray"]["efficiency"]
        if "mosaic" in per:
            results["ray_vs_mosaic"] = per["ray"]["rows_per_s"] / per["mosaic"]["rows_per_s"]
        if per.get("advice"):
            results["advised_data_cpus_per_train_worker"] = per["advice"][
                "data_cpus_per_train_worker"
            ]  # None when the advice lacks a rate (see advice.missing)
    results["model"] = opts.model
    return results


def efficiency(ray_path: dict, limit_rows_per_s: float) -> dict:
    """The ray path's rows/s over the limit's: each epoch, the epochs after the first together
    (None with one epoch), and the whole run."""
    epochs = ray_path["epochs"]
    later = epochs[1:]
    later_rate = sum(e["rows"] for e in later) / sum(e["seconds"] for e in later) if later else None
    return {
        "epochs": [e["rows"] / e["seconds"] / limit_rows_per_s for e in epochs],
        "later_epochs": later_rate / limit_rows_per_s if later_rate else None,
        "all_epochs": ray_path["rows_per_s"] / limit_rows_per_s,
    }


def format_table(results: dict) -> str:
    lines = [
        f"{'storage':8} {'path':11} {'rows/s':>10} {'MB/s':>8} {'vs limit':>9} "
        f"{'peak mem':>10}  notes"
    ]
    for name, per in results["storages"].items():
        limit = per.get("limit", {}).get("rows_per_s")
        for path in ALL_PATHS:
            if path not in per:
                continue
            r = per[path]
            notes = []
            if r.get("rows_per_data_core_s"):
                notes.append(
                    f"{r['data_cores']:.2f} data cores x "
                    f"{r['rows_per_data_core_s']:.0f} rows/s each"
                )
            if r.get("ttfb_s") is not None:
                notes.append(f"first batch {r['ttfb_s']:.2f}s")
            if r.get("shard_to_first_batch_s") is not None:
                notes.append(f"{r['shard_to_first_batch_s']:.2f}s after the shard request")
            if path == "ray":
                epochs = [e["rows"] / e["seconds"] for e in r["epochs"]]
                if len(epochs) > 1:
                    notes.append(
                        f"epoch 1 {epochs[0]:.0f} rows/s, "
                        f"later {sum(epochs[1:]) / len(epochs[1:]):.0f}"
                    )
                notes += [
                    f"fit start-up {r['fit_startup_s']:.1f}s",
                    f"tear-down {r['teardown_s']:.1f}s",
                ]
            # without a model the loop only waits for data
            if results.get("model") and path in ("dataloader", "ray"):
                notes.append(
                    f"{results['model']} on {r['device']} waits for data "
                    f"{100 * r['data_wait_fraction']:.0f}%"
                )
            ratio = f"{r['rows_per_s'] / limit:.2f}x" if limit else "-"
            lines.append(
                f"{name:8} {path:11} {r['rows_per_s']:>10.0f} {r['mb_per_s']:>8.1f} {ratio:>9} "
                f"{r['peak_memory_bytes'] / 2**20:>8.0f}Mi  {', '.join(notes)}"
            )
        c = per.get("model_ceiling")
        if c:
            ratio = f"{c['rows_per_s'] / limit:.2f}x" if limit else "-"
            lines.append(
                f"{name:8} {'ceiling':11} {c['rows_per_s']:>10.0f} {'':>8} {ratio:>9} {'':>10}  "
                f"{c['what']}: {c['model']} on {c['device']}, {c['steps']} steps on one batch "
                f"of {c['batch_rows']} kept on the device"
            )
    for name, per in results["storages"].items():
        for path in ALL_PATHS:
            epochs = per.get(path, {}).get("epochs")
            if not epochs:
                continue

            def each(key: str, fmt: str, epochs=epochs) -> str:
                return " / ".join("-" if e.get(key) is None else fmt.format(e[key]) for e in epochs)

            lines.append(
                f"epochs, {name} {path}: rows/s {each('rows_per_s', '{:.0f}')}; "
                f"from the first batch {each('rows_per_s_from_first_batch', '{:.0f}')}; "
                f"first-batch wait {each('ttfb_s', '{:.2f}')} s"
            )
    for name, per in results["storages"].items():
        eff = per.get("ray", {}).get("efficiency")
        if eff:
            each = ", ".join(f"{e:.2f}" for e in eff["epochs"])
            later = f"{eff['later_epochs']:.2f}" if eff["later_epochs"] is not None else "-"
            where = " on the same data cores" if results.get("layout") == "pinned" else ""
            lines.append(
                f"efficiency, {name}: ray rows/s over limit's{where}: per epoch {each}; "
                f"epochs after the first {later}; all epochs {eff['all_epochs']:.2f}"
            )
    for name, per in results["storages"].items():
        for path in ("limit", "dataloader", "mosaic", "ray"):
            for key, what in (
                ("cpu_cores_by_role", "cores used"),
                ("data_node_cores_by_role", "data cores used"),
                ("other_cores_by_role", "other cores used"),
            ):
                split = ", ".join(
                    f"{k} {v:.2f}" for k, v in per.get(path, {}).get(key, {}).items() if v >= 0.01
                )
                if split:
                    lines.append(f"{what}, {name} {path}: {split}")
    for name, per in results["storages"].items():
        a = per.get("advice")
        if not a:
            continue
        if a["data_cpus_per_train_worker"] is None:
            lines.append(f"advice, {name}: not computed: {a['missing']}")
            continue
        source, floor = "ray path", ""
        if a["per_core_from"] == "limit":
            source, floor = "limit path, on the machine running the bench", " at least"
        warm = ""
        if a["from_first_epoch"]:
            warm = " (epoch 1 only, with warm-up: --epochs 2 measures it steadier)"
        lines.append(
            f"advice, {name}: {a['model']} takes {a['model_rows_per_s']:.0f} rows/s per train "
            f"worker when it never waits{warm}; one data core preprocesses "
            f"{a['rows_per_data_core_s']:.0f} rows/s ({source}), "
            f"so each train worker needs {a['data_cores_needed']:.2f} data cores: give the data "
            f"group{floor} {a['data_cpus_per_train_worker']} CPU(s) per train worker "
            f"({ADVICE_HEADROOM:.2f}x headroom)"
        )
    mc = results.get("memory_check")
    if mc:
        lines.append(
            f"memory: 1x object store of data ({mc['1x']['rows']} rows) peak "
            f"{mc['1x']['peak_memory_bytes'] / 2**20:.0f}Mi, 5x ({mc['5x']['rows']} rows) peak "
            f"{mc['5x']['peak_memory_bytes'] / 2**20:.0f}Mi: "
            f"ratio {mc['peak_ratio_5x_to_1x']:.2f}; "
            f"spilled {mc['5x']['spilled_bytes'] >> 20} MiB"
        )
    return "\n".join(lines)
