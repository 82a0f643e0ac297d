"""health_checker's pure parts: the rise/fall counter and the HTTP probe's request and status line."""
from __future__ import annotations

import asyncio
import errno
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from frontgate.config import Address, App, CheckSpec, Server
from frontgate.config import parse_status_ranges
from health_checker.probes import (body_framing, build_request, check_host, dechunk, describe_error,
                                   judge_body, judge_status, parse_status_line)
from health_checker.rise_fall import RiseFall
from health_checker.schedule import base_interval, next_wait


# --------------------------------------------------------------------------- rise / fall

def run(rf: RiseFall, results: str) -> list[bool]:
    """Feed "+" (success) / "-" (failure) results; the up/down state after each."""
    states = []
    for r in results:
        rf = rf.record(r == "+")
        states.append(rf.up)
    return states


def test_starts_up():
    assert RiseFall.initial(2, 3).up


def test_confirmed_up_server_goes_down_after_fall_failures_in_a_row():
    rf = RiseFall.initial(rise=2, fall=3).record(True)
    assert run(rf, "---") == [True, True, False]


def test_a_success_resets_the_failure_count():
    rf = RiseFall.initial(rise=2, fall=3).record(True)
    assert run(rf, "--+--+--") == [True] * 8
    assert run(rf, "--+---") == [True, True, True, True, True, False]


def test_down_server_comes_back_after_rise_successes_in_a_row():
    rf = RiseFall.initial(rise=2, fall=3).record(True)
    for _ in range(3):
        rf = rf.record(False)
    assert not rf.up
    assert run(rf, "+-+-++") == [False, False, False, False, False, True]


def test_back_up_server_needs_fall_failures_again():
    rf = RiseFall.initial(rise=2, fall=3).record(False)      # down
    rf = rf.record(True).record(True)                         # up again, at full health
    assert rf.up and rf.status() == "3/3 UP"
    assert run(rf, "---") == [True, True, False]


@pytest.mark.parametrize("rise, fall, results, states", [
    # HAProxy's `init-state fully-up` (the default): `fall` failures to go down, the first check included.
    (2, 3, "-", [True]),
    (2, 3, "--", [True, True]),
    (2, 3, "---", [True, True, False]),
    (2, 3, "--+---", [True, True, True, True, True, False]),   # a success in between resets the count
    (2, 1, "-", [False]),
    (1, 1, "-+", [False, True]),
    (5, 2, "-+-", [True, True, True]),
])
def test_fresh_server_starts_fully_up(rise, fall, results, states):
    fresh = RiseFall.initial(rise, fall)
    assert fresh.up and not fresh.transitioning and fresh.status() == f"{fall}/{fall} UP"
    assert run(fresh, results) == states
    assert run(RiseFall.initial(rise, fall, "fully-up"), results) == states


def test_provisional_server_that_fails_its_first_check_goes_down_at_once():
    # init_state = "provisional": up, but health == rise, so the first failure takes it down.
    assert run(RiseFall.initial(rise=2, fall=3, init_state="provisional"), "-") == [False]
    assert run(RiseFall.initial(rise=2, fall=3, init_state="provisional"), "+--") == [True, True, True]


def test_rise_and_fall_of_one():
    assert run(RiseFall.initial(1, 1), "+-+-") == [True, False, True, False]


def test_status_notation_matches_haproxy():
    rf = RiseFall.initial(rise=2, fall=3).record(True)
    assert rf.status() == "3/3 UP"
    rf = rf.record(False)
    assert rf.status() == "2/3 UP"
    rf = rf.record(False).record(False)
    assert rf.status() == "0/2 DOWN"
    rf = rf.record(True)
    assert rf.status() == "1/2 DOWN"


def test_consecutive_counts_for_the_log():
    rf = RiseFall.initial(2, 3).record(True).record(True).record(False).record(False)
    assert (rf.successes, rf.failures) == (0, 2)
    rf = rf.record(True)
    assert (rf.successes, rf.failures) == (1, 0)


def test_new_limits_keep_the_state():
    up = RiseFall.initial(2, 3).record(True)
    down = up.record(False).record(False).record(False)
    assert up.with_limits(5, 5).up and up.with_limits(5, 5).health == 9
    assert run(up.with_limits(1, 1), "-") == [False]
    assert not down.with_limits(1, 10).up
    assert run(down.with_limits(1, 10), "+") == [True]


