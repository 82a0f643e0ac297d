"""The admin listener's stats page, in the manner of HAProxy's: data dict in, one HTML document out.

Pure: no I/O, no clock (the data carries `now`). Inline CSS only, no scripts, no external URLs;
it reloads itself with a meta refresh. Every value is HTML-escaped: app names, server addresses,
health check details and certificate names come from configs, the network and certificates.
"""
from __future__ import annotations

import datetime
import html
from typing import Any, Iterable

UP_COLOUR = "#c0f0c0"        # HAProxy: green rows for servers up ...
DOWN_COLOUR = "#f0b0b0"      # ... red for down (and for certificates about to expire)
WARN_COLOUR = "#f8e08a"
CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

CSS = f"""
body {{ font-family: Helvetica, Arial, sans-serif; font-size: 13px; margin: 8px; color: #000; background: #fff; }}
h1 {{ font-size: 18px; background: #20377a; color: #fff; padding: 6px 8px; margin: 0 0 6px 0; }}
h2 {{ font-size: 14px; margin: 14px 0 4px 0; }}
table {{ border-collapse: collapse; margin-bottom: 6px; }}
th, td {{ border: 1px solid #999; padding: 2px 6px; }}
th {{ background: #b0c4de; font-weight: bold; }}
td.num {{ text-align: right; font-family: monospace; }}
tr.up td {{ background: {UP_COLOUR}; }}
tr.down td {{ background: {DOWN_COLOUR}; }}
tr.total td {{ background: #e0e0e0; font-weight: bold; }}
tr.own td {{ background: #f4f4f4; font-style: italic; }}
td.bad {{ background: {DOWN_COLOUR}; }}
td.warn {{ background: {WARN_COLOUR}; }}
.info td {{ border: none; padding: 1px 8px 1px 0; }}
.muted {{ color: #555; }}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".") if not value.is_integer() else str(int(value))
    return str(value)


def _cell(value: Any, cls: str = "num") -> str:
    return f'<td class="{cls}">{esc(_num(value))}</td>'


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _table(headers: Iterable[str], rows: Iterable[str]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f"<table><tr>{head}</tr>\n" + "\n".join(rows) + "\n</table>\n"


def _processes(data: dict, requests_title: str) -> str:
    rows = [f"<tr><td>{esc(p['pid'])}</td><td>{esc(_duration(p.get('uptime', 0)))}</td>"
            f"{_cell(p.get('connections', 0))}{_cell(p.get('requests', 0))}</tr>" for p in data.get("processes", [])]
    return "<h2>Processes</h2>\n" + _table(("pid", "uptime", "connections", requests_title), rows)


def _document(title: str, refresh: int, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta http-equiv="refresh" content="{int(refresh)}">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style></head>\n<body>\n{body}</body></html>\n")


def _header(data: dict, title: str, facts: list[tuple[str, Any]]) -> str:
    uptime = max((p.get("uptime", 0) for p in data.get("processes", [])), default=0)
    facts = [("version", data.get("version", "?")), ("processes", len(data.get("processes", []))),
             ("uptime", _duration(uptime)), *facts]
    now = datetime.datetime.fromtimestamp(data.get("now", 0), datetime.timezone.utc)
    rows = "".join(f"<tr><td>{esc(k)}</td><td><b>{esc(v)}</b></td></tr>" for k, v in facts)
    return (f"<h1>{esc(title)}</h1>\n<table class=\"info\">{rows}</table>\n"
            f'<p class="muted">{esc(now.strftime("%Y-%m-%d %H:%M:%S"))} UTC, refreshed every '
            f"{esc(data.get('refresh', 5))} s</p>\n")


# --------------------------------------------------------------------------- router

_SERVER_HEADERS = ("server", "state", "since / why", "weight", "active", "maxconn", "requests", *CODE_CLASSES,
                   "connect errors", "req/s")


def _since(data: dict, server: dict) -> str:
    parts = []
    if server.get("since"):
        parts.append(f"for {_duration(data.get('now', 0) - server['since'])}")
    if server.get("why"):
        parts.append(str(server["why"]))
    return ", ".join(parts) or "-"


def _app_section(data: dict, app: dict) -> str:
    rows = []
    for s in app["servers"]:
        up = s["status"] == "UP"
        rows.append(
            f'<tr class="{"up" if up else "down"}"><td>{esc(s["name"])}</td><td><b>{esc(s["status"])}</b></td>'
            f"<td>{esc(_since(data, s))}</td>{_cell(s.get('weight', 1))}{_cell(s['active'])}"
            f"{_cell(s.get('maxconn') or '-')}{_cell(s['requests'])}"
            + "".join(_cell(s["codes"].get(c, 0)) for c in CODE_CLASSES)
            + f"{_cell(s['connect_errors'])}{_cell(s['rate'])}</tr>")
    own = app["router_answers"]
    rows.append('<tr class="own"><td>router (own answers)</td><td></td><td></td><td></td><td></td><td></td>'
                f"{_cell(own['requests'])}" + "".join(_cell(own["codes"].get(c, 0)) for c in CODE_CLASSES)
                + f"<td></td>{_cell(own['rate'])}</tr>")
    t = app["totals"]
    rows.append(f'<tr class="total"><td>Total</td><td>{esc(t["up"])}/{esc(t["servers"])} up</td><td></td><td></td>'
                f"{_cell(t['active'])}<td></td>{_cell(t['requests'])}"
                + "".join(_cell(t["codes"].get(c, 0)) for c in CODE_CLASSES)
                + f"{_cell(t['connect_errors'])}{_cell(t['rate'])}</tr>")
    queue_cls = "num bad" if app.get("queue") else "num"
    summary = (f'<table class="info"><tr><td>queue</td><td class="{queue_cls}">{esc(app.get("queue", 0))}</td>'
               f"<td>retries</td><td class=\"num\">{esc(_num(app.get('retries', 0)))}</td>"
               f"<td>bytes in</td><td class=\"num\">{esc(_bytes(app.get('bytes_in', 0)))}</td>"
               f"<td>bytes out</td><td class=\"num\">{esc(_bytes(app.get('bytes_out', 0)))}</td></tr></table>\n")
    return f'<h2>app {esc(app["name"])}</h2>\n' + _table(_SERVER_HEADERS, rows) + summary


def render_router(data: dict) -> str:
    age = data.get("state_file_age", -1)
    state = ("none" if age is None or age < 0 else
             f"{age:.1f} s old" + ("" if data.get("state_fresh") else " (stale: all servers treated as up)"))
    body = _header(data, "frontgate mux-router statistics", [
        ("connections", _num(data.get("connections", 0))), ("tunnels", _num(data.get("tunnels", 0))),
        ("requests", _num(data.get("requests", 0))), ("req/s (10 s)", _num(data.get("rate", 0))),
        ("health state", f"{data.get('state_file', '')}: {state}"),
        ("dynamic routes", f"{_num(data.get('routes', 0))} (table version {data.get('routes_version', 0)})"),
    ])
    body += _processes(data, "requests")
    for app in data.get("apps", []):
        body += _app_section(data, app)
    unrouted = data.get("unrouted", {})
    body += "<h2>Requests no app took (bad requests, redirects, 404, 421)</h2>\n" + _table(
        ("requests", *CODE_CLASSES),
        [f"<tr>{_cell(unrouted.get('requests', 0))}"
         + "".join(_cell(unrouted.get("codes", {}).get(c, 0)) for c in CODE_CLASSES) + "</tr>"])
    return _document("mux-router stats", data.get("refresh", 5), body)


# --------------------------------------------------------------------------- terminator

def render_terminator(data: dict) -> str:
    body = _header(data, "frontgate tls-terminator statistics", [
        ("listen", data.get("listen", "")), ("forward to", data.get("forward_to", "")),
        ("connections", f"{_num(data.get('connections', 0))} open (max {data.get('max_connections', '-')}), "
                        f"{_num(data.get('connections_total', 0))} accepted, "
                        f"{_num(data.get('connection_rate', 0))}/s"),
    ])
    body += _processes(data, "connections accepted")
    body += "<h2>Traffic</h2>\n" + _table(
        ("handshakes", "handshakes/s", "failures", "passthrough", "bytes in", "bytes out", "max_connections reached"),
        [f"<tr>{_cell(data.get('handshakes_total', 0))}{_cell(data.get('handshake_rate', 0))}"
         f"{_cell(data.get('failures_total', 0))}{_cell(data.get('passthrough', 0))}"
         f"{_cell(_bytes(data.get('bytes_in', 0)))}{_cell(_bytes(data.get('bytes_out', 0)))}"
         f"{_cell(data.get('max_connections_reached', 0))}</tr>"])
    body += "<h2>Handshakes by protocol version</h2>\n" + _table(
        ("version", "count"),
        [f"<tr><td>{esc(v)}</td>{_cell(n)}</tr>" for v, n in data.get("handshakes", {}).items()]
        or ['<tr><td colspan="2" class="muted">none yet</td></tr>'])
    body += "<h2>Handshake failures by reason</h2>\n" + _table(
        ("reason", "count"),
        [f"<tr><td>{esc(r)}</td>{_cell(n)}</tr>" for r, n in data.get("failures", {}).items()]
        or ['<tr><td colspan="2" class="muted">none</td></tr>'])
    warn_days = data.get("expiry_warning_days", 14)
    rows = []
    for c in data.get("certificates", []):
        days = c.get("days_left", 0)
        cls = "num bad" if days < warn_days else "num"
        left = "expired" if days <= 0 else f"{days:.0f} days"
        rows.append(f"<tr><td>{esc(', '.join(c.get('names', [])) or '-')}</td><td>{esc(c.get('file', ''))}</td>"
                    f"<td>{esc(c.get('key_type', ''))}</td><td>{esc(c.get('not_after', ''))}</td>"
                    f'<td class="{cls}">{esc(left)}</td><td>{"yes" if c.get("default") else ""}</td></tr>')
    body += "<h2>Certificates</h2>\n" + _table(("names", "file", "key", "not after", "expires in", "default"), rows)
    return _document("tls-terminator stats", data.get("refresh", 5), body)


def render(data: dict) -> str:
    if data.get("stage") == "tls-terminator":
        return render_terminator(data)
    return render_router(data)
