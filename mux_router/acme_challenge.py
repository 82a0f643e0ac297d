"""ACME http-01 (RFC 8555 8.3): the router answers `GET /.well-known/acme-challenge/TOKEN` on its
plain-HTTP listeners from the challenge directory cert-manager writes ([router]
acme_challenge_dir), for any Host, before redirects and routing: the CA's validation comes over
port 80 and must neither be sent to https nor reach an app.

Only tokens of the base64url alphabet (`[A-Za-z0-9_-]{1,128}`) are looked up, so a request can
never name a path outside the directory; anything else, or a token without a file, is 404.
"""
from __future__ import annotations

import re
from pathlib import Path

PREFIX = "/.well-known/acme-challenge/"
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
MAX_ANSWER = 1024          # a key authorization is token + "." + 43 characters: far below this
CONTENT_TYPE = "application/octet-stream"


def wanted(path: str, method: str) -> bool:
    """The request is one the challenge responder answers (any outcome: the file or 404)."""
    return method in ("GET", "HEAD") and path.startswith(PREFIX)


def token_of(path: str) -> str | None:
    """The token the path names, or None when it is not a valid one (a 404)."""
    token = path[len(PREFIX):]
    return token if TOKEN_RE.fullmatch(token) else None


def read_answer(directory: Path, token: str) -> bytes | None:
    """The key authorization stored for `token`, None when there is none (or it cannot be read)."""
    try:
        with open(directory / token, "rb") as f:
            data = f.read(MAX_ANSWER + 1)
    except OSError:
        return None
    if len(data) > MAX_ANSWER:
        return None
    return data.strip()


def answer(directory: Path, path: str) -> bytes | None:
    """The body for a challenge request's path, None for a 404."""
    token = token_of(path)
    return read_answer(directory, token) if token is not None else None
