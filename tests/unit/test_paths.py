"""frontgate.paths: one normalisation of request targets, and the targets it refuses."""
from __future__ import annotations

import pytest

from frontgate.paths import UnsafeTarget, normalise_target, request_targets

NORMALISED = [
    # (target as sent, normal form)
    ("/", "/"),
    ("/a/b?c=d", "/a/b?c=d"),
    ("/x/../admin", "/admin"),
    ("/%61dmin", "/admin"),
    ("/%61%64%6D%69%6e", "/admin"),
    ("//admin", "/admin"),
    ("///admin//x", "/admin/x"),
    ("/./admin", "/admin"),
    ("/admin/.", "/admin/"),
    ("/admin/", "/admin/"),
    ("/x/%2e%2e/admin", "/admin"),
    ("/x/%2E./admin", "/admin"),
    ("/x/.%2e/admin", "/admin"),
    ("/x//../admin", "/admin"),              # slashes merged first, as nginx does
    ("/a/b/..", "/a/"),
    ("/a/b/../../", "/"),
    ("/ADMIN", "/ADMIN"),                    # paths are case-sensitive: never folded
    ("/%41DMIN", "/ADMIN"),
    ("/a%7e%7Eb", "/a~~b"),
    ("/a%2db%5fc", "/a-b_c"),
    ("/a%3bb%3fc%20d", "/a%3Bb%3Fc%20d"),     # reserved and other escapes stay, hex upper-cased
    ("/%25", "/%25"),
    ("/page;jsessionid=1", "/page;jsessionid=1"),
    ("/a?q=/../x//y&p=%2f%5c", "/a?q=/../x//y&p=%2f%5c"),   # the query is kept as sent
    ("/x/../a?", "/a?"),
    ("/..a/.b/a..", "/..a/.b/a.."),
]


@pytest.mark.parametrize("target,expected", NORMALISED)
def test_normalised(target, expected):
    assert normalise_target(target) == expected
    # The normal form is a fixed point: a backend normalising it again reads the same path.
    assert normalise_target(expected) == expected


REFUSED = [
    ("/x#frag", "fragment"),
    ("/x?a#frag", "fragment"),
    ("/..", "above the root"),
    ("/../admin", "above the root"),
    ("/x/../../admin", "above the root"),
    ("/%2e%2e/admin", "above the root"),
    ("/.%2E/admin", "above the root"),
    ("/admin%2f..", "encoded slash"),
    ("/admin%2F", "encoded slash"),
    ("/x/..%2fadmin", "encoded slash"),
    ("/x%5c..%5cadmin", "encoded backslash"),
    ("/x%5C", "encoded backslash"),
    ("/x\\..\\admin", "backslash"),
    ("/x?a=\\", "backslash"),
    ("/admin%00.html", "NUL"),
    ("/a?q=%00", "NUL"),
    ("/%zz", "malformed"),
    ("/a%", "malformed"),
    ("/a%4", "malformed"),
    ("/%252e%252e/admin", "double-encoded"),
    ("/x%252fadmin", "double-encoded"),
    ("/x%255cadmin", "double-encoded"),
    ("/x%2500", "double-encoded"),
    ("/x/..;/admin", "path parameter"),
    ("/x/.;/admin", "path parameter"),
    ("/;x/admin", "path parameter"),
    ("/x/;/admin", "path parameter"),
]


@pytest.mark.parametrize("target,why", REFUSED)
def test_refused(target, why):
    with pytest.raises(UnsafeTarget) as e:
        normalise_target(target)
    assert why in e.value.reason


TARGETS = [
    # (request-line target, length of its path and query, (path, origin-form, forwarded))
    ("/x/../a?q=/../", 14, ("/a", "/a?q=/../", "/a?q=/../")),
    ("/plain", 6, ("/plain", "/plain", "/plain")),
    ("http://h", 0, ("/", "/", "http://h/")),
    ("http://h?x", 2, ("/", "/?x", "http://h/?x")),
    ("HTTP://h//%61dmin?y", 11, ("/admin", "/admin?y", "HTTP://h/admin?y")),
    ("*", 1, ("/", "/", "*")),
]


@pytest.mark.parametrize("target,origin_length,expected", TARGETS)
def test_request_targets(target, origin_length, expected):
    assert request_targets(target, origin_length) == expected
