"""The self-service rules, pure: names from user_domains, ports from /proc/net/tcp text."""
from __future__ import annotations

import pytest

from frontgate_ops.route_broker import RuleRefusal, check_host, check_servers, parse_listening

DOMAINS = ("{user}.apps.example.net", "*.{user}.apps.example.net")

PROC_NET_TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1001        0 1 1
   1: 00000000:1F41 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1001        0 2 1
   2: 0101A8C0:1F42 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1001        0 3 1
   3: 0100007F:1F43 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1002        0 4 1
   4: 0100007F:1F44 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1001        0 5 1
"""


def test_listening_ports_are_the_uids_own_loopback_or_wildcard_listeners():
    # 8000 loopback, 8001 any address: yes; 8002 on 192.168.1.1, 8003 another uid, 8004 not LISTEN: no.
    assert parse_listening(PROC_NET_TCP, 1001) == {8000, 8001}
    assert parse_listening(PROC_NET_TCP, 1002) == {8003}


@pytest.mark.parametrize("host, allowed", [
    ("alice.apps.example.net", True), ("blog.alice.apps.example.net", True), ("*.alice.apps.example.net", True),
    ("a.b.alice.apps.example.net", False), ("bob.apps.example.net", False), ("xalice.apps.example.net", False),
    ("apps.example.net", False),
])
def test_user_domains(host, allowed):
    if allowed:
        check_host(DOMAINS, "alice", host)
    else:
        with pytest.raises(RuleRefusal, match="rule user_domains"):
            check_host(DOMAINS, "alice", host)


@pytest.mark.parametrize("servers, refused", [
    (("127.0.0.1:8000",), None), (("127.0.0.5:8000", "[::1]:8001"), None), (("localhost:8000",), None),
    (("127.0.0.1:9000",), "nothing of yours listens on port 9000"), (("10.0.0.1:8000",), "not on loopback"),
    (("unix:/tmp/app.sock",), "unix sockets"),
])
def test_own_ports(servers, refused):
    if refused is None:
        check_servers(servers, {8000, 8001})
    else:
        with pytest.raises(RuleRefusal, match=f"rule own_ports: .*{refused}"):
            check_servers(servers, {8000, 8001})
