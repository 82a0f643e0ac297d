"""frontgate.health_state: the file format, atomic writes, and the router's follower."""
from __future__ import annotations

import json
import logging
import os

import pytest

from frontgate import health_state
from frontgate.health_state import HealthState, HealthStateError, ServerState, StateFollower

NOW = 1_795_423_162.7


MAPS = "maps/127.0.0.1:3000"
COLTRANE = "coltrane/127.0.0.1:8000"


def two_servers(maps: str = "up", coltrane: str = "down", generation: int = 1, written_at: float = NOW) -> HealthState:
    return HealthState(generation=generation, written_at=written_at, checker_pid=4242, servers={
        MAPS: ServerState(maps, NOW - 60, {"ok": maps == "up", "took_ms": 2.5, "detail": "HTTP 200"}),
        COLTRANE: ServerState(coltrane, NOW - 5, {"ok": coltrane == "up", "took_ms": 1000.0,
                                                  "detail": "timeout after 1s"})})


class Clock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- format

def test_round_trip_matches_the_documented_format(tmp_path):
    path = tmp_path / "health.json"
    health_state.write_atomic(path, two_servers())
    doc = json.loads(path.read_text())
    assert doc == {
        "format": 1, "generation": 1, "written_at": NOW, "checker_pid": 4242,
        "servers": {
            COLTRANE: {"state": "down", "since": NOW - 5,
                       "last_check": {"ok": False, "took_ms": 1000.0, "detail": "timeout after 1s"}},
            MAPS: {"state": "up", "since": NOW - 60, "last_check": {"ok": True, "took_ms": 2.5, "detail": "HTTP 200"}},
        }}
    assert health_state.read(path) == two_servers()


def test_design_document_example_parses():
    example = """{"format": 1, "generation": 42, "written_at": 1795423162.7, "checker_pid": 1234,
     "servers": {"maps/127.0.0.1:3000": {"state": "up", "since": 1795423100.1,
                 "last_check": {"ok": true, "took_ms": 2.1, "detail": "HTTP 200"}}}}"""
    state = health_state.loads(example)
    assert state.generation == 42 and state.checker_pid == 1234
    assert state.servers[MAPS] == ServerState("up", 1795423100.1, {"ok": True, "took_ms": 2.1, "detail": "HTTP 200"})


def valid_doc() -> dict:
    return json.loads(health_state.dumps(two_servers()))


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(format=2), "format: expected 1, got 2"),
    (lambda d: d.pop("format"), "format: expected 1, got None"),
    (lambda d: d.update(generation=-1), "generation: expected a non-negative integer"),
    (lambda d: d.update(generation=1.5), "generation: expected a non-negative integer"),
    (lambda d: d.update(generation=True), "generation: expected a non-negative integer"),
    (lambda d: d.update(written_at="now"), "written_at: expected a number"),
    (lambda d: d.pop("checker_pid"), "checker_pid: expected a non-negative integer"),
    (lambda d: d.update(servers=[]), "servers: expected an object"),
    (lambda d: d["servers"][MAPS].update(state="sideways"), "state: expected 'up' or 'down'"),
    (lambda d: d["servers"][MAPS].update(since=None), ".since: expected a number"),
    (lambda d: d["servers"][MAPS].update(since=-3), ".since: negative time"),
    (lambda d: d["servers"][MAPS].pop("last_check"), ".last_check: expected an object"),
    (lambda d: d["servers"][MAPS]["last_check"].update(ok="yes"), ".last_check.ok: expected true or false"),
    (lambda d: d["servers"][MAPS]["last_check"].update(took_ms="fast"), ".last_check.took_ms: expected a number"),
    (lambda d: d["servers"][MAPS]["last_check"].pop("detail"), ".last_check.detail: expected a string"),
])
def test_invalid_content_is_rejected_with_the_field_named(mutate, message):
    doc = valid_doc()
    mutate(doc)
    with pytest.raises(HealthStateError) as e:
        health_state.loads(json.dumps(doc))
    assert message in str(e.value)


@pytest.mark.parametrize("data", [b"", b"{", b'{"format": 1, "generation": 4', b"\xff\xfe\x00garbage",
                                  b"[]", b"null", b'{"format": 1, "written_at": NaN}'])
def test_garbage_and_torn_content_is_rejected(data):
    with pytest.raises(HealthStateError):
        health_state.loads(data)


def test_nan_times_are_rejected():
    doc = valid_doc()
    doc["written_at"] = float("nan")
    with pytest.raises(HealthStateError, match="written_at"):
        health_state.loads(json.dumps(doc))


# --------------------------------------------------------------------------- atomic writes

