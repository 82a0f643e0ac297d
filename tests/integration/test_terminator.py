"""tls-terminator as a real subprocess on ephemeral ports, in front of an in-test router stub that
decodes the PROXY v2 header and echoes. Certificates from a trustme CA."""
from __future__ import annotations

import asyncio
import datetime
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import warnings
from pathlib import Path

import psutil
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from frontgate.proxy_protocol import ProxyHeader, ProxyProtocolError, decode
from tests.helpers import BIN, daemon_output, free_port, start_daemon, stop_daemon, wait_until

MiB = 1 << 20


# --------------------------------------------------------------------------- certificates

class Pki:
    """A CA and the leaf certificates the tests serve; `der[label]` identifies what a client got."""

    def __init__(self, d: Path, ca: trustme.CA | None = None):
        self.dir = d
        self.ca = ca or trustme.CA()
        self.ca_file = d / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.der: dict[str, bytes] = {}

    def issue(self, label: str, *names: str, key_file: bool = False) -> str:
        """Write `<label>.pem` (chain, with the key unless `key_file`, then `<label>.key`); returns
        the TOML lines of its [[certificate]]."""
        leaf = self.ca.issue_cert(*names, common_name=label)
        chain = b"".join(p.bytes() for p in leaf.cert_chain_pems)
        key = leaf.private_key_pem.bytes()
        return self._write(label, chain, key, key_file, leaf.cert_chain_pems[0].bytes())

    def issue_cn_only(self, label: str, cn: str) -> str:
        """A certificate without subjectAltName: the SNI index falls back to its CN."""
        ca_cert = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())
        ca_key = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), None)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                .issuer_name(ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(ca_key, hashes.SHA256()))
        pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return self._write(label, pem, key_pem, False, pem)

    def _write(self, label: str, chain: bytes, key: bytes, key_file: bool, leaf_pem: bytes) -> str:
        cert_path, key_path = self.dir / f"{label}.pem", self.dir / f"{label}.key"
        if key_file:
            cert_path.write_bytes(chain)
            key_path.write_bytes(key)
            key_path.chmod(0o600)
        else:
            cert_path.write_bytes(key + chain)
            cert_path.chmod(0o600)
        self.der[label] = x509.load_pem_x509_certificate(leaf_pem).public_bytes(serialization.Encoding.DER)
        lines = f'[[certificate]]\ncert = "{cert_path.name}"\n'
        return lines + (f'key = "{key_path.name}"\n' if key_file else "")

    def client_context(self, **kw) -> ssl.SSLContext:
        # The chain is verified against our CA; which certificate was served is checked by the tests
        # (by DER), since the default and CN-only ones would fail Python's hostname check.
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.check_hostname = False
        for k, v in kw.items():
            setattr(ctx, k, v)
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = Pki(tmp_path_factory.mktemp("pki"))
    p.certificates = (p.issue("app", "app.test")
                      + p.issue("wild", "*.wild.test", key_file=True)
                      + p.issue("default", "default.test") + "default = true\n"
                      + p.issue_cn_only("cn", "cn.test"))
    return p


# --------------------------------------------------------------------------- the router stub

