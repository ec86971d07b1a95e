"""What a queued run says: its demand, who holds the train group, since when."""

from __future__ import annotations

import calendar

from pipeline.config import load_config
from pipeline.queueing import PlacedGroup, demand_text, holders_text, waiting_line


def test_the_waiting_line_names_the_demand_the_holding_run_and_the_time_waited():
    cfg = load_config(None, ["train.resources_per_worker={CPU: 1}"])
    placed = calendar.timegm((2026, 12, 4, 14, 2, 30, 0, 0, 0))
    groups = [
        PlacedGroup("02000000", "CREATED", frozenset({"train-node"}), placed),
        PlacedGroup("03000000", "PENDING", frozenset(), None),  # ours
        PlacedGroup("04000000", "CREATED", frozenset({"data-node"}), placed),  # not the group
        PlacedGroup("05000000", "REMOVED", frozenset({"train-node"}), placed),
    ]
    holders = holders_text(groups, {"02000000": "digits-a"}, "03000000", {"train-node"})
    line = waiting_line(demand_text(cfg), holders, 45.2)
    assert line == (
        "waiting for the train group: 1 worker x CPU=1 (train.resources_per_worker); "
        "held by run 'digits-a' (job 02000000) since 14:02 UTC; 45 s so far"
    )


def test_gpu_workers_and_unknown_holders_are_named_too():
    cfg = load_config(None, ["train.num_workers=2", "train.use_gpu=true"])
    assert demand_text(cfg) == "2 workers x CPU=1,GPU=1 (train.resources_per_worker)"
    groups = [PlacedGroup("02000000", "CREATED", frozenset({"n"}), None)]
    assert holders_text(groups, {}, "03000000", {"n"}) == "held by another job (job 02000000)"
    assert holders_text([], {}, "03000000", {"n"}).startswith("no other run holds it")
