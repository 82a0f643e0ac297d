"""Escaping of logged text, so that what a client chose (a request target, an SNI name in a note,
a header value in an error) can neither end a log line nor the quoted field it sits in.

As HAProxy escapes logged requests: every byte (UTF-8) of a character that could end or split a
line or a field becomes `#XX` (upper-case hex), and so does `#` itself, so that the escaping can be
undone. Pure; every log formatter of the three daemons calls this module, nothing else escapes.
"""
from __future__ import annotations

import re

# In an access-log field: anything but printable ASCII, `"` (it ends httplog's quoted request)
# and `#` (the escape's own mark).
_UNSAFE_IN_FIELD_RE = re.compile(r'[^\x20\x21\x24-\x7e]')
# In a daemon's own message (free text, not a quoted field): what a terminal or a log reader takes
# as the end of a line or a control sequence. C0, DEL, C1, and Unicode's line/paragraph separators.
_UNSAFE_IN_MESSAGE_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_field(text: str) -> str:
    """`text` as an access-log field (httplog and JSON alike): printable ASCII but `"` and `#`."""
    if _UNSAFE_IN_FIELD_RE.search(text) is None:
        return text
    return _UNSAFE_IN_FIELD_RE.sub(_hex_bytes, text)


def escape_message(text: str) -> str:
    """`text` as a daemon log message: one line, control characters escaped, the rest as it is."""
    if _UNSAFE_IN_MESSAGE_RE.search(text) is None:
        return text
    return _UNSAFE_IN_MESSAGE_RE.sub(_hex_bytes, text)


def _hex_bytes(m: re.Match) -> str:
    return "".join(f"#{b:02X}" for b in m.group().encode("utf-8", "surrogatepass"))