class RouterStub:
    """Stands in for mux-router: reads the PROXY v2 header with frontgate.proxy_protocol, records
    it by client port, then acts on the SNI's first label: "flood" sends FLOOD bytes, "sink" waits
    a second, then counts what it receives until EOF and answers the count; "slow" echoes each chunk
    SLOW_ANSWER seconds after it came (a request waiting for a slow answer); anything else echoes,
    and answers the client's EOF with "[eof]" and its own EOF. It counts the connections it got and
    those that ended without a byte; with `drop_next` > 0 it closes that many new connections at
    once, unread (a router whose request timeout ran out)."""

    FLOOD = 32 * MiB
    SLOW_ANSWER = 1.5

    def __init__(self, unix_path: Path | None = None):
        self.headers: dict[int, ProxyHeader] = {}
        self.errors: list[Exception] = []
        self.connections = 0
        self.empty = 0
        self.drop_next = 0
        self.port: int | None = None
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(unix_path, started), daemon=True)
        self.thread.start()
        assert started.wait(5), "router stub did not start"

    def _run(self, unix_path, started):
        asyncio.set_event_loop(self.loop)
        if unix_path is not None:
            self.server = self.loop.run_until_complete(asyncio.start_unix_server(self._handle, str(unix_path)))
        else:
            self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = self.server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()
        self.server.close()
        self.loop.run_until_complete(self.server.wait_closed())
        self.loop.close()

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def header_for(self, client_port: int) -> ProxyHeader:
        return wait_until(lambda: self.headers.get(client_port), timeout=5, what="PROXY header at the stub")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.connections += 1
        if self.drop_next > 0:
            self.drop_next -= 1
            writer.close()
            return
        buf = b""
        try:
            while (result := decode(buf)) is None:
                chunk = await reader.read(4096)
                if not chunk:
                    self.empty += not buf
                    writer.close()
                    return
                buf += chunk
        except ProxyProtocolError as e:
            self.errors.append(e)
            writer.close()
            return
        header, consumed = result
        self.headers[header.src[1] if header.src else 0] = header
        mode = (header.authority or "").split(".")[0]
        try:
            if mode == "flood":
                block = b"f" * (256 * 1024)
                for _ in range(self.FLOOD // len(block)):
                    writer.write(block)
                    await writer.drain()
            elif mode == "sink":
                await asyncio.sleep(1.0)
                count = len(buf) - consumed
                while chunk := await reader.read(MiB):
                    count += len(chunk)
                writer.write(str(count).encode())
            elif mode == "slow":
                while chunk := await reader.read(65536):
                    await asyncio.sleep(self.SLOW_ANSWER)
                    writer.write(chunk)
                    await writer.drain()
            else:
                writer.write(buf[consumed:])
                while chunk := await reader.read(65536):
                    writer.write(chunk)
                    await writer.drain()
                writer.write(b"[eof]")
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


@pytest.fixture(scope="module")
def router():
    stub = RouterStub()
    yield stub
    stub.stop()


# --------------------------------------------------------------------------- the daemon

class Terminator:
    def __init__(self, d: Path, certificates: str, forward_to: str, **options):
        self.dir = d
        self.port = free_port()
        self.config = d / "tls-terminator.toml"
        self.write_config(certificates, forward_to, **options)
        self.proc = start_daemon(["tls-terminator", "--config", str(self.config)],
                                 wait_for=("127.0.0.1", self.port))

    def write_config(self, certificates: str, forward_to: str, **options):
        opts = "".join(f"{k} = {v}\n" for k, v in options.items())
        self.config.write_text(f'[terminator]\nlisten = "127.0.0.1:{self.port}"\nforward_to = "{forward_to}"\n'
                               f"{opts}\n{certificates}")

    def output(self) -> str:
        return daemon_output(self.proc)

    def stop(self) -> str:
        out = stop_daemon(self.proc)
        assert "Traceback" not in out and "Exception in callback" not in out, out
        return out


@pytest.fixture(scope="module")
def terminator(pki, router):
    d = pki.dir    # relative certificate paths resolve against the TOML's directory
    t = Terminator(d, pki.certificates, f"127.0.0.1:{router.port}", handshake_timeout=1)
    yield t
    t.stop()


def connect(port: int, ctx: ssl.SSLContext, server_name: str | None, source: str = "127.0.0.1") -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return ctx.wrap_socket(raw, server_hostname=server_name)


def recv_exactly(sock, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, f"connection closed after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


def echo_once(sock, payload: bytes = b"ping") -> bytes:
    sock.sendall(payload)
    return recv_exactly(sock, len(payload))


# --------------------------------------------------------------------------- SNI and the header

@pytest.mark.parametrize("server_name,expected", [
    ("app.test", "app"),
    ("App.Test", "app"),
    ("x.wild.test", "wild"),
    ("a.b.wild.test", "default"),     # a wildcard covers exactly one label
    ("wild.test", "default"),
    ("cn.test", "cn"),                # no subjectAltName: the CN counts
    ("unknown.test", "default"),
    (None, "default"),                # no SNI at all
])
def test_certificate_is_chosen_by_sni(pki, terminator, server_name, expected):
    with connect(terminator.port, pki.client_context(), server_name) as s:
        assert s.getpeercert(binary_form=True) == pki.der[expected]
        assert echo_once(s) == b"ping"


def test_openssl_s_client_gets_the_sni_certificate(pki, terminator):
    def s_client(*args):
        r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{terminator.port}",
                            "-CAfile", str(pki.ca_file), *args],
                           input="", capture_output=True, text=True, timeout=20)
        return r.stdout + r.stderr
    out = s_client("-servername", "app.test", "-alpn", "h2,http/1.1")
    assert "CN = app" in out and "Verify return code: 0 (ok)" in out, out
    assert "ALPN protocol: h2" in out and "TLSv1.3" in out, out
    out = s_client("-servername", "x.wild.test")
    assert "CN = wild" in out, out
    out = s_client("-noservername")
    assert "CN = default" in out, out