def test_invalid_limits():
    with pytest.raises(ValueError):
        RiseFall.initial(0, 3)
    with pytest.raises(ValueError):
        RiseFall.initial(2, 3, "half-up")


@given(rise=st.integers(1, 5), fall=st.integers(1, 5), results=st.lists(st.booleans(), max_size=60),
       init_state=st.sampled_from(["fully-up", "provisional"]))
def test_state_only_changes_after_rise_or_fall_identical_results(rise, fall, results, init_state):
    rf = RiseFall.initial(rise, fall, init_state)
    seen_success = False
    streak_ok, streak = None, 0
    for ok in results:
        before = rf.up
        rf = rf.record(ok)
        streak = streak + 1 if ok == streak_ok else 1
        streak_ok = ok
        assert 0 <= rf.health <= rise + fall - 1
        if rf.up != before:
            if rf.up:
                assert ok and streak >= rise
            else:
                # `fall` failures in a row, or the provisional start (no success seen yet)
                assert not ok and (streak >= fall or (init_state == "provisional" and not seen_success))
        seen_success = seen_success or ok


# --------------------------------------------------------------------------- HTTP probe pieces

def test_request_is_a_get_with_host_and_connection_close():
    assert build_request("/health?x=1", "maps.localhost") == (
        b"GET /health?x=1 HTTP/1.1\r\nHost: maps.localhost\r\nUser-Agent: frontgate-health-checker\r\n"
        b"Accept: */*\r\nConnection: close\r\n\r\n")


@pytest.mark.parametrize("path, host", [("/a b", "h"), ("/\r\nX: y", "h"), ("x", "h"), ("/", "h\r\nX: y"), ("/", "")])
def test_request_refuses_to_smuggle(path, host):
    with pytest.raises(ValueError):
        build_request(path, host)


@pytest.mark.parametrize("line, status", [
    (b"HTTP/1.1 200 OK\r\n", 200),
    (b"HTTP/1.0 503 Service Unavailable\r\n", 503),
    (b"HTTP/1.1 404 \r\n", 404),
    (b"HTTP/1.1 204\r\n", 204),
    (b"HTTP/1.1 301 Moved Permanently\n", 301),
])
def test_status_line(line, status):
    assert parse_status_line(line) == status


@pytest.mark.parametrize("line", [b"", b"HTTP/1.1\r\n", b"HTTP/2 200\r\n", b"HTTP/1.1 20 OK\r\n",
                                  b"HTTP/1.1 700 Weird\r\n", b"SSH-2.0-OpenSSH_9.2\r\n", b"http/1.1 200 OK\r\n",
                                  b"HTTP/1.1 200OK\r\n", b"\x16\x03\x01\x00\xa5\x01"])
def test_not_a_status_line(line):
    with pytest.raises(ValueError, match="not an HTTP/1.x status line"):
        parse_status_line(line)


@pytest.mark.parametrize("status, expect, result", [
    (200, ((200, 399),), (True, "HTTP 200")),
    (399, ((200, 399),), (True, "HTTP 399")),
    (500, ((200, 399),), (False, "HTTP 500 (expected 200-399)")),
    (199, ((200, 399),), (False, "HTTP 199 (expected 200-399)")),
    (204, ((204, 204),), (True, "HTTP 204")),
    (200, ((204, 204),), (False, "HTTP 200 (expected 204)")),
    (304, ((200, 299), (304, 304)), (True, "HTTP 304")),
    (302, ((200, 299), (304, 304)), (False, "HTTP 302 (expected 200-299,304)")),
])
def test_judge_status(status, expect, result):
    assert judge_status(status, expect) == result


def app(*hosts: str) -> App:
    return App(name="maps", hosts=hosts, servers=(Server(Address.parse("127.0.0.1:3000")),))


def test_check_host_is_the_configured_one_else_the_first_exact_app_host_else_the_address():
    address = Address.parse("127.0.0.1:3000")
    assert check_host(app("maps.localhost"), CheckSpec(host="health.internal"), address) == "health.internal"
    several = app("*.maps.localhost", "maps.localhost", "m.localhost")
    assert check_host(several, CheckSpec(), address) == "maps.localhost"
    assert check_host(app("*.maps.localhost"), CheckSpec(), address) == "127.0.0.1:3000"
    assert check_host(app("*.maps.localhost"), CheckSpec(), Address.parse("[::1]:3000")) == "[::1]:3000"
    assert check_host(app("*.maps.localhost"), CheckSpec(), Address.parse("unix:/run/maps.sock")) == "localhost"


