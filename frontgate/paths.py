"""Request-target normalisation: the one path that routing, ACLs, redirects, the `uri` balancer and
the backend all read. Pure; no sockets.

As HAProxy's `normalize-uri` (percent-decode-unreserved, path-strip-dot / path-strip-dotdot,
path-merge-slashes): escapes of unreserved characters (ALPHA DIGIT - . _ ~) are decoded and the hex
of the others upper-cased; repeated slashes are merged; dot-segments are removed (RFC 3986 5.2.4).
The query is kept as sent. Case is kept: paths are case-sensitive (`/ADMIN` is not `/admin`).

A target that cannot be normalised safely is refused (UnsafeTarget: the router answers 400 and
forwards nothing): backends disagree on what it means, so no path the router could judge is
the one every backend would serve.
"""
from __future__ import annotations

import re
import string

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# Characters an escape must never stand for: a path separator or the end of a C string.
_FORBIDDEN_ESCAPES = {"2F": "an encoded slash (%2F)", "5C": "an encoded backslash (%5C)", "00": "an encoded NUL (%00)"}
# A target in which none of these occurs is already normal: the common case costs one search.
_SUSPECT_RE = re.compile(r"[%\\#]|/[/.;]")
_ESCAPE_RE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SLASHES_RE = re.compile(r"//+")
# What a backend that decodes once more than it should (%252F -> %2F -> /) would take apart.
_DOUBLE_ENCODED_RE = re.compile(r"%25(?:2[Ff]|5[Cc]|00|2[Ee])")


class UnsafeTarget(ValueError):
    """A request target refused with 400; `reason` says why (for the client and the log)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def request_targets(target: str, origin_length: int) -> tuple[str, str, str]:
    """(path, origin-form target, target to forward) for a request line's target whose last
    `origin_length` characters are its path and query (all of it, but in absolute-form), each
    normalised. An absolute-form target without a path is judged as "/" and keeps its scheme and
    authority when forwarded. `OPTIONS *` asks about the server, not a resource: it is judged as
    the root ("/": only a prefix of "/" covers it) and forwarded as "*"."""
    if target == "*":
        return "/", "/", target
    if origin_length == len(target):        # origin-form: nearly every request
        normal = normalise_target(target)
        return normal.partition("?")[0], normal, normal
    origin = target[len(target) - origin_length:]
    if origin[:1] != "/":
        origin = "/" + origin               # "http://h" or "http://h?q"
    normal = normalise_target(origin)
    return normal.partition("?")[0], normal, target[:len(target) - origin_length] + normal


def normalise_target(target: str) -> str:
    """An origin-form target (`/path?query`, as the request line has it) in normal form: the path
    normalised, the query as sent. Returns `target` itself when it is already normal.

    Refused (UnsafeTarget): a fragment (`#`), a raw backslash, `%00` anywhere; in the path an
    encoded slash or backslash (`%2F`, `%5C`), an escape that is not `%` and two hex digits,
    a double-encoded slash, backslash, NUL or dot (`%252F` ...), a dot-segment that climbs above
    the root (`/../x`), and a path parameter on an empty or dot segment (`/..;/x`, `/;x/`), which
    servlet containers strip before they resolve dot-segments."""
    if _SUSPECT_RE.search(target) is None:
        return target
    if "#" in target:
        raise UnsafeTarget("fragment in the request target")
    if "\\" in target:
        raise UnsafeTarget("backslash in the request target")
    path, mark, query = target.partition("?")
    if "%00" in query:
        raise UnsafeTarget("an encoded NUL (%00) in the query")
    return normalise_path(path) + mark + query


def normalise_path(path: str) -> str:
    """A path (starting with "/") in normal form; UnsafeTarget as normalise_target says."""
    if _BAD_ESCAPE_RE.search(path):
        raise UnsafeTarget("malformed percent-escape in the path")
    if _DOUBLE_ENCODED_RE.search(path):
        raise UnsafeTarget("double-encoded character in the path")
    path = _ESCAPE_RE.sub(_decode_unreserved, path)
    return _remove_dot_segments(_SLASHES_RE.sub("/", path))


def _decode_unreserved(m: re.Match) -> str:
    hex_digits = m.group(1).upper()
    what = _FORBIDDEN_ESCAPES.get(hex_digits)
    if what is not None:
        raise UnsafeTarget(f"{what} in the path")
    char = chr(int(hex_digits, 16))
    return char if char in _UNRESERVED else "%" + hex_digits


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 on a path without empty segments (but a trailing one), refusing what the RFC
    silently drops: a `..` above the root."""
    segments = path[1:].split("/")
    kept: list[str] = []
    for segment in segments:
        if segment == ".":
            continue
        if segment == "..":
            if not kept:
                raise UnsafeTarget("dot-segment above the root in the path")
            kept.pop()
            continue
        if ";" in segment and segment.partition(";")[0] in ("", ".", ".."):
            raise UnsafeTarget("path parameter on an empty or dot segment")
        kept.append(segment)
    # A path that ended in a dot-segment names a directory: "/a/b/.." is "/a/".
    trailing = "/" if kept and segments[-1] in (".", "..") else ""
    return "/" + "/".join(kept) + trailing