def test_proxy_header_carries_client_address_sni_alpn_and_tls(pki, router, terminator):
    ctx = pki.client_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with connect(terminator.port, ctx, "app.test", source="127.0.0.3") as s:
        assert echo_once(s) == b"ping"
        assert s.selected_alpn_protocol() == "h2"
        header = router.header_for(s.getsockname()[1])
        assert header == ProxyHeader(command="PROXY", family="TCP4", src=s.getsockname(),
                                     dst=("127.0.0.1", terminator.port), authority="app.test",
                                     alpn="h2", tls_version=s.version(), tls_cipher=s.cipher()[0])


def test_tls12_and_no_sni_no_alpn(pki, router, terminator):
    ctx = pki.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    with connect(terminator.port, ctx, None) as s:
        assert echo_once(s) == b"ping"
        header = router.header_for(s.getsockname()[1])
        assert header.tls_version == "TLSv1.2" and header.tls_cipher == s.cipher()[0]
        assert s.cipher()[0].startswith("ECDHE-")
        assert header.authority is None and header.alpn is None


def test_alpn_without_a_protocol_of_ours_is_not_a_handshake_failure(pki, router, terminator):
    ctx = pki.client_context()
    ctx.set_alpn_protocols(["spdy/3"])
    with connect(terminator.port, ctx, "app.test") as s:
        assert s.selected_alpn_protocol() is None
        assert echo_once(s) == b"ping"
        assert router.header_for(s.getsockname()[1]).alpn is None


def test_tls_1_1_is_refused(pki, terminator):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)      # TLS 1.1 is deprecated: that is the point
        ctx = pki.client_context(minimum_version=ssl.TLSVersion.TLSv1_1, maximum_version=ssl.TLSVersion.TLSv1_1)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")     # so that this client can offer TLS 1.1 at all
    with pytest.raises(ssl.SSLError) as e:
        connect(terminator.port, ctx, "app.test")
    # The server said no (an alert), rather than the client failing on its own.
    assert "PROTOCOL_VERSION" in str(e.value).upper().replace(" ", "_"), e.value


# --------------------------------------------------------------------------- the early router connection

def _unchanged_for(read, seconds: float) -> bool:
    first = read()
    time.sleep(seconds)
    return read() == first


