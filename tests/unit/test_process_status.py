"""frontgate.process_status: the router's applied route table version in its status record, and
the live records `frontgate route --wait` reads."""
from __future__ import annotations

import json
import os

from frontgate.process_status import ProcessStatus, live_records, read_status


def test_the_route_table_version_is_recorded_at_start_and_at_each_swap(tmp_path):
    config = tmp_path / "mux-router.toml"
    status = ProcessStatus(tmp_path / "status", "mux-router", config, process="mux-router_00")
    status.routes_applied(4)                      # before the start: carried by the start record
    assert read_status(tmp_path / "status", "mux-router_00", os.getpid()) is None
    status.started("fp")
    record = read_status(tmp_path / "status", "mux-router_00", os.getpid())
    assert (record["routes_version"], record["last"]["event"]) == (4, "start")
    status.reloaded(error="bad")
    status.routes_applied(5)                      # a swap keeps the last event's account
    record = read_status(tmp_path / "status", "mux-router_00", os.getpid())
    assert (record["routes_version"], record["last"]["outcome"], record["reloads"]) == (5, "error", 1)


def test_live_records_are_this_stage_and_config_and_a_live_pid(tmp_path):
    config = tmp_path / "configs" / "mux-router.toml"
    mine = {"stage": "mux-router", "pid": os.getpid(), "config": str(config), "routes_version": 1}
    records = {"a": mine,
               "dead": mine | {"pid": 2**22 + 1},                    # above pid_max's default: no such process
               "other-config": mine | {"config": str(tmp_path / "elsewhere.toml")},
               "checker": mine | {"stage": "health-checker"}}
    for name, record in records.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
    (tmp_path / "broken.json").write_text("{")
    relative = os.path.relpath(config, os.getcwd())
    assert live_records(tmp_path, "mux-router", relative) == [mine]
