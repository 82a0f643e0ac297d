"""The terminator's SIGTERM drain with HTTP/2 clients: it never closes an h2 connection itself (a
close races the client's next request, which the client cannot tell from a lost one); it
half-closes it toward the router, which sends a GOAWAY naming the last stream it took. So a
request sent as the terminator stops is either answered or refused in a way the client may
retry on a new connection (RFC 9113 6.8): none is lost."""
from __future__ import annotations

import signal
import ssl
import time

import pytest

from tests.h2client import H2Client
from tests.helpers import free_port, start_daemon, stop_daemon
from tests.pipeline import running_pipeline

# How long after the SIGTERM the request goes: at once, and a little later.
DELAYS = (0.0, 0.0, 0.002, 0.01, 0.05, 0.2)
IDLE_BEFORE = 1.3       # past the drain's quiet time (1 s): what an idle keep-alive looks like


@pytest.fixture
def pipeline(tmp_path):
    yield from running_pipeline(tmp_path)


def start_terminator(pipeline, config: str, port: int):
    return start_daemon(["tls-terminator", "--config", str(pipeline.dir / config)], wait_for=("127.0.0.1", port))


def send_and_wait(client: H2Client, path: str) -> tuple[int | None, str]:
    """(stream id, outcome): answered, refused (safe to retry) or lost."""
    try:
        sid = client.request("maps.localhost", path)
    except (OSError, ssl.SSLError) as e:
        return None, f"lost: sending failed on a connection closed without GOAWAY ({e!r})"
    r = client.responses[sid]
    client.wait(lambda: r.ended or r.reset is not None or client.refused(sid), timeout=15)
    if r.ended and r.headers:
        return sid, f"answered {r.status}"
    if client.refused(sid):
        return sid, "refused"
    return sid, f"lost: goaway={client.goaway!r} reset={r.reset} closed={client.closed}"


def test_a_request_racing_the_terminator_drain_is_answered_or_refused_for_retry(pipeline):
    ctx = pipeline.client_context()
    # A second terminator (another worker, as far as the client is concerned) for the retries.
    spare_port = free_port()
    (pipeline.dir / "spare.toml").write_text(
        (pipeline.dir / "tls-terminator.toml").read_text().replace(f":{pipeline.tls_port}\"", f":{spare_port}\""))
    spare = start_terminator(pipeline, "spare.toml", spare_port)
    outcomes = []
    try:
        for i, delay in enumerate(DELAYS):
            if i:
                pipeline.procs["tls-terminator"] = start_terminator(pipeline, "tls-terminator.toml", pipeline.tls_port)
            term = pipeline.procs["tls-terminator"]
            client = H2Client.over_tls(pipeline.tls_port, "maps.localhost", ctx, past_goaway=True)
            assert client.get("maps.localhost", f"/warm/{i}").status == 200
            time.sleep(IDLE_BEFORE)
            term.send_signal(signal.SIGTERM)
            time.sleep(delay)
            sid, outcome = send_and_wait(client, f"/race/{i}")
            client.close()
            outcomes.append(outcome)
            assert not outcome.startswith("lost"), (delay, outcomes)
            if outcome == "refused":
                retry = H2Client.over_tls(spare_port, "maps.localhost", ctx)
                assert retry.get("maps.localhost", f"/race/{i}").status == 200
                retry.close()
            else:
                assert outcome == "answered 200", outcomes
            term.wait(15)
    finally:
        stop_daemon(spare)
    print("outcomes:", outcomes)