def test_a_failed_handshake_closes_its_router_connection_unused(pki, router, terminator):
    # The router connection opens with the first ClientHello bytes, so this client reaches the
    # router too; its handshake fails, and the router sees the connection end without a byte.
    # (An earlier test's failed handshake may still be reaching the router: counted first.)
    wait_until(lambda: _unchanged_for(lambda: (router.connections, router.empty), 0.3), what="the router stub idle")
    before_connections, before_empty, before_headers = router.connections, router.empty, len(router.headers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = pki.client_context(minimum_version=ssl.TLSVersion.TLSv1_1, maximum_version=ssl.TLSVersion.TLSv1_1)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        connect(terminator.port, ctx, "app.test")
    wait_until(lambda: router.empty > before_empty, what="the unused router connection to end")
    assert router.connections == before_connections + 1
    assert len(router.headers) == before_headers and not router.errors
    with connect(terminator.port, pki.client_context(), "app.test") as s:
        assert echo_once(s) == b"ping"


def test_a_router_that_drops_the_early_connection_gets_a_new_one(pki, router, terminator):
    # A client slow between its ClientHello and its Finished: the router gives up on the quiet
    # connection meanwhile (as its request timeout would); the end of the handshake connects again.
    before = router.connections
    router.drop_next = 1
    client = MemoryTlsClient(pki.client_context(), "app.test")
    with socket.create_connection(("127.0.0.1", terminator.port), timeout=10) as raw:
        client.start(raw)
        wait_until(lambda: router.connections == before + 1 and router.drop_next == 0,
                   what="the router to drop the early connection")
        time.sleep(0.2)          # and the terminator to hear of it, before the handshake ends
        client.finish_handshake(raw)
        client.send(raw, b"late ping")
        assert client.read(raw, 9) == b"late ping"
    assert router.connections == before + 2


class MemoryTlsClient:
    """A TLS client over memory BIOs, so a test decides when each handshake step goes out."""

    def __init__(self, ctx: ssl.SSLContext, server_name: str):
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=server_name)

    def start(self, raw: socket.socket) -> None:
        """Send the ClientHello."""
        with pytest.raises(ssl.SSLWantReadError):
            self.tls.do_handshake()
        raw.sendall(self.outgoing.read())

    def finish_handshake(self, raw: socket.socket) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if self.outgoing.pending:
                    raw.sendall(self.outgoing.read())
                self._receive(raw)
        if self.outgoing.pending:
            raw.sendall(self.outgoing.read())

    def send(self, raw: socket.socket, data: bytes) -> None:
        self.tls.write(data)
        raw.sendall(self.outgoing.read())

    def read(self, raw: socket.socket, n: int) -> bytes:
        got = b""
        while len(got) < n:
            try:
                got += self.tls.read(n - len(got))
            except ssl.SSLWantReadError:
                self._receive(raw)
        return got

    def _receive(self, raw: socket.socket) -> None:
        data = raw.recv(65536)
        assert data, "the terminator closed the connection"
        self.incoming.write(data)


# --------------------------------------------------------------------------- relaying

def test_one_mebibyte_each_way(pki, terminator):
    payload = os.urandom(MiB)

    async def talk():
        reader, writer = await asyncio.open_connection("127.0.0.1", terminator.port, ssl=pki.client_context(),
                                                       server_hostname="app.test")
        async def send():
            for i in range(0, len(payload), 100_000):   # uneven chunks, across record boundaries
                writer.write(payload[i:i + 100_000])
                await writer.drain()
        sender = asyncio.create_task(send())
        echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 20)
        await sender
        writer.close()
        return echoed

    assert asyncio.run(talk()) == payload


class BioClient:
    """A TLS client over a plain socket with memory BIOs: unlike ssl.SSLSocket it can send its
    close_notify (or a bare TCP FIN) and go on reading."""

    def __init__(self, port: int, ctx: ssl.SSLContext, server_name: str | None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=server_name)
        self._run(self.tls.do_handshake)

    def _send_pending(self):
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _run(self, op, *args):
        while True:
            try:
                result = op(*args)
                self._send_pending()
                return result
            except ssl.SSLWantReadError:
                self._send_pending()
                if self.incoming.eof:
                    raise ConnectionError("the server closed the connection without close_notify")
                data = self.sock.recv(65536)
                if data:
                    self.incoming.write(data)
                else:
                    self.incoming.write_eof()

    def send(self, data: bytes):
        self._run(self.tls.write, data)

    def send_close_notify(self):
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:    # sent ours; the peer's is still to come
            pass
        self._send_pending()

    def read_until_close_notify(self) -> bytes:
        out = bytearray()
        while True:
            try:
                chunk = self._run(self.tls.read, 65536)
            except ssl.SSLZeroReturnError:     # close_notify after we sent ours
                return bytes(out)
            if not chunk:                      # close_notify while our side is still open
                return bytes(out)
            out += chunk

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("how", ["close_notify", "tcp_fin"])
def test_half_close(pki, terminator, how):
    client = BioClient(terminator.port, pki.client_context(), "app.test")
    try:
        client.send(b"last words" * 10_000)
        if how == "close_notify":
            client.send_close_notify()
        else:
            client.sock.shutdown(socket.SHUT_WR)
        # Our side is closed; the router's answer still arrives, then its EOF as a close_notify.
        assert client.read_until_close_notify() == b"last words" * 10_000 + b"[eof]"
    finally:
        client.close()