@pytest.mark.parametrize("error, text", [
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "connection refused"),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "connection reset"),
    (asyncio.IncompleteReadError(b"", None), "connection closed without a response"),
    (asyncio.IncompleteReadError(b"HTTP/1.1 2", None), "connection closed before the status line"),
    (asyncio.LimitOverrunError("Separator is not found, and chunk exceed the limit", 8192),
     "no status line within 8192 bytes"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), "no route to host"),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "cannot resolve host: Name or service not known"),
])
def test_describe_error(error, text):
    assert describe_error(error) == text


# --------------------------------------------------------------------------- the richer checks

def test_request_method():
    assert build_request("/", "h", "HEAD").startswith(b"HEAD / HTTP/1.1\r\nHost: h\r\n")


@pytest.mark.parametrize("value, ranges", [
    (200, ((200, 200),)),
    ([200, 399], ((200, 399),)),                      # [low, high]: an inclusive range
    ("200-299,304", ((200, 299), (304, 304))),          # HAProxy's `status` form
    (" 204 , 300 - 302 ", ((204, 204), (300, 302))),
])
def test_expect_status_forms(value, ranges):
    assert parse_status_ranges(value) == ranges


@pytest.mark.parametrize("value", [[299], [200, 204, 301], "2xx", "300-200", 99, "600", True, "200,", [200.0, 300]])
def test_expect_status_errors(value):
    with pytest.raises(ValueError):
        parse_status_ranges(value)


def test_body_framing_and_dechunk():
    assert body_framing(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n") == ("length", 12)
    assert body_framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n") == ("chunked", None)
    assert body_framing(b"HTTP/1.1 200 OK\r\nConnection: close\r\n") == ("close", None)
    assert dechunk(b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n") == b"abcdefg"
    assert dechunk(b"3\r\nabc\r\n10\r\nde") == b"abcde"            # truncated: what arrived
    assert dechunk(b"zz\r\nabc") == b""


def test_judge_body():
    assert judge_body(b"status: ok", "ok", False) == (True, "")
    assert judge_body(b"status: bad", "ok", False) == (False, "body mismatch: 'ok' not in the body")
    assert judge_body(b"x" * 10, "ok", True) == (False, "body mismatch: 'ok' not in the first 10 bytes of the body")


def test_transitioning():
    rf = RiseFall.initial(rise=2, fall=3).record(True)        # full health: steady up
    assert rf.up and not rf.transitioning
    assert rf.record(False).transitioning                     # up, one failure counted
    down = rf.record(False).record(False).record(False)
    assert not down.up and not down.transitioning             # steady down
    assert down.record(True).transitioning                    # one success of rise=2
    assert not RiseFall.initial(1, 1).transitioning


def test_interval_while_up_transitioning_and_down():
    spec = CheckSpec(interval=2, fastinter=0.5, downinter=10, jitter=0)
    up = RiseFall.initial(2, 3).record(True)
    down = up.record(False).record(False).record(False)
    assert base_interval(spec, up) == 2
    assert base_interval(spec, up.record(False)) == 0.5
    assert base_interval(spec, down) == 10
    assert base_interval(spec, down.record(True)) == 0.5
    plain = CheckSpec(interval=2)                             # unset: the interval throughout
    assert {base_interval(plain, rf) for rf in (up, up.record(False), down)} == {2}


def test_jitter_spreads_the_interval():
    spec = CheckSpec(interval=2, jitter=0.1)
    up = RiseFall.initial(2, 3).record(True)
    assert next_wait(spec, up, uniform=lambda a, b: a) == pytest.approx(1.8)
    assert next_wait(spec, up, uniform=lambda a, b: b) == pytest.approx(2.2)
    assert next_wait(CheckSpec(interval=2, jitter=0), up) == 2
    waits = {next_wait(spec, up) for _ in range(50)}
    assert len(waits) > 1 and all(1.8 <= w <= 2.2 for w in waits)
