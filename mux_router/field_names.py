"""How the router compares header field names: without case, and with `_` taken as `-`.

CGI and WSGI servers (and the frameworks on them) read a field through its CGI variable name
(`X-Real-IP` and `X_Real_IP` both become HTTP_X_REAL_IP), so a field the router writes or refuses
must be matched in every spelling the backend would take for it, or a client's `X_Real_IP` would
reach the backend as the router's. One rule, used for the framing fields the parser refuses and
for the fields the router owns (mux_router/forwarding.py), in heads and in trailers.
"""
from __future__ import annotations

import re
from typing import Iterable


def fold(name: bytes) -> bytes:
    """The form two field names are compared in: `X_Real-ip` -> `x-real-ip`."""
    return name.lower().replace(b"_", b"-")


def any_spelling(names: Iterable[bytes]) -> bytes:
    """A regex (bytes) matching each of `names` in every spelling that folds to it: `-` and `_`
    both match either, letters any case. Sorted, for a pattern that does not depend on set order."""
    alternatives = (b"[-_]".join(re.escape(part) for part in fold(name).split(b"-")) for name in names)
    return b"(?i:" + b"|".join(sorted(alternatives)) + b")"