def terminator_rss(t: Terminator) -> int:
    return psutil.Process(t.proc.pid).memory_info().rss


def test_quiet_connections_give_back_the_buffers_of_a_large_transfer(pki, own_router):
    """A memory BIO keeps the largest buffer it has needed: without new ones once a connection is
    quiet, each of these keep-alive connections would hold about 500 KiB after its 1 MiB echo. The
    freed pages must also leave the resident size (malloc_trim), which is what an operator sees."""
    t = Terminator(pki.dir, pki.certificates, f"127.0.0.1:{own_router.port}")
    count, payload = 20, os.urandom(MiB)

    async def echo(reader, writer) -> bytes:
        async def send():
            for i in range(0, len(payload), 200_000):
                writer.write(payload[i:i + 200_000])
                await writer.drain()
        sender = asyncio.create_task(send())
        echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 20)
        await sender
        return echoed

    async def talk() -> float:
        first = await asyncio.open_connection("127.0.0.1", t.port, ssl=pki.client_context(), server_hostname="app.test")
        assert await echo(*first) == payload        # the process's one-off allocations happen here
        await asyncio.sleep(2.5)
        before = terminator_rss(t)
        held = []
        for _ in range(count):
            conn = await asyncio.open_connection("127.0.0.1", t.port, ssl=pki.client_context(), server_hostname="app.test")
            assert await echo(*conn) == payload
            held.append(conn)
        deadline = time.monotonic() + 20       # BIO_QUIET, a sweep, and a trim (at most every 5 s)
        while (per_connection := (terminator_rss(t) - before) / count) > 150 * 1024 and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
        for _, writer in held + [first]:
            writer.close()
        return per_connection

    try:
        per_connection = asyncio.run(talk())
        assert per_connection < 150 * 1024, f"{per_connection / 1024:.0f} KiB per quiet connection"
    finally:
        t.stop()


def test_backpressure_from_a_slow_client(pki, terminator):
    # The stub sends 32 MiB as fast as the terminator takes it; the client reads nothing for a
    # while. Without backpressure the terminator would buffer all of it.
    before = terminator_rss(terminator)

    async def talk():
        reader, writer = await asyncio.open_connection("127.0.0.1", terminator.port, ssl=pki.client_context(),
                                                       server_hostname="flood.test")
        await asyncio.sleep(1.5)
        grown = terminator_rss(terminator) - before
        received = 0
        while chunk := await asyncio.wait_for(reader.read(MiB), 20):
            received += len(chunk)
        writer.close()
        return grown, received

    grown, received = asyncio.run(talk())
    assert received == RouterStub.FLOOD
    assert grown < 12 * MiB, f"terminator grew by {grown / MiB:.1f} MiB while the client was not reading"


def test_backpressure_from_a_slow_router(pki, terminator):
    # The client uploads 32 MiB; the stub reads nothing for its first second. Without
    # backpressure the terminator would take it all in and buffer it for the router.
    before = terminator_rss(terminator)
    client = BioClient(terminator.port, pki.client_context(), "sink.test")
    try:
        done = threading.Event()

        def upload():
            for _ in range(8):
                client.send(b"u" * (4 * MiB))
            done.set()
        # Once the terminator stops reading, this thread blocks in the kernel, not the terminator.
        threading.Thread(target=upload, daemon=True).start()
        time.sleep(0.8)
        grown = terminator_rss(terminator) - before
        assert done.wait(20), "upload did not finish"
        client.send_close_notify()
        assert client.read_until_close_notify() == str(32 * MiB).encode()
    finally:
        client.close()
    assert grown < 12 * MiB, f"terminator grew by {grown / MiB:.1f} MiB while the router was not reading"


# --------------------------------------------------------------------------- timeouts

def test_handshake_timeout_closes_a_silent_client(terminator):
    with socket.create_connection(("127.0.0.1", terminator.port), timeout=5) as s:
        start = time.monotonic()
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
        assert 0.8 < time.monotonic() - start < 3


