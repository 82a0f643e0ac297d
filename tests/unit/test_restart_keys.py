"""frontgate.restart_keys: which reloads are refused, and how the refusal reads."""
from __future__ import annotations

from pathlib import Path

import pytest

from frontgate.config import Address, AdminConfig, ConfigError
from frontgate.restart_keys import admin_changes, refuse_restart_changes

A = AdminConfig(address=Address.parse("127.0.0.1:8404"), refresh=5, stats_dir=Path("/run/stats"))


@pytest.mark.parametrize("running, new, refused", [
    (None, None, None),
    (A, A, None),
    (A, AdminConfig(A.address, refresh=30, stats_dir=A.stats_dir), None),     # refresh follows a reload
    (A, AdminConfig(Address.parse("127.0.0.1:8405"), stats_dir=A.stats_dir),
     "f.toml: admin.address: needs a restart (running with 127.0.0.1:8404, the file says 127.0.0.1:8405)"),
    (A, AdminConfig(A.address, stats_dir=Path("/elsewhere")), "f.toml: admin.stats_dir: needs a restart"),
    (None, A, "f.toml: admin.address: needs a restart (running with none, the file says 127.0.0.1:8404)"),
    (A, None, "f.toml: admin.address: needs a restart (running with 127.0.0.1:8404, the file says none)"),
])
def test_admin_changes(running, new, refused):
    if refused is None:
        refuse_restart_changes("f.toml", admin_changes(running, new))
    else:
        with pytest.raises(ConfigError) as e:
            refuse_restart_changes("f.toml", admin_changes(running, new))
        assert str(e.value).startswith(refused), str(e.value)


def test_the_first_changed_key_is_named():
    with pytest.raises(ConfigError) as e:
        refuse_restart_changes("t.toml", [("terminator.listen", "a", "a"), ("terminator.user", None, "www"),
                                          ("terminator.group", None, "www")])
    assert (e.value.key, e.value.file) == ("terminator.user", "t.toml")
