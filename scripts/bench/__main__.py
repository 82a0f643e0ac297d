"""frontgate's side-by-side benchmark against stunnel + HAProxy. Run it with `scripts/bench/run`
(or `make bench`); `--help` for the options. A complete run (all scenarios and systems, not --smoke)
writes scripts/bench/results.md and results.png; any run writes them to --out DIR when given."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

from scripts.bench import chart, history
from scripts.bench.harness import SYSTEMS, Run, Settings
from scripts.bench.report import Results, busy_warning, machine_info, markdown
from scripts.bench.scenarios import SCENARIOS, MeasurementError

HERE = Path(__file__).resolve().parent
TOOLS = {"wrk": "wrk", "ab": "apache2-utils", "h2load": "nghttp2-client", "haproxy": "haproxy", "stunnel": "stunnel4", "nginx": "nginx",
         "openssl": "openssl"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench/run", description=__doc__)
    p.add_argument("--smoke", action="store_true",
                   help="every scenario for about a second with tiny counts: checks the harness, not the speed")
    p.add_argument("--rounds", type=int, default=None, help="rounds of every scenario (default 3, smoke 1)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per timed load run (default 10)")
    p.add_argument("--scenarios", default=",".join(map(str, SCENARIOS)), help="comma-separated scenario numbers (default all)")
    p.add_argument("--systems", default="",
                   help=f"only these systems, comma-separated, of: {', '.join(SYSTEMS)} (default: all)")
    p.add_argument("--workers", type=int, default=None,
                   help="frontgate's `workers` per daemon (default: \"auto\", as shipped: one per CPU)")
    p.add_argument("--terminator-workers", type=int, default=None,
                   help="the terminator's `workers`, when it should differ from --workers")
    p.add_argument("--haproxy-threads", type=int, default=None, help="HAProxy nbthread (default: the number of CPUs)")
    p.add_argument("--ws-tunnels", type=int, default=5000, help="idle WebSocket tunnels in scenario 5")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for results.md and results.png (default: scripts/bench/ for a complete run, "
                        "nowhere for a partial or smoke run)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work dir (configs, daemon logs)")
    p.add_argument("--from-json", type=Path, default=None, metavar="FILE",
                   help="run nothing: write results.md and results.png again from a results.json "
                        "(into --out, default the file's directory)")
    args = p.parse_args(argv)
    try:
        args.scenario_ids = [int(x) for x in args.scenarios.split(",") if x.strip()]
    except ValueError:
        p.error(f"--scenarios: expected numbers like 1,2,4, got {args.scenarios!r}")
    unknown = [i for i in args.scenario_ids if i not in SCENARIOS]
    if unknown or not args.scenario_ids:
        p.error(f"--scenarios: unknown {unknown}; have {', '.join(map(str, SCENARIOS))}")
    args.system_keys = [x.strip() for x in args.systems.split(",") if x.strip()] or list(SYSTEMS)
    bad = [k for k in args.system_keys if k not in SYSTEMS]
    if bad:
        p.error(f"--systems: unknown {bad}; have {', '.join(SYSTEMS)}")
    if args.rounds is not None and args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


def missing_tools() -> list[str]:
    return [f"{tool} (Debian package {pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool) is None]


def _with_sbin_on_path() -> None:
    """haproxy and nginx live in /usr/sbin, which a non-login or CI environment may leave off PATH."""
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join(path + [d for d in ("/usr/sbin", "/sbin") if d not in path])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        write_outputs(json.loads(args.from_json.read_text()), args.out or args.from_json.parent)
        return 0
    _with_sbin_on_path()
    missing = missing_tools()
    if missing:
        print("bench: missing tools: " + ", ".join(missing) +
              "\n  apt-get install haproxy stunnel4 nginx wrk apache2-utils", file=sys.stderr)
        return 3
    cpus = os.cpu_count() or 1
    settings = Settings(duration=args.duration, rounds=args.rounds or (1 if args.smoke else 3), smoke=args.smoke,
                        fg_workers=args.workers, terminator_workers=args.terminator_workers,
                        haproxy_threads=args.haproxy_threads or cpus, ws_tunnels=args.ws_tunnels, keep_workdir=args.keep)
    scenarios = [SCENARIOS[i] for i in args.scenario_ids]
    scenarios = [replace(sc, systems=tuple(s for s in sc.systems if s.key in args.system_keys)) for sc in scenarios]
    scenarios = [sc for sc in scenarios if sc.systems]
    # SIGTERM (a CI timeout, `kill`) must tear the daemons down like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    _raise_fd_limit()

    results = Results()
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    if load_before > 0.5 * cpus:
        print(f"bench: warning: the machine is busy (load average {load_before:.1f} on {cpus} CPUs); "
              "the numbers will say more about the other processes than about the proxies", flush=True)
    print(f"bench: {settings.rounds} round(s), {settings.duration:g} s runs, scenarios "
          f"{','.join(str(s.id) for s in scenarios)}{' (smoke)' if settings.smoke else ''}", flush=True)
    try:
        with Run(settings, log=lambda m: print(f"bench: {m}", flush=True)) as run:
            run.start_backends(sleepy=any(sc.id == 6 for sc in scenarios))
            run_rounds(run, scenarios, results)
            notes = run.notes
    except KeyboardInterrupt:
        print("bench: interrupted; daemons stopped", file=sys.stderr)
        return 130

    # Only a complete run replaces the committed results; a partial one goes where --out says.
    complete = not settings.smoke and len(scenarios) == len(SCENARIOS) and set(args.system_keys) == set(SYSTEMS)
    record = {"settings": asdict(settings), "scenarios": [sc.id for sc in scenarios],
              "systems": args.system_keys, "notes": notes, "machine": machine_info(),
              "elapsed": time.monotonic() - started, "load": [load_before, os.getloadavg()[0]],
              "generated": time.strftime("%Y-%m-%d %H:%M %Z"),
              "results": results.to_json()}
    write_outputs(record, args.out or (HERE if complete else None))
    return 1 if results.failures else 0


def write_outputs(record: dict, out_dir: Path | None) -> None:
    """results.md, results.png and results.json (everything needed to write the first two again,
    with `--from-json`) into `out_dir`; the table goes to stdout in any case."""
    settings = Settings(**record["settings"])
    results = Results.from_json(record["results"])
    scenarios = [replace(SCENARIOS[i], systems=tuple(s for s in SCENARIOS[i].systems if s.key in record["systems"]))
                 for i in record["scenarios"]]
    png_name = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        png = chart.render(results, scenarios, out_dir / "results.png")
        png_name = png.name if png else None
    notes = {int(k): v for k, v in record["notes"].items()}
    text = markdown(results, scenarios, settings, notes, record["machine"], record["elapsed"], png_name,
                    busy_warning(*record["load"]), record.get("generated"))
    print()
    print(text)
    if out_dir is None:
        print(f"bench: partial or smoke run: {HERE / 'results.md'} left as it was (--out DIR to write one)")
        return
    md = out_dir / "results.md"
    md.write_text(history.with_history(text, md.read_text() if md.exists() else None))
    (out_dir / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    print("bench: wrote results.md, results.json" + (f" and {png_name}" if png_name else "") + f" in {out_dir}")


def run_rounds(run: Run, scenarios: list, results: Results) -> None:
    """Every scenario against every system, round after round. A failed measurement is recorded
    and the run goes on: one crashing daemon should not cost the other forty numbers."""
    for rnd in range(run.settings.rounds):
        for sc in scenarios:
            for system in _rotate(list(sc.systems), rnd):
                t0 = time.monotonic()
                try:
                    values = sc.measure(run, system)
                except (MeasurementError, RuntimeError, OSError, ValueError, subprocess.SubprocessError) as e:
                    results.fail(sc.id, system.key, rnd, str(e))
                    print(f"  [{rnd + 1}] {sc.id} {system.key}: FAILED: {e}", flush=True)
                    if run.settings.smoke:
                        traceback.print_exc()
                    continue
                results.add(sc.id, system.key, values)
                shown = ", ".join(f"{k}={v:,.2f}" for k, v in values.items())
                print(f"  [{rnd + 1}] {sc.id} {system.key}: {shown} ({time.monotonic() - t0:.1f} s)", flush=True)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _rotate(items: list, n: int) -> list:
    """Round r starts with a different system, so none is always measured first (or last)."""
    n %= len(items)
    return items[n:] + items[:n]


def _raise_fd_limit() -> None:
    """5,000 tunnels are 10,000+ sockets in some processes; children inherit the limit."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


if __name__ == "__main__":
    sys.exit(main())