def test_handshake_timeout_closes_a_trickling_client(pki, terminator):
    # A real ClientHello, one byte every 0.2 s: each byte is activity, but the handshake deadline holds.
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = pki.client_context().wrap_bio(incoming, outgoing, server_hostname="app.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    with socket.create_connection(("127.0.0.1", terminator.port), timeout=5) as s:
        start = time.monotonic()
        closed = False
        for byte in hello[:20]:
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - start
        if not closed:
            try:
                closed = s.recv(100) == b""
            except ConnectionResetError:
                closed = True
        assert closed and elapsed < 4.5


@pytest.fixture
def own_router():
    stub = RouterStub()
    yield stub
    stub.stop()


def assert_closed_soon(sock, within: float):
    """The peer ends the connection (close_notify, EOF or reset) within `within` seconds."""
    sock.settimeout(within + 2)
    start = time.monotonic()
    try:
        assert sock.recv(100) == b""
    except (ssl.SSLEOFError, ConnectionError):
        pass
    assert time.monotonic() - start < within


def test_idle_timeout_closes_an_established_connection(pki, own_router):
    t = Terminator(pki.dir, pki.certificates, f"127.0.0.1:{own_router.port}", idle_timeout=1)
    try:
        with connect(t.port, pki.client_context(), "app.test") as s:
            for _ in range(4):                 # traffic keeps it open past the timeout
                assert echo_once(s) == b"ping"
                time.sleep(0.5)
            assert_closed_soon(s, within=2)
    finally:
        t.stop()


# --------------------------------------------------------------------------- the router's side

def test_unreachable_router_closes_the_client_cleanly(pki):
    t = Terminator(pki.dir, pki.certificates, f"127.0.0.1:{free_port()}")    # nothing listens there
    try:
        for _ in range(3):
            with connect(t.port, pki.client_context(), "app.test") as s:
                assert_closed_soon(s, within=3)
        out = wait_until(lambda: "cannot reach the router" in t.output() and t.output(), what="log line")
        # One line for the three failures (rate-limited), naming the address.
        assert out.count("cannot reach the router") == 1 and "Connection refused" in out, out
    finally:
        t.stop()


def test_forward_to_a_unix_socket(pki, tmp_path):
    path = tmp_path / "router.sock"
    stub = RouterStub(unix_path=path)
    t = Terminator(pki.dir, pki.certificates, f"unix:{path}")
    try:
        with connect(t.port, pki.client_context(), "x.wild.test") as s:
            assert echo_once(s, b"over unix") == b"over unix"
            header = stub.header_for(s.getsockname()[1])
            assert header.src == s.getsockname() and header.authority == "x.wild.test"
    finally:
        t.stop()
        stub.stop()


# --------------------------------------------------------------------------- signals and limits

def test_sighup_swaps_certificates_and_keeps_open_connections(pki, own_router, tmp_path):
    # The daemon's own copies: the test rewrites them.
    site = Pki(tmp_path, ca=pki.ca)
    first = site.issue("site", "app.test")
    t = Terminator(tmp_path, first, f"127.0.0.1:{own_router.port}")
    try:
        old_conn = connect(t.port, pki.client_context(), "app.test")
        assert old_conn.getpeercert(binary_form=True) == site.der["site"]
        old_der = site.der["site"]

        # New certificate for app.test, plus a second certificate.
        t.write_config(site.issue("site", "app.test", "new.test") + site.issue("extra", "extra.test"),
                       f"127.0.0.1:{own_router.port}")
        t.proc.send_signal(signal.SIGHUP)

        def served(name):
            with connect(t.port, pki.client_context(), name) as s:
                return s.getpeercert(binary_form=True)
        wait_until(lambda: served("new.test") == site.der["site"], what="new certificate served")
        assert site.der["site"] != old_der
        assert served("app.test") == site.der["site"] and served("extra.test") == site.der["extra"]
        assert echo_once(old_conn, b"still here") == b"still here"     # untouched by the reload

        # A broken certificate is reported and its loaded version stays; a broken config is refused.
        (tmp_path / "site.pem").write_text("not a certificate\n")
        t.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "keeping the previously loaded version" in t.output(), what="certificate problem logged")
        line = next(l for l in t.output().splitlines() if "keeping the previously loaded version" in l)
        assert "certificate[0].cert" in line and "site.pem: no PEM certificate in it" in line, line
        t.config.write_text(t.config.read_text() + "\nbogus = 1\n")
        t.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: t.output().count("reload failed") == 1, what="reload failure logged")
        assert "bogus: unknown key" in t.output()
        assert served("new.test") == site.der["site"] and served("extra.test") == site.der["extra"]
        assert echo_once(old_conn, b"and still") == b"and still"
        old_conn.close()
        assert t.proc.poll() is None
    finally:
        t.stop()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_stops_accepting_and_lets_connections_finish(pki, own_router):
    t = Terminator(pki.dir, pki.certificates, f"127.0.0.1:{own_router.port}")
    try:
        conn = connect(t.port, pki.client_context(), "app.test")
        assert echo_once(conn) == b"ping"
        t.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: _refused(t.port), timeout=5, what="listener closed")
        assert echo_once(conn, b"finishing") == b"finishing"
        assert t.proc.poll() is None
        conn.close()
        assert t.proc.wait(5) == 0
    finally:
        t.stop()


