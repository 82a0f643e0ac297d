"""cert-manager against a real Pebble, through the real router and terminator: a name gets a
certificate by http-01 (the router answers the CA on its plain listener, before its https
redirect), the terminator serves it and `openssl s_client` verifies the chain against Pebble's
root; with Pebble stopped at renewal time the old certificate keeps being served while
cert-manager backs off; Pebble back, the certificate is renewed. Pebble's bad-nonce rejections
are survived. Everything on 127.0.0.1."""
from __future__ import annotations

import re

import pytest

from tests.acme_stack import Stack, metric
from tests.helpers import daemon_output, free_port, wait_until
from tests.pebble import Pebble, require_pebble


@pytest.fixture
def plain_port():
    return free_port()


@pytest.mark.timeout(180)
def test_issue_serve_back_off_while_pebble_is_down_then_renew(tmp_path, plain_port):
    require_pebble()
    pebble = Pebble(tmp_path / "pebble", plain_port, validity=40).start()
    stack = Stack(tmp_path, pebble, plain_port)
    logs: dict[str, str] = {}
    try:
        stack.start()
        # 1. Issued end to end: installed whole, mode 0600; the terminator serves it and the chain
        #    verifies against Pebble's root.
        first = wait_until(stack.installed_serial, timeout=60, interval=0.2, what="the first certificate")
        assert stack.cert_file().stat().st_mode & 0o777 == 0o600
        root = pebble.root_pem()
        served = wait_until(lambda: (s := stack.s_client(root))[0] == first and s, timeout=15, interval=0.3,
                            what="the terminator serving the new certificate")
        assert served[1] == "Verify return code: 0 (ok)", served
        # The CA's validation went through the router (the token answered 200 on the plain listener
        # despite its https redirect), and the token is gone now that the order has ended.
        router_log = daemon_output(stack.procs["router"])
        assert re.search(r"GET /\.well-known/acme-challenge/[A-Za-z0-9_-]+ HTTP/1\.1\"?.*", router_log), router_log
        assert re.search(r" 200 .*<acme-challenge>|<acme-challenge>.* 200 ", router_log), router_log
        assert list(stack.challenges.iterdir()) == []
        assert metric(stack.metrics(), "issued_total") == 1
        # 2. Pebble stops; renewal comes due (a third of 40 s left) and fails, again and again, with
        #    back-off; the certificate in use is untouched and still served.
        pebble.stop()
        wait_until(lambda: stack.state_doc().get("failures", 0) >= 2, timeout=60, interval=0.3,
                   what="two failed renewals")
        doc = stack.state_doc()
        assert doc["last_error"] and doc["next_attempt"] > doc["last_error_at"]
        assert stack.installed_serial() == first
        assert stack.s_client(root) == (first, "Verify return code: 0 (ok)")
        text = stack.metrics()
        assert metric(text, "failures_total") >= 2 and metric(text, "consecutive_failures") >= 2
        # 3. Pebble back (a new CA, which has forgotten the account): renewed, served, verified.
        pebble.start()
        second = wait_until(lambda: (s := stack.installed_serial()) != first and s, timeout=30, interval=0.2,
                            what="the renewed certificate")
        new_root = pebble.root_pem()
        served = wait_until(lambda: (s := stack.s_client(new_root))[0] == second and s, timeout=15, interval=0.3,
                            what="the terminator serving the renewed certificate")
        assert served[1] == "Verify return code: 0 (ok)"
        assert stack.state_doc()["failures"] == 0
        assert metric(stack.metrics(), "renewed_total") == 1
    finally:
        logs = stack.stop()
        pebble.stop()
    assert "order failed" in logs["cert-manager"] and "renewed" in logs["cert-manager"], logs["cert-manager"]


@pytest.mark.timeout(120)
def test_bad_nonce_rejections_are_survived(tmp_path, plain_port):
    """Pebble refusing 40% of good nonces: each POST is retried until one is taken, so the first
    order succeeds (the library alone retries once: an order of some 20 POSTs would fail)."""
    require_pebble()
    pebble = Pebble(tmp_path / "pebble", plain_port, nonce_reject=40).start()
    stack = Stack(tmp_path, pebble, plain_port)
    try:
        stack.start()
        wait_until(stack.installed_serial, timeout=60, interval=0.2, what="a certificate")
        text = stack.metrics()
        assert metric(text, "issued_total") == 1
        assert metric(text, "failures_total") == 0, stack.state_doc()
        assert float(re.search(r"^frontgate_cert_manager_bad_nonces_total (\S+)$", text, re.M).group(1)) > 0
    finally:
        stack.stop()
        pebble.stop()
