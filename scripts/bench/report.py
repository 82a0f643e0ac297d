"""Collecting samples and writing them up: the printed table, results.md, the chart's data.

Cells are `median (min–max)` over the rounds. Ratios are frontgate's median over the reference's
median, for the headline metrics, as the issue asks; whether higher is better is said per metric.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

from scripts.bench.configs import workers_value
from scripts.bench.harness import REPO, RUN_WIDE, Settings, System
from scripts.bench.parse import Summary, ratio, summarize
from scripts.bench.scenarios import Metric, Scenario


@dataclass
class Results:
    samples: dict[tuple[int, str, str], list[float]] = field(default_factory=dict)
    failures: list[tuple[int, str, int, str]] = field(default_factory=list)   # scenario, system, round, why

    def add(self, scenario: int, system: str, values: dict[str, float]) -> None:
        for metric, value in values.items():
            self.samples.setdefault((scenario, system, metric), []).append(value)

    def fail(self, scenario: int, system: str, round_: int, why: str) -> None:
        self.failures.append((scenario, system, round_, why))

    def summary(self, scenario: int, system: str, metric: str) -> Summary | None:
        return summarize(self.samples.get((scenario, system, metric), []))

    def to_json(self) -> dict:
        return {"samples": [[sid, system, metric, values] for (sid, system, metric), values in self.samples.items()],
                "failures": [list(f) for f in self.failures]}

    @classmethod
    def from_json(cls, data: dict) -> "Results":
        return cls(samples={(sid, system, metric): values for sid, system, metric, values in data["samples"]},
                   failures=[tuple(f) for f in data["failures"]])


def cell(s: Summary | None, fmt: str, rounds: int = 1) -> str:
    """`median (min–max)`, and how many rounds it is made of when some failed."""
    if s is None:
        return "–"
    text = fmt.format(s.median)
    if s.n > 1 and s.low != s.high:
        text += f" ({fmt.format(s.low)}–{fmt.format(s.high)})"
    return text + (f" [{s.n} of {rounds} rounds]" if s.n < rounds else "")


def ratio_text(r: float | None) -> str:
    return "–" if r is None else f"{r:.2f}"


def pairs(sc: Scenario) -> list[tuple[System, System]]:
    """(frontgate side, reference) comparisons of a scenario: HAProxy alone is compared with the
    router alone (as shipped and with its log off), every other reference with the whole frontgate
    pipeline (both rows when both ran)."""
    ours = [s for s in sc.systems if s.frontgate]
    out = []
    for ref in (s for s in sc.systems if not s.frontgate):
        mine = [s for s in ours if not s.tls] if ref.key == "haproxy" else [s for s in ours if s.tls]
        out += [(m, ref) for m in (mine or ours)]
    return out


def _rival(system: System) -> bool:
    """A reference the summary states ratios against (not a floor, not a second reference row)."""
    return not system.frontgate and not system.diagnostic and not system.secondary


def advantage(metric: Metric, ours: Summary | None, ref: Summary | None) -> float | None:
    """How many times better frontgate is (> 1: frontgate wins), whatever the metric's direction."""
    r = ratio(ours, ref)
    if r is None or r == 0:
        return None
    return r if metric.higher_is_better else 1 / r


@dataclass(frozen=True)
class Comparison:
    scenario: Scenario
    metric: Metric
    ours: System
    ref: System
    ours_summary: Summary | None
    ref_summary: Summary | None

    @property
    def ratio(self) -> float | None:
        return ratio(self.ours_summary, self.ref_summary)

    @property
    def advantage(self) -> float | None:
        return advantage(self.metric, self.ours_summary, self.ref_summary)


def comparisons(results: Results, scenarios: list[Scenario]) -> list[Comparison]:
    """Every headline metric against every reference: the summary table's rows and the chart's bars."""
    out = []
    for sc in scenarios:
        for m in sc.metrics:
            if m.headline:
                for ours, ref in pairs(sc):
                    if not _rival(ref):
                        continue        # a measuring stick or a second row, in its scenario's table only
                    out.append(Comparison(sc, m, ours, ref, results.summary(sc.id, ours.key, m.key),
                                          results.summary(sc.id, ref.key, m.key)))
    return out


