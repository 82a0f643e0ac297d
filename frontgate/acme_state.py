"""What cert-manager remembers per name, in `<state_dir>/<name>.json`: the failures in a row, the
last error, the CA's Retry-After, the next attempt. Written whole (temp, fsync, rename) after
every attempt, read at start (a restart keeps backing off) and by `frontgate certs` / `status`
(frontgate_ops.acme_report).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from frontgate.dev_ca import write_file

MAX_ERROR = 500             # characters of an error message kept


@dataclass
class NameState:
    name: str
    failures: int = 0                      # failed attempts in a row
    last_error: str | None = None
    last_error_at: float | None = None
    retry_after: float | None = None       # the CA's Retry-After (unix time)
    next_attempt: float | None = None      # when cert-manager tries next (unix time)
    last_success_at: float | None = None
    not_after: float | None = None         # of the certificate in use

    def failed(self, error: str, now: float, retry_after: float | None) -> None:
        self.failures += 1
        self.last_error = error[:MAX_ERROR]
        self.last_error_at = now
        self.retry_after = retry_after

    def succeeded(self, now: float, not_after: float) -> None:
        self.failures = 0
        self.retry_after = None
        self.last_success_at = now
        self.not_after = not_after


def certificate_path(certs_dir: Path, name: str) -> Path:
    """Where cert-manager installs a name's certificate (chain and key): the terminator's certs_dir."""
    return certs_dir / f"{name}.pem"


def state_path(state_dir: Path, name: str) -> Path:
    return state_dir / f"{name}.json"


def from_doc(name: str, doc: object) -> NameState:
    """A NameState from its JSON; fields of the wrong type are dropped (a damaged file must not
    stop the daemon: at worst it retries sooner)."""
    state = NameState(name=name)
    if not isinstance(doc, dict):
        return state
    for f in fields(NameState):
        value = doc.get(f.name)
        if f.name == "name" or value is None:
            continue
        if f.name == "failures":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        elif f.name == "last_error":
            ok = isinstance(value, str)
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            setattr(state, f.name, value)
    return state


def load(state_dir: Path, name: str) -> NameState:
    try:
        doc = json.loads(state_path(state_dir, name).read_text())
    except (OSError, ValueError):
        return NameState(name=name)
    return from_doc(name, doc)


def save(state_dir: Path, state: NameState) -> None:
    write_file(state_path(state_dir, state.name), (json.dumps(asdict(state), indent=1) + "\n").encode(), 0o644)
