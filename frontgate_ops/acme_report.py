"""What `frontgate certs` and `frontgate status` say about cert-manager: each name's certificate
file, expiry, next attempt and last error, from its state files (frontgate.acme_state). Gathering
is separate from the (pure) formatting."""
from __future__ import annotations

import datetime
from dataclasses import asdict
from pathlib import Path

from frontgate import acme_state
from frontgate.config.cert_manager import load_cert_manager_config
from frontgate.config import ConfigError
from frontgate_ops.status import duration


def facts(configs: Path) -> dict | None:
    """cert-manager's view for `frontgate certs` and `status`: each name's state and certificate
    file; None without a cert-manager.toml, {"error": ...} for one that does not load."""
    path = configs / "cert-manager.toml"
    if not path.exists():
        return None
    try:
        cfg = load_cert_manager_config(path)
    except ConfigError as e:
        return {"error": str(e)}
    return {"directory_url": cfg.directory_url,
            "names": [dict(asdict(acme_state.load(cfg.state_dir, n)), file=str(acme_state.certificate_path(cfg.certs_dir, n)))
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
