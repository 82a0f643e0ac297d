"""The router's http-01 responder, the pure parts: which requests it takes, which tokens are valid."""
from __future__ import annotations

import pytest

from mux_router import acme_challenge

P = acme_challenge.PREFIX


@pytest.mark.parametrize("path, method, wanted", [
    (P + "abc", "GET", True),
    (P + "abc", "HEAD", True),
    (P + "abc", "POST", False),
    (P, "GET", True),
    ("/.well-known/acme-challenge", "GET", False),
    ("/.well-known/other/abc", "GET", False),
    ("/x" + P + "abc", "GET", False),
])
def test_wanted(path, method, wanted):
    assert acme_challenge.wanted(path, method) is wanted


@pytest.mark.parametrize("token, valid", [
    ("abc", True),
    ("A-b_9", True),
    ("a" * 128, True),
    ("a" * 129, False),
    ("", False),
    ("a.b", False),
    ("a/b", False),
    ("..", False),
    ("a%2fb", False),
    ("ä", False),
    ("a b", False),
])
def test_token_of(token, valid):
    assert acme_challenge.token_of(P + token) == (token if valid else None)


def test_answer_reads_only_valid_present_tokens(tmp_path):
    (tmp_path / "tok").write_text("tok.thumb\n")
    (tmp_path / "big").write_bytes(b"x" * (acme_challenge.MAX_ANSWER + 1))
    assert acme_challenge.answer(tmp_path, P + "tok") == b"tok.thumb"
    assert acme_challenge.answer(tmp_path, P + "missing") is None
    assert acme_challenge.answer(tmp_path, P + "big") is None
    assert acme_challenge.answer(tmp_path / "absent-dir", P + "tok") is None
