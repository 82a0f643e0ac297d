"""tls_terminator.client_side.is_drain_idle: which connections a SIGTERM drain closes before the grace."""
from __future__ import annotations

from tls_terminator.client_side import DRAIN_QUIET, is_drain_idle


def test_quiet_and_answered_is_idle():
    assert is_drain_idle(last_activity=10.0, awaiting_answer=False, now=10.0 + DRAIN_QUIET)


def test_recent_traffic_is_busy():
    assert not is_drain_idle(last_activity=10.0, awaiting_answer=False, now=10.0 + DRAIN_QUIET / 2)


def test_waiting_for_the_answer_is_busy_however_quiet():
    assert not is_drain_idle(last_activity=10.0, awaiting_answer=True, now=10.0 + 100 * DRAIN_QUIET)