def test_sigterm_closes_idle_connections_long_before_the_grace(pki, own_router):
    t = Terminator(pki.dir, pki.certificates, f"127.0.0.1:{own_router.port}", grace=5)
    try:
        kept_alive = connect(t.port, pki.client_context(), "app.test")
        assert echo_once(kept_alive) == b"ping"            # answered, now idle between requests
        silent = connect(t.port, pki.client_context(), "app.test")   # handshake only
        time.sleep(1.2)                                     # both quiet for the drain's 1 s already
        sent = time.monotonic()
        t.proc.send_signal(signal.SIGTERM)
        for conn in (kept_alive, silent):
            assert_closed_soon(conn, within=1.5)
            conn.close()
        assert t.proc.wait(5) == 0
        assert time.monotonic() - sent < 2.0                # not the 5 s grace
    finally:
        t.stop()


class Flow(threading.Thread):
    """Echoes through `conn` every 0.2 s (bounded) until `stop_after` seconds, then closes it
    itself; or until the terminator ends the connection. `ticks` times each answered echo."""

    def __init__(self, conn: ssl.SSLSocket, stop_after: float):
        super().__init__(daemon=True)
        self.conn, self.stop_after = conn, stop_after
        self.ticks: list[float] = []
        self.cut_at: float | None = None

    def run(self):
        start = time.monotonic()
        try:
            for _ in range(200):
                if time.monotonic() - start > self.stop_after:
                    break
                assert echo_once(self.conn, b"tick") == b"tick"
                self.ticks.append(time.monotonic())
                time.sleep(0.2)
        except (AssertionError, OSError):
            self.cut_at = time.monotonic()
        finally:
            self.conn.close()


def test_sigterm_keeps_busy_connections_until_done_or_the_grace(pki, own_router):
    # `waiting` is answered at 1.5 s and closed once quiet for 1 s, at a drain recheck (every
    # 0.5 s): by 3 s. The grace leaves room after that, so that only the busy one is left to cut.
    grace = 4.0
    t = Terminator(pki.dir, pki.certificates, f"127.0.0.1:{own_router.port}", grace=grace)
    try:
        waiting = connect(t.port, pki.client_context(), "slow.wild.test")   # the router is still on its request
        done_early = Flow(connect(t.port, pki.client_context(), "app.test"), stop_after=1.0)
        to_the_end = Flow(connect(t.port, pki.client_context(), "app.test"), stop_after=60)
        waiting.sendall(b"request")
        sent = time.monotonic()
        t.proc.send_signal(signal.SIGTERM)
        done_early.start()
        to_the_end.start()
        wait_until(lambda: _refused(t.port), timeout=5, what="listener closed")
        # Quiet for longer than the drain's 1 s, but waiting for its answer: kept, and answered.
        assert recv_exactly(waiting, len(b"request")) == b"request"
        # Answered, then idle: closed once quiet for DRAIN_QUIET (1 s), at a recheck (every 0.5 s).
        assert_closed_soon(waiting, within=2.5)
        waiting.close()
        done_early.join(5)
        assert done_early.cut_at is None and len(done_early.ticks) >= 4    # hung up itself, never cut
        to_the_end.join(grace + 2)
        assert to_the_end.cut_at is not None and grace - 0.5 < to_the_end.cut_at - sent < grace + 1.0
        assert to_the_end.ticks[-1] - sent > grace - 0.5    # served up to the end of the grace
        assert t.proc.wait(5) == 0
        assert time.monotonic() - sent < grace + 2.5      # exits soon after the grace (a busy machine: +2.5)
        assert f"closing 1 connections still open after {grace:g}s" in t.output()
    finally:
        t.stop()


