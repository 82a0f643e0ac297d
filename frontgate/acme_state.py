"""What cert-manager remembers per name, in `<state_dir>/<name>.json`: the failures in a row, the
last error, the CA's Retry-After, the next attempt. Written whole (temp, fsync, rename) after
every attempt, read at start (a restart keeps backing off) and by `frontgate certs` / `status`,
which show it with format_names (pure).
"""
from __future__ import annotations

import datetime
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


def facts(configs: Path) -> dict | None:
    """cert-manager's view for `frontgate certs` and `status`: each name's state and certificate
    file; None without a cert-manager.toml, {"error": ...} for one that does not load."""
    from frontgate.cert_manager_config import load_cert_manager_config
    from frontgate.config import ConfigError
    path = configs / "cert-manager.toml"
    if not path.exists():
        return None
    try:
        cfg = load_cert_manager_config(path)
    except ConfigError as e:
        return {"error": str(e)}
    return {"directory_url": cfg.directory_url,
            "names": [dict(asdict(load(cfg.state_dir, n)), file=str(certificate_path(cfg.certs_dir, n)))
                      for n in cfg.names]}


def certificate_rows(acme: dict | None, rows: list[dict]) -> list[dict]:
    """For `frontgate certs --json`: each certificate row of a name cert-manager manages gets its
    state under "acme"; a name without a loaded file yet gets a row of its own (returned)."""
    if not acme or "error" in acme:
        return [{"source": "cert-manager", "error": acme["error"]}] if acme else []
    by_file = {str(Path(r["file"]).resolve()): r for r in rows if "file" in r}
    extra = []
    for state in acme["names"]:
        row = by_file.get(str(Path(state["file"]).resolve()))
        if row is not None:
            row["acme"] = state
        else:
            extra.append({"file": state["file"], "source": "cert-manager", "names": [state["name"]],
                          "status": "not issued yet", "acme": state})
    return extra


def format_facts(acme: dict | None, now: float) -> list[str]:
    """The `automatic certificates` section of `frontgate certs` and `status`."""
    if acme is None:
        return []
    if "error" in acme:
        return ["automatic certificates (cert-manager)", f"  {acme['error']}"]
    return [f"automatic certificates (cert-manager, {acme['directory_url']})", format_names(acme["names"], now)]


def _at(ts: float | None, now: float) -> str:
    from frontgate.status import duration      # status imports this module
    if ts is None:
        return "-"
    text = datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
    seconds = ts - now
    return f"{text} (in {duration(seconds)})" if seconds >= 0 else f"{text} ({duration(-seconds)} ago)"


def format_names(rows: list[dict], now: float) -> str:
    """One line per name (dicts of NameState's fields): expiry, next attempt, failures, last error."""
    if not rows:
        return "  no names configured (cert-manager idles)"
    lines = []
    for r in rows:
        lines.append(f"  {r['name']}: expires {_at(r.get('not_after'), now)}, next {_at(r.get('next_attempt'), now)}"
                     + (f", {r['failures']} failure(s) in a row" if r.get("failures") else ""))
        if r.get("last_error"):
            lines.append(f"    last error {_at(r.get('last_error_at'), now)}: {r['last_error']}")
    return "\n".join(lines)
