"""The shape of the tree: the shared core imports no daemon, and no module outgrows one job."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DAEMONS_AND_TOOLS = {"tls_terminator", "mux_router", "health_checker", "cert_manager", "frontgate_ops"}


def imported_packages(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out


def test_the_core_imports_no_daemon():
    offenders = {p.name: sorted(imported_packages(p) & DAEMONS_AND_TOOLS)
                 for p in sorted((REPO / "frontgate").glob("*.py"))}
    assert {name: pkgs for name, pkgs in offenders.items() if pkgs} == {}
