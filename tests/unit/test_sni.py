"""SNI -> certificate matching (RFC 6125 wildcards, exact names first, default otherwise)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tls_terminator.sni import build_index, normalize, unusable_names, wildcard_suffix

INDEX = build_index([
    (["app.test", "www.app.test"], "app"),
    (["*.wild.test"], "wild"),
    (["exact.wild.test"], "exact-in-wild"),          # an exact name beats a wildcard, whatever the order
    (["*.app.test"], "app-wildcard"),
    (["f*.partial.test", "*x.partial.test", "a.*.mid.test", "*", "*.", "*..dots.test"], "partial"),
    (["Upper.Test."], "upper"),
    (["app.test", "*.wild.test"], "later-duplicate"),  # first configured wins
], default="default")


@pytest.mark.parametrize("server_name,expected", [
    ("app.test", "app"),
    ("www.app.test", "app"),
    ("APP.Test", "app"),
    ("app.test.", "app"),
    (b"app.test", "app"),
    ("upper.test", "upper"),
    ("a.wild.test", "wild"),
    ("A-1.WILD.TEST.", "wild"),
    ("exact.wild.test", "exact-in-wild"),
    ("other.app.test", "app-wildcard"),
    # a wildcard is exactly one label
    ("wild.test", "default"),
    ("a.b.wild.test", "default"),
    (".wild.test", "default"),
    ("*.wild.test", "default"),
    # partial-label and misplaced wildcards never match
    ("foo.partial.test", "default"),
    ("ax.partial.test", "default"),
    ("a.b.mid.test", "default"),
    ("anything", "default"),
    # no SNI, unknown, or junk
    (None, "default"),
    ("", "default"),
    (b"", "default"),
    ("unknown.test", "default"),
    (b"\xff\xfe.test", "default"),
])
def test_lookup(server_name, expected):
    assert INDEX.lookup(server_name) == expected


def test_normalize_and_wildcard_suffix():
    assert normalize(" Example.COM. ") == "example.com"
    assert wildcard_suffix("*.example.com") == "example.com"
    for bad in ("example.com", "f*.example.com", "*", "*.", "*.*.example.com", "*..example.com", "x.*.com"):
        assert wildcard_suffix(bad) is None, bad


def test_unusable_names_are_reported():
    assert unusable_names(["ok.test", "*.ok.test", "f*.bad.test", "a.*.bad.test", "", "*"]) == [
        "f*.bad.test", "a.*.bad.test", "", "*"]


def test_empty_index_always_gives_the_default():
    index = build_index([], default=0)
    assert index.lookup("anything.test") == 0 and index.lookup(None) == 0


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)


@given(_label, st.lists(_label, min_size=1, max_size=4))
def test_wildcard_matches_exactly_one_label(label, suffix_labels):
    suffix = ".".join(suffix_labels)
    index = build_index([([f"*.{suffix}"], "wild")], default="default")
    assert index.lookup(f"{label}.{suffix}") == "wild"
    assert index.lookup(f"{label.upper()}.{suffix}.") == "wild"
    assert index.lookup(suffix) == "default"
    assert index.lookup(f"{label}.{label}.{suffix}") == "default"
