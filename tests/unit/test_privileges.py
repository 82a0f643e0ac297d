"""Dropping privileges, in a child process (it cannot be undone in the test's own)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO


def run(code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from tls_terminator.privileges import *\n" + code],
                          capture_output=True, text=True, timeout=20, cwd=REPO, **kw)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_drop_to_user_and_group_for_good():
    r = run("import os\nprint(drop_privileges('nobody', 'nogroup', None), os.getresuid(), os.getresgid(), "
            "os.getgroups())\ntry:\n    os.setuid(0)\nexcept PermissionError:\n    print('cannot regain root')\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["[] (65534, 65534, 65534) (65534, 65534, 65534) [65534]", "cannot regain root"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_without_user_is_a_warning_and_unknown_user_an_error():
    r = run("print(drop_privileges(None, None, None))")
    assert "set terminator.user" in r.stdout
    r = run("drop_privileges('no-such-user-here', None, None)")
    assert r.returncode != 0 and "PrivilegeError: cannot drop privileges: unknown user or group" in r.stderr


def test_not_root_ignores_the_settings_with_a_warning(monkeypatch):
    from tls_terminator import privileges
    monkeypatch.setattr(privileges.os, "geteuid", lambda: 65534)     # what a non-root start sees
    assert privileges.drop_privileges("root", None, None) == [
        "not running as root: user/group/chroot ignored, running as nobody"]
    assert privileges.drop_privileges(None, None, None) == []