def test_write_atomic_replaces_the_file_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "health.json"
    for generation in range(1, 6):
        health_state.write_atomic(path, two_servers(generation=generation))
        assert health_state.read(path).generation == generation
    assert os.listdir(tmp_path) == ["health.json"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_write_atomic_gives_a_new_inode_each_time(tmp_path):
    # A reader that holds the old file open keeps reading the old content whole: the write never
    # modifies a file in place.
    path = tmp_path / "health.json"
    health_state.write_atomic(path, two_servers(generation=1))
    with open(path, "rb") as old:
        health_state.write_atomic(path, two_servers(generation=2))
        assert health_state.loads(old.read()).generation == 1
    assert health_state.read(path).generation == 2


def test_write_atomic_failure_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "health.json"
    health_state.write_atomic(path, two_servers(generation=1))

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(health_state.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        health_state.write_atomic(path, two_servers(generation=2))
    assert health_state.read(path).generation == 1
    assert os.listdir(tmp_path) == ["health.json"]


def test_read_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        health_state.read(tmp_path / "nope.json")


# --------------------------------------------------------------------------- the follower

def test_follower_reports_down_servers_from_a_fresh_file(tmp_path):
    path = tmp_path / "health.json"
    health_state.write_atomic(path, two_servers(maps="up", coltrane="down"))
    f = StateFollower(path, stale_after=15, clock=Clock())
    f.refresh()
    assert not f.is_down(MAPS)
    assert f.is_down(COLTRANE)
    assert not f.is_down("unknown/127.0.0.1:1"), "a server the checker does not know is not down"


def test_follower_fails_open_when_the_file_is_missing(tmp_path, caplog):
    f = StateFollower(tmp_path / "health.json", stale_after=15, clock=Clock())
    with caplog.at_level(logging.WARNING, "frontgate.health_state"):
        for _ in range(3):
            f.refresh()
    assert not f.is_down(COLTRANE)
    assert f.state is None
    assert [r.getMessage() for r in caplog.records].count(
        f"health state {tmp_path / 'health.json'} does not exist: treating all servers as up") == 1


def test_follower_fails_open_when_the_file_is_stale_and_logs_it_once(tmp_path, caplog):
    path = tmp_path / "health.json"
    health_state.write_atomic(path, two_servers(coltrane="down", written_at=NOW))
    clock = Clock(NOW + 10)
    f = StateFollower(path, stale_after=15, clock=clock)
    with caplog.at_level(logging.INFO, "frontgate.health_state"):
        f.refresh()
        assert f.is_down(COLTRANE)
        clock.now = NOW + 15.5               # the checker stopped writing
        assert not f.is_down(COLTRANE), "is_down itself checks the age, even between refreshes"
        for _ in range(5):
            f.refresh()
        assert not f.is_down(COLTRANE)
        stale = [r for r in caplog.records if "is stale" in r.getMessage()]
        assert len(stale) == 1 and stale[0].levelno == logging.WARNING
        assert "written 15.5s ago, limit 15s" in stale[0].getMessage()

        # The checker comes back: fresh again, logged once, the down server is down again.
        health_state.write_atomic(path, two_servers(coltrane="down", generation=2, written_at=NOW + 16))
        for _ in range(3):
            f.refresh()
        assert f.is_down(COLTRANE)
        assert sum("fresh again" in r.getMessage() for r in caplog.records) == 1


def test_follower_treats_a_file_from_the_future_as_stale(tmp_path):
    path = tmp_path / "health.json"
    health_state.write_atomic(path, two_servers(coltrane="down", written_at=NOW + 3600))
    f = StateFollower(path, stale_after=15, clock=Clock(NOW))
    f.refresh()
    assert not f.is_down(COLTRANE)


def test_follower_keeps_the_last_good_state_when_a_torn_or_garbage_file_appears(tmp_path, caplog):
    path = tmp_path / "health.json"
    health_state.write_atomic(path, two_servers(coltrane="down", generation=7))
    f = StateFollower(path, stale_after=15, clock=Clock())
    f.refresh()
    good = f.state
    with caplog.at_level(logging.WARNING, "frontgate.health_state"):
        # A torn write (what a non-atomic writer could leave) and plain garbage, both replacing the file.
        for bad in (health_state.dumps(two_servers(coltrane="up", generation=8))[:40], b"\x00garbage\n"):
            tmp = tmp_path / "tmp"
            tmp.write_bytes(bad)
            os.replace(tmp, path)
            for _ in range(3):
                f.refresh()
            assert f.state is good
            assert f.is_down(COLTRANE), "the bad file's content must not be used"
    invalid = [r for r in caplog.records if "is invalid" in r.getMessage()]
    assert len(invalid) == 2, "each bad file is logged once, not on every poll"
    assert "keeping the last good state" in invalid[0].getMessage()

    health_state.write_atomic(path, two_servers(coltrane="up", generation=9))
    f.refresh()
    assert f.state.generation == 9 and not f.is_down(COLTRANE)


def test_follower_rereads_only_when_the_file_changes(tmp_path, monkeypatch):
    path = tmp_path / "health.json"
    health_state.write_atomic(path, two_servers(generation=1))
    f = StateFollower(path, stale_after=15, clock=Clock())
    reads = []
    real = health_state._read_bytes
    monkeypatch.setattr(health_state, "_read_bytes", lambda p: reads.append(p) or real(p))
    for _ in range(5):
        f.refresh()
    assert len(reads) == 1
    health_state.write_atomic(path, two_servers(generation=2))
    for _ in range(5):
        f.refresh()
    assert len(reads) == 2 and f.state.generation == 2


def test_follower_forgets_the_state_when_the_file_is_removed(tmp_path):
    path = tmp_path / "health.json"
    health_state.write_atomic(path, two_servers(coltrane="down"))
    f = StateFollower(path, stale_after=15, clock=Clock())
    f.refresh()
    assert f.is_down(COLTRANE)
    path.unlink()
    f.refresh()
    assert not f.is_down(COLTRANE)
    health_state.write_atomic(path, two_servers(coltrane="down", generation=2))
    f.refresh()
    assert f.is_down(COLTRANE)
