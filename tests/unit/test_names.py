"""The one host-name rule of both stages (frontgate.names): normalisation, patterns, lookup."""
from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from frontgate import names
from frontgate.names import BadName

INDEX = names.build_index([
    ([names.pattern(p) for p in ("app.test", "www.app.test")], "app"),
    ([names.pattern("*.wild.test")], "wild"),
    ([names.pattern("exact.wild.test")], "exact-in-wild"),     # an exact name beats a wildcard, whatever the order
    ([names.pattern("*.app.test")], "app-wildcard"),
    ([names.pattern("Upper.Test.")], "upper"),
    ([names.pattern("app.test"), names.pattern("*.wild.test")], "later-duplicate"),  # first configured wins
    ([names.pattern("**.deep.test", subtree=True)], "deep"),
    ([names.pattern("**.x.deep.test", subtree=True)], "deeper"),    # the longest suffix wins
], default="default")


def served(server_name):
    """What the terminator does with a ClientHello's server name."""
    try:
        return INDEX.lookup(names.sni_name(server_name))
    except BadName:
        return "refused"


@pytest.mark.parametrize("server_name,expected", [
    ("app.test", "app"),
    ("www.app.test", "app"),
    ("APP.Test", "app"),
    ("app.test.", "app"),                 # one trailing dot is the same name
    (b"app.test", "app"),
    ("upper.test", "upper"),
    ("a.wild.test", "wild"),
    ("A-1.WILD.TEST.", "wild"),
    ("exact.wild.test", "exact-in-wild"),
    ("other.app.test", "app-wildcard"),
    # a wildcard is exactly one label
    ("wild.test", "default"),
    ("a.b.wild.test", "default"),
    # any depth only where spelled **.
    ("a.deep.test", "deep"),
    ("a.b.c.deep.test", "deep"),
    ("deep.test", "default"),
    ("a.x.deep.test", "deeper"),
    # no SNI, an IP literal (names no host), unknown
    (None, "default"),
    ("", "default"),
    (b"", "default"),
    ("127.0.0.1", "default"),
    ("::1", "default"),
    ("unknown.test", "default"),
    # not host names: the handshake is refused, never a lookup of a name the router reads otherwise
    ("app.test..", "refused"),
    ("admin.example.com..", "refused"),
    (".wild.test", "refused"),
    ("*.wild.test", "refused"),
    ("a..wild.test", "refused"),
    ("app.test\n", "refused"),
    ("app.test\x00", "refused"),
    ("app_test.test", "refused"),
    ("app.test:443", "refused"),
    ("a" * 64 + ".test", "refused"),
    (b"\xff\xfe.test", "refused"),
    ("\u00e9t\u00e9.test", "refused"),
    (" app.test", "refused"),
])
def test_server_names(server_name, expected):
    assert served(server_name) == expected


@pytest.mark.parametrize("text,expected", [
    ("Example.COM", ("example.com", None)),
    ("example.com.", ("example.com", None)),
    ("example.com:8080", ("example.com", "8080")),
    ("example.com:", ("example.com", None)),
    ("127.0.0.1:80", ("127.0.0.1", "80")),
    ("[::1]:80", ("[::1]", "80")),
    ("[0:0::1]", ("[::1]", None)),
    ("", (None, None)),
])
def test_authority(text, expected):
    assert names.split_authority(text) == expected


@pytest.mark.parametrize("text", [
    "example.com..", "example..com", ".example.com", "exa_mple.com", "exa mple.com", "example.com:x",
    "example.com:80:80", "[::1", "[::1]x", "[zz]:80", "ex%61mple.com", "example.com\t", "\u00e9.com",
    "a" * 254,
])
def test_authority_refused(text):
    with pytest.raises(BadName):
        names.split_authority(text)


@pytest.mark.parametrize("text,subtree,expected", [
    ("Example.COM.", False, "example.com"),
    ("*.Example.com", False, "*.example.com"),
    ("**.example.com", True, "**.example.com"),
])
def test_patterns(text, subtree, expected):
    assert names.pattern(text, subtree=subtree) == expected


@pytest.mark.parametrize("text,subtree", [
    ("**.example.com", False),      # any depth never decides certificates or client certificates
    ("f*.example.com", True), ("a.*.example.com", True), ("*", True), ("*.", True), ("*..x", True),
    ("*.*.example.com", True), ("", True), ("a..b", True),
])
def test_patterns_refused(text, subtree):
    with pytest.raises(BadName):
        names.pattern(text, subtree=subtree)


@pytest.mark.parametrize("a,b,expected", [
    ("a.test", "a.test", True), ("a.test", "b.test", False),
    ("x.a.test", "*.a.test", True), ("y.x.a.test", "*.a.test", False), ("a.test", "*.a.test", False),
    ("y.x.a.test", "**.a.test", True), ("*.a.test", "*.a.test", True), ("*.a.test", "*.b.test", False),
    ("*.x.a.test", "**.a.test", True), ("*.a.test", "**.a.test", True), ("*.test", "**.a.test", False), ("*.a.test", "**.a.test", True),
    ("**.a.test", "**.x.a.test", True), ("*.b.test", "**.a.test", False), ("**.a.test", "**.b.test", False),
    ("*.a.test", "*.x.a.test", False),
])
def test_overlap(a, b, expected):
    assert names.overlap(a, b) is expected and names.overlap(b, a) is expected


def test_certificate_patterns_report_what_never_matches():
    usable, unusable = names.certificate_patterns(["ok.test", "*.ok.test", "f*.bad.test", "a.*.bad.test", "", "*",
                                                   "under_score.test"])
    assert usable == ["ok.test", "*.ok.test"]
    assert unusable == ["f*.bad.test", "a.*.bad.test", "", "*", "under_score.test"]


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)


@given(_label, st.lists(_label, min_size=1, max_size=4))
def test_wildcard_matches_exactly_one_label(label, suffix_labels):
    suffix = ".".join(suffix_labels)
    assume(not names.is_ip_literal(f"{label}.{suffix}"))     # "0.0.0.0" is an address, not a name
    index = names.build_index([([f"*.{suffix}"], "wild")], default="default")
    assert index.lookup(names.sni_name(f"{label}.{suffix}")) == "wild"
    assert index.lookup(names.sni_name(f"{label.upper()}.{suffix}.")) == "wild"
    assert index.lookup(suffix) == "default"
    assert index.lookup(f"{label}.{label}.{suffix}") == "default"
    assert names.matches(f"*.{suffix}", f"{label}.{suffix}")
    assert not names.matches(f"*.{suffix}", f"{label}.{label}.{suffix}")