def _ratio_note(results: Results, sc: Scenario, a: System, b: System, metric: Metric) -> str:
    return (f"{a.label} / {b.label} ({metric.label}): "
            f"{ratio_text(ratio(results.summary(sc.id, a.key, metric.key), results.summary(sc.id, b.key, metric.key)))}")


def floor_notes(results: Results, sc: Scenario) -> list[str]:
    """What the diagnostic systems (the relay floors) reach against each real reference."""
    refs = [s for s in sc.systems if _rival(s)]
    return [_ratio_note(results, sc, d, ref, sc.first_metric) for d in sc.systems if d.diagnostic for ref in refs]


def metric_notes(results: Results, sc: Scenario) -> list[str]:
    """The ratios of a scenario's `noted` metrics, frontgate's side against each real reference."""
    return [_ratio_note(results, sc, ours, ref, m)
            for m in sc.metrics if m.noted for ours, ref in pairs(sc) if _rival(ref)]


def _stack_cpu(results: Results, sc: Scenario, system: System) -> float | None:
    """CPU µs per request of all of a system's stages (the sum of their medians)."""
    stages = [results.summary(sc.id, system.key, m.key) for m in sc.metrics if m.key.startswith("cpu_")]
    known = [s.median for s in stages if s is not None]
    return sum(known) if known and len(known) == len(stages) else None


def cpu_notes(results: Results, sc: Scenario) -> list[str]:
    """CPU per request of the whole stack, frontgate's side over each real reference: what the
    rates would be on CPUs given to the proxies alone, and less swayed by a busy machine."""
    out = []
    for ours, ref in pairs(sc):
        mine, theirs = _stack_cpu(results, sc, ours), _stack_cpu(results, sc, ref)
        if _rival(ref) and mine is not None and theirs:
            out.append(f"CPU µs per request, all stages: {ours.label} {mine:,.1f}, {ref.label} {theirs:,.1f} "
                       f"(frontgate / reference {mine / theirs:.2f}; lower is better)")
    return out


# --------------------------------------------------------------------------- tables

def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def target_text(metric: Metric, r: float | None) -> str:
    """The issue's target for frontgate / reference, and whether this run met it."""
    if metric.target_ratio is None or r is None:
        return metric.target
    return f"{metric.target}: {'met' if r >= metric.target_ratio else '**not met**'}"


def summary_table(results: Results, scenarios: list[Scenario], rounds: int) -> str:
    rows = []
    for c in comparisons(results, scenarios):
        better = "higher is better" if c.metric.higher_is_better else "lower is better"
        rows.append([str(c.scenario.id), f"{c.metric.label} ({better})", c.ours.label,
                     cell(c.ours_summary, c.metric.fmt, rounds), c.ref.label, cell(c.ref_summary, c.metric.fmt, rounds),
                     ratio_text(c.ratio), target_text(c.metric, c.ratio)])
    return _table(["#", "metric", "frontgate side", "median (min–max)", "reference", "median (min–max)",
                   "frontgate / reference", "target"], rows)


def scenario_table(results: Results, sc: Scenario, rounds: int) -> str:
    """Every system's every metric, and each frontgate-side row's ratio over it (first metric)."""
    first = sc.first_metric
    compared = set((ours.key, ref.key) for ours, ref in pairs(sc))
    ours_rows = [s for s in sc.systems if s.frontgate]
    header = ["system", *[m.label for m in sc.metrics], *[f"{o.short} / this ({first.label})" for o in ours_rows]]
    rows = []
    for system in sc.systems:
        row = [system.label, *[cell(results.summary(sc.id, system.key, m.key), m.fmt, rounds) for m in sc.metrics]]
        for ours in ours_rows:
            row.append(ratio_text(ratio(results.summary(sc.id, ours.key, first.key),
                                        results.summary(sc.id, system.key, first.key)))
                       if (ours.key, system.key) in compared else "")
        rows.append(row)
    return _table(header, rows)


