"""cert-manager's schedule: renewal time, back-off, Retry-After, the expiry warning. Pure."""
from __future__ import annotations

import pytest

from cert_manager import schedule
from frontgate import acme_state

DAY = 86400.0
NB, NA = 1000.0, 1000.0 + 90 * DAY          # a 90-day certificate


@pytest.mark.parametrize("jitter, window, expected", [
    (0.0, None, NA - 30 * DAY),                       # a third of the lifetime left
    (1.0, None, NA - 30 * DAY - 4.5 * DAY),           # at most 5% of the lifetime earlier
    (0.5, None, NA - 30 * DAY - 2.25 * DAY),
    (0.0, (5000.0, 9000.0), 5000.0),                   # the CA's window replaces the rule
    (0.5, (5000.0, 9000.0), 7000.0),
    (0.5, (5000.0, 4000.0), 5000.0),                   # a window backwards: its start
])
def test_renewal_time(jitter, window, expected):
    assert schedule.renewal_time(NB, NA, jitter, window) == pytest.approx(expected)


@pytest.mark.parametrize("failures, jitter, expected", [
    (1, 0.0, 60), (2, 0.0, 120), (3, 0.0, 240), (5, 0.0, 960),
    (1, 1.0, 75),                                      # up to a quarter longer
    (20, 0.0, 3600), (20, 1.0, 3600), (10_000, 0.0, 3600),   # the ceiling, whatever the count
])
def test_backoff(failures, jitter, expected):
    assert schedule.backoff(failures, 60, 3600, jitter) == pytest.approx(expected)


BASE = dict(retry_min=60.0, retry_max=3600.0, jitter=0.0)


@pytest.mark.parametrize("case, kwargs, expected", [
    ("no certificate: now", dict(now=500.0, not_before=None, not_after=None, failures=0, last_failure=None,
                                 retry_after=None), 500.0),
    ("valid certificate: its renewal time", dict(now=500.0, not_before=NB, not_after=NA, failures=0,
                                                 last_failure=None, retry_after=None), NA - 30 * DAY),
    ("failed twice: back-off from the last failure", dict(now=500.0, not_before=None, not_after=None, failures=2,
                                                          last_failure=400.0, retry_after=None), 520.0),
    ("Retry-After later than the back-off wins", dict(now=500.0, not_before=None, not_after=None, failures=1,
                                                      last_failure=400.0, retry_after=9000.0), 9000.0),
    ("Retry-After earlier than the back-off does not shorten it",
     dict(now=500.0, not_before=None, not_after=None, failures=3, last_failure=400.0, retry_after=410.0), 640.0),
    ("renewal failing: back-off, even past the renewal time",
     dict(now=NA - 29 * DAY, not_before=NB, not_after=NA, failures=1, last_failure=NA - 29 * DAY,
          retry_after=None), NA - 29 * DAY + 60),
    ("failures long ago: the renewal time", dict(now=500.0, not_before=NB, not_after=NA, failures=1,
                                                 last_failure=100.0, retry_after=None), NA - 30 * DAY),
])
def test_next_attempt(case, kwargs, expected):
    assert schedule.next_attempt(**kwargs, **BASE) == pytest.approx(expected), case


@pytest.mark.parametrize("value, expected", [
    (None, None), ("120", 1120.0), (" 7 ", 1007.0), ("99999999", 1000.0 + 7 * DAY),
    ("Thu, 01 Jan 1970 00:20:00 GMT", 1200.0),         # an HTTP date
    ("Thu, 01 Jan 1970 00:00:10 GMT", 1000.0),         # in the past: now
    ("soon", None), ("-5", None), ("", None),
])
def test_parse_retry_after(value, expected):
    assert schedule.parse_retry_after(value, 1000.0) == expected


@pytest.mark.parametrize("now, not_after, expected", [
    (0.0, None, False), (0.0, 15 * DAY, False), (0.0, 13 * DAY, True), (20 * DAY, 13 * DAY, True),
])
def test_expiry_warning(now, not_after, expected):
    assert schedule.expiry_warning(now, not_after, 14) is expected


@pytest.mark.parametrize("doc, expected", [
    ({"failures": 3, "last_error": "boom", "next_attempt": 5.5}, dict(failures=3, last_error="boom", next_attempt=5.5)),
    ({"failures": -1, "last_error": 7, "next_attempt": "x", "retry_after": True}, {}),   # damaged: dropped
    ([1, 2], {}),
])
def test_state_from_damaged_json(doc, expected):
    state = acme_state.from_doc("a.test", doc)
    assert state == acme_state.NameState(name="a.test", **expected)


def test_state_round_trip(tmp_path):
    state = acme_state.NameState(name="a.test")
    state.failed("x" * 1000, 10.0, 99.0)
    acme_state.save(tmp_path, state)
    again = acme_state.load(tmp_path, "a.test")
    assert again == state and len(again.last_error) == acme_state.MAX_ERROR
    again.succeeded(20.0, 500.0)
    assert (again.failures, again.retry_after, again.not_after) == (0, None, 500.0)
    assert acme_state.load(tmp_path, "other.test") == acme_state.NameState(name="other.test")
