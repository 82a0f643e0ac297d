"""frontgate.logfields: what a client chose can neither end a log line nor a quoted field."""
from __future__ import annotations

import logging
import sys

import pytest

from frontgate.daemon import _OneLineFormatter
from frontgate.logfields import escape_field, escape_message

FIELDS = [
    # (text, as an access-log field)
    ("GET /a?b=1 HTTP/1.1", "GET /a?b=1 HTTP/1.1"),
    ('GET /a"b HTTP/1.1', "GET /a#22b HTTP/1.1"),
    ("this connection is for evil\nline, not x", "this connection is for evil#0Aline, not x"),
    ("a\r\nb", "a#0D#0Ab"),
    ("tab\there", "tab#09here"),
    ("nul\x00", "nul#00"),
    ("del\x7f", "del#7F"),
    ("#5", "#235"),                              # the escape mark itself: reversible
    ("caf\u00e9", "caf#C3#A9"),
    ("sep\u2028arator", "sep#E2#80#A8arator"),
    ("nel\x85", "nel#C2#85"),
    ("", ""),
]


@pytest.mark.parametrize("text,expected", FIELDS)
def test_escape_field(text, expected):
    assert escape_field(text) == expected


MESSAGES = [
    ("reloaded /etc/frontgate/router.toml: 3 apps", "reloaded /etc/frontgate/router.toml: 3 apps"),
    ('cannot reach passthrough backend for "a\nb": refused', 'cannot reach passthrough backend for "a#0Ab": refused'),
    ("a\rb\x1b[2Jc", "a#0Db#1B[2Jc"),
    ("caf\u00e9 #1", "caf\u00e9 #1"),            # free text: only what ends a line or drives a terminal
    ("sep\u2029x\x9b", "sep#E2#80#A9x#C2#9B"),
]


@pytest.mark.parametrize("text,expected", MESSAGES)
def test_escape_message(text, expected):
    assert escape_message(text) == expected


def test_daemon_log_lines_stay_one_line_but_keep_their_tracebacks():
    formatter = _OneLineFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "sni %s", ("evil\nWARNING forged",), None)
    assert formatter.format(record) == "WARNING sni evil#0AWARNING forged"
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = formatter.format(record).splitlines()
    assert lines[0] == "ERROR failed" and lines[-1] == "ValueError: boom"