def test_sigterm_lets_a_handshake_in_flight_finish_and_be_served(pki, own_router):
    """A client can finish its side of a TLS 1.3 handshake and send its request before the server
    has read its Finished. A SIGTERM in between must not drop it: the connection gets the drain."""
    t = Terminator(pki.dir, pki.certificates, f"127.0.0.1:{own_router.port}", grace=5)
    try:
        sock = socket.create_connection(("127.0.0.1", t.port), timeout=5)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = pki.client_context().wrap_bio(incoming, outgoing, server_hostname="app.test")
        while True:                     # the client's side of the handshake, its last flight held back
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                data = sock.recv(65536)
                assert data, "the terminator closed during the handshake"
                incoming.write(data)
        tls.write(b"request")
        held = outgoing.read()          # the client's Finished, then the request
        t.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: _refused(t.port), timeout=5, what="listener closed")
        sock.sendall(held)
        answer = b""
        while len(answer) < len(b"request"):
            try:
                answer += tls.read(65536)
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                assert data, f"connection closed after {answer!r}"
                incoming.write(data)
        assert answer == b"request"
        sock.close()
        assert t.proc.wait(5) == 0
    finally:
        t.stop()


def test_max_connections_defers_accepting(pki, own_router):
    t = Terminator(pki.dir, pki.certificates, f"127.0.0.1:{own_router.port}", max_connections=2)
    try:
        first = connect(t.port, pki.client_context(), "app.test")
        second = connect(t.port, pki.client_context(), "app.test")
        assert echo_once(first) == echo_once(second) == b"ping"
        # The third gets through the kernel's backlog but no answer to its ClientHello...
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = pki.client_context().wrap_bio(incoming, outgoing, server_hostname="app.test")
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        third = socket.create_connection(("127.0.0.1", t.port), timeout=1)
        third.sendall(outgoing.read())
        with pytest.raises(socket.timeout):
            third.recv(65536)
        # ... until a connection ends.
        first.close()
        third.settimeout(5)
        incoming.write(third.recv(65536))
        tls.do_handshake()
        assert tls.version() == "TLSv1.3"
        assert "max_connections (2) reached" in t.output()
        assert echo_once(second) == b"ping"
        second.close()
        third.close()
    finally:
        t.stop()


# --------------------------------------------------------------------------- configuration errors

@pytest.mark.parametrize("body,key,problem", [
    ('[terminator]\nlisten = "127.0.0.1:99999"\nforward_to = "127.0.0.1:1"\n{certs}', "terminator.listen",
     "out of range"),
    ('[terminator]\nlisten = "127.0.0.1:1"\nforward_to = "127.0.0.1:1"\ntimeout = 3\n{certs}', "terminator.timeout",
     "unknown key"),
    ('[terminator]\nlisten = "127.0.0.1:1"\nforward_to = "127.0.0.1:1"\n[[certificate]]\ncert = "garbage.pem"\n',
     "certificate[0].cert", "garbage.pem: no PEM certificate in it"),
    ('[terminator]\nlisten = "127.0.0.1:1"\nforward_to = "127.0.0.1:1"\n{certs}[[certificate]]\ncert = "app.pem"\n'
     'key = "wild.key"\n', "certificate[4].key", "does not match"),
    ('[terminator]\nlisten = "127.0.0.1:1"\nforward_to = "127.0.0.1:1"\n[[certificate]]\ncert = "wild.pem"\n',
     "certificate[0].cert", "no private key"),
])
def test_bad_config_exits_2_with_one_line(pki, body, key, problem):
    (pki.dir / "garbage.pem").write_text("hello\n")
    config = pki.dir / "bad.toml"
    config.write_text(body.format(certs=pki.certificates))
    r = subprocess.run([str(BIN / "tls-terminator"), "--config", str(config)], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {config}: {key}: ") and problem in lines[0], lines[0]