# --------------------------------------------------------------------------- machine

def _first_line(argv: list[str], pattern: str = r".+") -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    for line in (done.stdout + done.stderr).splitlines():
        m = re.search(pattern, line)
        if m:
            return m.group(0).strip()
    return "?"


def _pyopenssl_version() -> str:
    try:
        from OpenSSL import SSL
        return SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    except Exception:  # noqa: BLE001 - informational only
        return "?"


def machine_info() -> dict[str, str]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    except OSError:
        pass
    rev = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], r".+")
    return {
        "cpus": f"{os.cpu_count()} x {cpu}",
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "frontgate": rev + (" (+ uncommitted changes)" if dirty not in ("?", "not found") else ""),
        "haproxy": _first_line(["haproxy", "-v"], r"HAProxy version \S+"),
        "stunnel": _first_line(["stunnel", "-version"], r"stunnel \S+"),
        "nginx": _first_line(["nginx", "-v"], r"nginx/\S+"),
        "openssl (stunnel, HAProxy, wrk, ab)": _first_line(["openssl", "version"], r"OpenSSL \S+"),
        "openssl (frontgate, via pyOpenSSL)": _pyopenssl_version(),
        "wrk": _first_line(["wrk", "--version"], r"wrk \S+"),
        "ab": _first_line(["ab", "-V"], r"ApacheBench, Version \S+"),
    }


def busy_warning(load_before: float, load_after: float) -> str | None:
    """Other work on the machine skews every number; say so where the numbers are."""
    cpus = os.cpu_count() or 1
    if load_before > 0.5 * cpus:
        return (f"**The machine was busy before the run started** (1-minute load average {load_before:.1f} on "
                f"{cpus} CPUs; {load_after:.1f} at the end): other processes competed with both stacks, and the "
                "numbers are less reliable than their spread suggests. Re-run on an idle machine.")
    return None


