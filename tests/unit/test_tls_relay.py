"""tls.may_have_plaintext / tls.drain_output: the relay trusts them to say when OpenSSL holds nothing
more, so a wrong "nothing" would stall a connection. Checked against a real in-memory handshake."""
from __future__ import annotations

import ctypes
import gc

import pytest
import trustme
from OpenSSL import SSL

from frontgate.config import TlsPolicy
from tls_terminator.tls import drain_output, may_have_plaintext, new_context, renew_bios


@pytest.fixture(scope="module")
def server_ctx() -> SSL.Context:
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    leaf = ca.issue_cert("relay.test", key_type=trustme.KeyType.ECDSA)
    ctx = new_context(TlsPolicy())
    with leaf.private_key_and_cert_chain_pem.tempfile() as pem:
        ctx.use_certificate_chain_file(pem)
        ctx.use_privatekey_file(pem)
    return ctx


@pytest.fixture(scope="module")
def pair(server_ctx) -> tuple[SSL.Connection, SSL.Connection]:
    return handshake(server_ctx)


def handshake(server_ctx: SSL.Context) -> tuple[SSL.Connection, SSL.Connection]:
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    for _ in range(10):
        for conn in (client, server):
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                pass
        for src, dst in ((client, server), (server, client)):
            out = drain_output(src)
            if out:
                dst.bio_write(out)
    assert drain_output(client) == drain_output(server) == b""
    return server, client


def read_all(conn: SSL.Connection) -> bytes:
    """What the relay does: recv while OpenSSL may have plaintext, never past a WantReadError."""
    got = []
    while may_have_plaintext(conn):
        try:
            got.append(conn.recv(65536))
        except SSL.WantReadError:
            break
    return b"".join(got)


@pytest.mark.parametrize("sizes", [[100], [20000, 5, 16384], [70000]])
def test_every_record_is_read_and_a_partial_one_waits(pair, sizes):
    server, client = pair
    wire = b""
    for n in sizes:
        client.sendall(b"a" * n)
        wire += drain_output(client)
    # Several records in one bio_write, the last one cut short: everything complete comes out...
    got = read_all_after(server, wire[:-7])
    # ...and the rest once its last bytes arrive; then OpenSSL holds nothing.
    got += read_all_after(server, wire[-7:])
    assert got == b"a" * sum(sizes)
    assert not may_have_plaintext(server)
    read_all(client)   # the server's session tickets, if any, must not linger for the next test


def read_all_after(conn: SSL.Connection, data: bytes) -> bytes:
    conn.bio_write(data)
    return read_all(conn)


def test_drain_output_takes_a_large_write_in_one_piece(pair):
    server, client = pair
    assert server.send(b"z" * 50000) == 50000     # no partial writes (apply_policy clears the mode)
    wire = drain_output(server)
    assert drain_output(server) == b""
    client.bio_write(wire)
    assert read_all(client) == b"z" * 50000


def test_close_notify_is_seen(pair):
    server, client = pair
    client.shutdown()
    server.bio_write(drain_output(client))
    assert may_have_plaintext(server)
    with pytest.raises(SSL.ZeroReturnError):
        server.recv(65536)


def test_renewed_bios_carry_the_connection_on_and_wait_for_pending_bytes(server_ctx):
    server, client = handshake(server_ctx)
    read_all(client)        # the session tickets
    client.sendall(b"x" * 100)
    wire = drain_output(client)
    # OpenSSL takes the first part of a record out of the BIO into its own buffer: the BIO is
    # empty, and the rest of the record may come through the new one.
    assert read_all_after(server, wire[:-3]) == b""
    old = (server._into_ssl, server._from_ssl)
    assert renew_bios(server)
    assert server._into_ssl != old[0] and server._from_ssl != old[1]
    assert read_all_after(server, wire[-3:]) == b"x" * 100
    server.sendall(b"queued")
    assert not renew_bios(server)               # a record still waits in the outgoing BIO
    client.bio_write(drain_output(server))
    assert read_all(client) == b"queued"
    assert renew_bios(server)
    client.sendall(b"y" * 20000)
    assert read_all_after(server, drain_output(client)) == b"y" * 20000
    server.sendall(b"z" * 50000)
    client.bio_write(drain_output(server))
    assert read_all(client) == b"z" * 50000


def malloc_in_use() -> int:
    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = Mallinfo2
    info = mallinfo2()
    return info.uordblks + info.hblkhd


def test_renewing_the_bios_after_the_handshake_frees_what_it_grew(server_ctx):
    """What the terminator does once per connection: the handshake's BIO buffers (about 2 KiB with
    this ECDSA certificate) are given back (malloc's bytes in use, over 100 connections)."""
    pairs = [handshake(server_ctx) for _ in range(100)]
    gc.collect()
    before = malloc_in_use()
    assert all(renew_bios(server) for server, _ in pairs)
    freed = (before - malloc_in_use()) / len(pairs)
    assert freed > 1024, freed
