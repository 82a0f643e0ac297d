"""`frontgate status`: the processes of each stage, each server's health, the certificates' expiry.

Gathering (supervisord, psutil, the state file, the PEMs) is separate from formatting, so that
`--json` and the table show the same facts; the formatting is pure and unit-tested.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import time
from pathlib import Path
from typing import Any

from frontgate import dev_ca, health_state, routes
from frontgate.config.cert_manager import load_cert_manager_config
from frontgate.config import (
    ConfigError,
    RouterConfig,
    load_router_config,
    load_terminator_config,
)
from frontgate.process_status import read_status, status_path
from frontgate.route_store import StoreError
from frontgate.route_store_file import read_table
from frontgate_ops.deploy import (
    STAGES,
    Process,
    Supervisor,
    SupervisorError,
    fingerprint,
)

CPU_SAMPLE = 0.2          # seconds over which CPU% is measured
EXPIRY_WARNING_DAYS = 14


# --------------------------------------------------------------------------- gathering

def process_facts(processes: list[Process]) -> list[dict[str, Any]]:
    """psutil's view of each running process: uptime, RSS, CPU% (sampled over CPU_SAMPLE), open
    fds, sockets (listening and established; TCP and unix)."""
    import psutil
    now = time.time()
    handles: dict[int, Any] = {}
    for p in processes:
        if p.pid:
            try:
                handles[p.pid] = psutil.Process(p.pid)
                handles[p.pid].cpu_percent(None)          # starts the sample
            except psutil.Error:
                pass
    if handles:
        time.sleep(CPU_SAMPLE)
    out = []
    for p in processes:
        row: dict[str, Any] = {"stage": p.group, "process": p.name, "state": p.state, "pid": p.pid or None,
                               "uptime_s": round(now - p.start, 1) if p.state == "RUNNING" and p.start else None}
        proc = handles.get(p.pid)
        if proc is not None:
            try:
                with proc.oneshot():
                    conns = proc.net_connections(kind="inet")
                    unix_listening, unix_connected = unix_sockets(p.pid)
                    row.update(rss_bytes=proc.memory_info().rss, cpu_percent=round(proc.cpu_percent(None), 1),
                               open_fds=proc.num_fds(),
                               listening=sum(c.status == psutil.CONN_LISTEN for c in conns) + unix_listening,
                               connections=sum(c.status == psutil.CONN_ESTABLISHED for c in conns) + unix_connected)
            except psutil.Error as e:
                row["error"] = str(e)
        out.append(row)
    return out


_SO_ACCEPTCON = 0x10000          # /proc/net/unix Flags: a listening socket
_SS_CONNECTED = "03"


def unix_sockets(pid: int) -> tuple[int, int]:
    """(listening, connected) unix stream sockets of process `pid`, from /proc (psutil tells a
    unix socket's path but not whether it listens). Counted by inode: an inherited socket and its
    dup are one."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        with open("/proc/net/unix") as table:
            next(table)
            rows = [line.split() for line in table]
    except OSError:
        return 0, 0
    listening = connected = 0
    for row in rows:
        if len(row) >= 7 and row[6] in inodes and row[4] == "0001":     # SOCK_STREAM
            if int(row[3], 16) & _SO_ACCEPTCON:
                listening += 1
            elif row[5] == _SS_CONNECTED:
                connected += 1
    return listening, connected


def health_facts(state_file: Path, stale_after: float, now: float) -> dict[str, Any]:
    facts: dict[str, Any] = {"file": str(state_file)}
    try:
        state = health_state.read(state_file)
    except FileNotFoundError:
        return {**facts, "error": "no state file (the checker has not written one): all servers count as up"}
    except (OSError, health_state.HealthStateError) as e:
        return {**facts, "error": f"unreadable: {e}"}
    age = now - state.written_at
    return {**facts, "generation": state.generation, "checker_pid": state.checker_pid,
            "written_at": state.written_at, "age_s": round(age, 1), "stale": not -stale_after <= age <= stale_after,
            "servers": {key: {"state": "flapping" if s.flapping else s.state, "since": s.since,
                              "last_check": dict(s.last_check)}
                        for key, s in sorted(state.servers.items())}}


def route_facts(router: RouterConfig) -> dict[str, Any]:
    """The dynamic route table this node serves (its file: the table, or the Redis snapshot)."""
    facts: dict[str, Any] = {"store": router.routes.store, "file": str(router.routes.file)}
    try:
        table = read_table(router.routes.file)
    except StoreError as e:
        return {**facts, "error": str(e)}
    return {**facts, "version": table.version, "routes": [routes.route_doc(r) for _, r in sorted(table.routes.items())]}


def certificate_facts(configs: Path) -> list[dict[str, Any]]:
    """The certificates tls-terminator.toml names (entries and certs_dir), as `frontgate certs` lists them."""
    from tls_terminator.cert_report import describe_certificates
    ca = dev_ca.describe(dev_ca.default_dir(configs))
    try:
        cfg = load_terminator_config(configs / "tls-terminator.toml", require_files=False)
    except ConfigError as e:
        return [{"error": str(e)}]
    return describe_certificates(cfg) + ([ca] if ca else [])


def config_facts(rows: list[dict[str, Any]], status_dir: Path, configs: Path) -> None:
    """Add to each stage process's row the config fingerprint it runs (its status file), whether
    that is what configs/ holds now, and its last reload's outcome."""
    on_disk = {stage: fingerprint(stage, configs) for stage in STAGES}
    for row in rows:
        if row["stage"] not in STAGES or not row["pid"]:
            continue
        record = read_status(status_dir, row["process"], row["pid"])
        if record is None:
            row["config"] = {"error": f"no {status_path(status_dir, row['process'], row['pid'])}"}
            continue
        row["config"] = {"fingerprint": record["fingerprint"], "on_disk": on_disk[row["stage"]],
                         "current": record["fingerprint"] == on_disk[row["stage"]], "last": record["last"]}


def gather(configs: Path, supervisord_conf: Path, status_dir: Path = Path("run/status")) -> dict[str, Any]:
    now = time.time()
    facts: dict[str, Any] = {"time": now}
    try:
        sup = Supervisor(supervisord_conf)
        processes = sup.processes()
    except SupervisorError as e:
        facts["supervisord"] = {"error": str(e)}
        processes = []
    else:
        facts["supervisord"] = {"running": True}
    stages = [p for p in processes if p.group in STAGES]
    others = [p for p in processes if p.group not in STAGES]
    facts["processes"] = process_facts(sorted(stages, key=lambda p: STAGES.index(p.group)) + others)
    config_facts(facts["processes"], status_dir, configs)
    admin: dict[str, str] = {}
    try:
        router = load_router_config(configs / "mux-router.toml")
        facts["health"] = health_facts(router.state_file, router.state_stale_after, now)
        facts["routes"] = route_facts(router)
        if router.admin is not None:
            admin["mux-router"] = f"http://{router.admin.address}/stats"
    except ConfigError as e:
        facts["health"] = {"error": str(e)}
    facts["certificates"] = certificate_facts(configs)
    try:
        terminator = load_terminator_config(configs / "tls-terminator.toml", require_files=False)
        if terminator.admin is not None:
            admin["tls-terminator"] = f"http://{terminator.admin.address}/stats"
    except ConfigError:
        pass            # reported with the certificates
    from frontgate_ops import acme_report  # it imports this module's duration
    facts["acme"] = acme_report.facts(configs)
    with contextlib.suppress(ConfigError):
        manager = load_cert_manager_config(configs / "cert-manager.toml") if facts["acme"] else None
        if manager is not None and manager.admin is not None:
            admin["cert-manager"] = f"http://{manager.admin.address}/stats"
    facts["admin"] = admin
    return facts


def healthy(facts: dict[str, Any]) -> bool:
    """For the exit status: supervisord up and every process RUNNING."""
    return "error" not in facts["supervisord"] and all(p["state"] == "RUNNING" for p in facts["processes"])


# --------------------------------------------------------------------------- formatting (pure)

def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return "-"


def table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def when(ts: float, now: float) -> str:
    local = datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
    return f"{local} ({duration(now - ts)} ago)"


SHORT_FINGERPRINT = 12


def config_cell(config: dict[str, Any] | None) -> str:
    """The fingerprint a process runs (short), flagged when configs/ holds another one."""
    if not config or "error" in config:
        return "-"
    short = config["fingerprint"][:SHORT_FINGERPRINT] or "-"
    return short if config["current"] else f"{short} (OLD)"


def config_notes(processes: list[dict[str, Any]]) -> list[str]:
    notes = []
    for p in processes:
        config = p.get("config")
        if not config:
            continue
        if "error" in config:
            notes.append(f"  {p['process']}: config unknown: {config['error']}")
            continue
        if config["last"]["outcome"] != "ok":
            notes.append(f"  {p['process']}: last reload failed: {config['last']['message']}")
        if not config["current"]:
            notes.append(f"  {p['process']}: runs config {config['fingerprint'][:SHORT_FINGERPRINT]}, configs/ has "
                         f"{config['on_disk'][:SHORT_FINGERPRINT]}: `make reload` (or `make deploy`) applies it")
    return notes


def format_routes(facts: dict[str, Any] | None) -> list[str]:
    if not facts:
        return []
    head = f"routes  {facts['file']} ({facts['store']})"
    if "error" in facts:
        return ["", f"{head}: {facts['error']}"]
    rows = [["ROUTE", "SERVERS", "BALANCE", "OWNER", "REVISION"]]
    for r in facts["routes"]:
        key = r["host"] + ("" if r["path"] == "/" else r["path"])
        rows.append([key, " ".join(r["servers"]), r["balance"] + (" websocket" if r["websocket"] else ""),
                     r["owner"] or "-", str(r["revision"])])
    body = ["  " + line for line in table(rows)] if len(rows) > 1 else ["  no dynamic routes"]
    return ["", f"{head}: version {facts['version']}"] + body


def format_status(facts: dict[str, Any]) -> str:
    now = facts["time"]
    lines = ["processes"]
    if "error" in facts["supervisord"]:
        lines.append(f"  {facts['supervisord']['error']}")
    elif facts["processes"]:
        rows = [["STAGE", "PROCESS", "STATE", "PID", "UPTIME", "RSS", "CPU%", "FDS", "LISTEN", "CONNS", "CONFIG"]]
        for p in facts["processes"]:
            get = p.get
            rows.append([p["stage"], p["process"], p["state"], str(get("pid") or "-"), duration(get("uptime_s")),
                         size(get("rss_bytes")), str(get("cpu_percent", "-")), str(get("open_fds", "-")),
                         str(get("listening", "-")), str(get("connections", "-")), config_cell(get("config"))])
        lines += ["  " + line for line in table(rows)]
        lines += config_notes(facts["processes"])
    health = facts["health"]
    lines.append("")
    if "error" in health:
        lines += ["health", f"  {health.get('file', '')} {health['error']}".rstrip()]
    else:
        stale = ", STALE: the router ignores it (all servers count as up)" if health["stale"] else ""
        lines.append(f"health  {health['file']}: generation {health['generation']}, written {duration(health['age_s'])}"
                     f" ago by checker pid {health['checker_pid']}{stale}")
        rows = [["SERVER", "STATE", "SINCE", "LAST CHECK"]]
        for key, s in health["servers"].items():
            check = s["last_check"]
            rows.append([key, s["state"].upper(), when(s["since"], now), f"{check['detail']} ({check['took_ms']:g} ms)"])
        lines += ["  " + line for line in table(rows)] if len(rows) > 1 else ["  no servers checked yet"]
    lines += format_routes(facts.get("routes"))
    lines += ["", "certificates"]
    rows = [["FILE", "NAMES", "EXPIRES", "DAYS LEFT"]]
    for c in facts["certificates"]:
        if "error" in c:
            lines.append(f"  {c.get('file', '')} {c['error']}".rstrip())
            continue
        days = c["days_left"]
        note = " EXPIRED" if days < 0 else (" (renew soon)" if days < EXPIRY_WARNING_DAYS else "")
        expires = c["not_after"][:10]    # ISO 8601: the date
        rows.append([c["file"] + (" (default)" if c["default"] else ""), ",".join(c["names"]) or "-", expires,
                     f"{days}{note}"])
    if len(rows) > 1:
        lines += ["  " + line for line in table(rows)]
    if facts.get("acme"):
        from frontgate_ops import acme_report
        lines += [""] + acme_report.format_facts(facts["acme"], now)
    if facts.get("admin"):
        # /metrics next to each page.
        lines += ["", "stats pages"] + ["  " + line for line in table([[stage, url] for stage, url in facts["admin"].items()])]
    return "\n".join(lines)