def markdown(results: Results, scenarios: list[Scenario], settings: Settings, notes: dict[int, list[str]],
             machine: dict[str, str], elapsed: float, chart: str | None, warning: str | None = None,
             generated: str | None = None) -> str:
    out = ["# frontgate vs stunnel + HAProxy: benchmark results", "",
           f"Generated by `scripts/bench/run` on {generated or time.strftime('%Y-%m-%d %H:%M %Z')} in {elapsed / 60:.1f} min"
           + (" — **smoke run: the numbers mean nothing**" if settings.smoke else "") + ".", "",
           f"Rounds: {settings.rounds}, {settings.duration:g} s per timed run; the systems alternate within each "
           "round (the one that goes first rotates) and every measurement starts its stack fresh. Cells are "
           "`median (min–max)` over the rounds. Everything runs on one machine over 127.0.0.1, load generators "
           "included, so they compete with the proxies for the same CPUs.", "",
           *([warning, ""] if warning else []),
           "## Machine", "",
           _table(["", ""], [[k, v] for k, v in machine.items()]), "",
           "## Setup", "",
           f"- frontgate, two rows: **as shipped** (`workers = {workers_value(settings.fg_workers)}` in both daemons' "
           "configs, the router's access log on, httplog lines appended to `router.access_log_file`, as "
           "`configs/mux-router.toml` ships it) and **access log off** (`access_log = \"off\"`, the same otherwise), "
           "the like-for-like row beside HAProxy, which logs nothing here. "
           + (f"The terminator runs `workers = {settings.terminator_workers}`. " if settings.terminator_workers
              and settings.terminator_workers != settings.fg_workers else "") +
           "The harness starts as many processes as each config's `workers` (read by frontgate's own loader), as "
           "supervisord's `numprocs` does; the terminator passes PROXY v2 to the router's `from_terminator` "
           "listener, a unix socket that the routers share (bound once and passed to each as its stdin, as "
           "supervisord's fcgi-program does).",
           "- reference, **the one every ratio is stated against**: stunnel 5 tuned as a user who benchmarks it "
           "runs it: seed 004's config (`pid`, `cert`, `fips = no`, one `[https]` service) plus `TIMEOUTclose = 0`, "
           "`socket = l:TCP_NODELAY=1`, `socket = r:TCP_NODELAY=1` and `debug = warning` (stunnel 5.68 already "
           "sets TCP_NODELAY on both sides by default: `stunnel -sockets`), in front of HAProxy 2.6 in HTTP mode "
           f"(`nbthread {settings.haproxy_threads}`: every CPU; `option http-keep-alive`, `option forwardfor`, "
           "`balance roundrobin`, no logging). A second row runs seed 004's stunnel config as it is (no "
           "TIMEOUTclose, so stunnel's default of 60 s; logging at its default level, notice: a line per "
           "connection); its ratios are in its scenario's table only.",
           "- backend: nginx, 1 worker, static 1 KiB and 64 KiB files (a query string is ignored: the same file), "
           "access log off; a Python WebSocket echo server; for scenario 6, three Python HTTP/1.0 servers "
           "sleeping 50 ms per request, 4 at a time.",
           "- same routes on both stacks (by Host), same certificate (ECDSA P-256 unless said), clients do not "
           "verify it. Both negotiate TLS 1.3; note the TLS libraries differ (see Machine): frontgate uses the "
           "OpenSSL that comes with pyOpenSSL/cryptography, stunnel and HAProxy Debian's.",
           "- every request different (the headline of scenarios 1, 2 and 4, and scenario 3's resumed "
           "connections): a wrk script gives each request its own query string and its own cookie "
           "(`/1k.bin?t=THREAD&n=N`, `Cookie: session=THREAD-N`), unique across wrk's threads too; the shipped "
           "router's access log is checked to hold each target once. The same request byte for byte (plain "
           "wrk) is measured too, on the same fresh stack just before, and given in the notes.",
           "- CPU µs per request: user + system time of each stage's processes (`/proc/PID/stat`, every "
           "thread) over the varied wrk run, divided by the requests wrk completed. The TLS stage is the "
           "terminators or stunnel, the HTTP stage the routers or HAProxy (or the relay floor).",
           "- scenario 4 also runs two measuring sticks beside the router, as many processes as routers "
           "(`scripts/bench/floor.py`): a uvloop relay that does no HTTP work (a backend connection per client "
           "connection, heads sent on as they came, bodies framed by Content-Length), and the same relay with the "
           "router's two head parsers. Not rivals: they show what the router's other HTTP work costs.",
           *[f"- {fact}" for fact in notes.get(RUN_WIDE, [])],
           "- every daemon's output, and the configs, are in the work dir kept with `--keep`.", ""]
    if chart:
        out += [f"![frontgate advantage per headline metric]({chart})", ""]
    out += ["## Summary", "", summary_table(results, scenarios, settings.rounds), ""]
    for sc in scenarios:
        out += [f"## {sc.id}. {sc.title}", "", scenario_table(results, sc, settings.rounds), ""]
        lines = metric_notes(results, sc) + cpu_notes(results, sc) + floor_notes(results, sc) + notes.get(sc.id, [])
        out += [f"- {n}" for n in lines] + ([""] if lines else [])
    if results.failures:
        out += ["## Failed measurements", "", "These are left out of the medians above.", ""]
        for sid, system, rnd, why in results.failures:
            lines = [l.strip() for l in why.strip().splitlines() if l.strip()] or ["?"]
            # The first line says what failed, the last (often an exception) why.
            text = lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"
            out.append(f"- scenario {sid}, {system}, round {rnd + 1}: {text}")
        out.append("")
    return "\n".join(out)
