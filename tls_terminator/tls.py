"""The TLS policy ([tls] in the TOML) applied to pyOpenSSL contexts, and the front context.

Every connection starts on the *front* context. Its SNI callback switches the connection to the
context of the chosen certificates (tls_terminator.certs). The front context holds what OpenSSL
takes from the first context only: protocol versions and options (copied into each connection when
it is created), and, as the connection's "session context", the session cache and the session
ticket keys. So the front context lives as long as the [tls] policy does: a certificate reload
builds new certificate contexts but keeps the front one, and clients keep resuming their sessions
across reloads. Ticket keys are random per front context (per process, and new when [tls]
changes): they are never written anywhere and rotate with every restart.

Limitation: with workers > 1, each worker process has its own session cache and ticket keys
(pyOpenSSL does not expose SSL_CTX_set_tlsext_ticket_keys), so a returning client resumes only when
the kernel hands it to the same worker.
"""
from __future__ import annotations

from typing import Callable

from OpenSSL import SSL

from frontgate.config import ConfigError, TlsPolicy

# Mozilla's "intermediate" configuration (server side TLS guidelines, v5.7), minus the DHE suites:
# those need DH parameters, which we do not configure, so OpenSSL would never pick them anyway.
INTERMEDIATE_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])
INTERMEDIATE_CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
# Its key exchange groups, preferred first. OpenSSL's own default list adds X448, secp521r1, the
# ffdhe groups and (OpenSSL 3.5+) the hybrid X25519MLKEM768; scanners flag the first ones.
INTERMEDIATE_GROUPS = ("X25519", "prime256v1", "secp384r1")
# The same on every context: OpenSSL checks that a resumed session belongs to this context.
# Contexts that ask for client certificates use their own (see certs.CertStore).
SESSION_ID_CONTEXT = b"frontgate"

MODE_ENABLE_PARTIAL_WRITE = 0x1   # SSL_MODE_ENABLE_PARTIAL_WRITE (openssl/ssl.h); pyOpenSSL has no name for it

_VERSIONS = {"TLSv1": SSL.TLS1_VERSION, "TLSv1.1": SSL.TLS1_1_VERSION, "TLSv1.2": SSL.TLS1_2_VERSION,
             "TLSv1.3": SSL.TLS1_3_VERSION}


def alpn_selector(protocols: tuple[str, ...]) -> Callable[[SSL.Connection, list[bytes]], bytes]:
    """The ALPN choice for [terminator] alpn: ours in our order of preference, the first the client
    offers too. A client that offers none of them gets no ALPN at all rather than a failed
    handshake: it may still manage (HTTP/1.1), and that is its call."""
    ours = [p.encode() for p in protocols]

    def select(conn: SSL.Connection, offered: list[bytes]) -> bytes:
        for protocol in ours:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS
    return select


def apply_policy(ctx: SSL.Context, policy: TlsPolicy, cfg_path: object = "") -> None:
    """Versions, options, ciphers, groups, ALPN: the same on the front and on every certificate
    context. A cipher string or group OpenSSL rejects is a ConfigError naming the [tls] key."""
    ctx.set_min_proto_version(_VERSIONS[policy.min_version])
    ctx.set_max_proto_version(_VERSIONS[policy.max_version])
    options = SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION
    if policy.prefer_server_ciphers == "always":
        options |= SSL.OP_CIPHER_SERVER_PREFERENCE
    if not policy.session_tickets:
        options |= SSL.OP_NO_TICKET
    ctx.set_options(options)
    for key, value, setter in (("ciphers", policy.ciphers or INTERMEDIATE_CIPHERS, ctx.set_cipher_list),
                               ("ciphersuites", policy.ciphersuites or INTERMEDIATE_CIPHERSUITES,
                                ctx.set_tls13_ciphersuites)):
        try:
            setter(value.encode())
        except SSL.Error as e:
            raise ConfigError(cfg_path, f"tls.{key}", f"OpenSSL accepts no cipher in {value!r}: {e}") from None
    set_groups(ctx, policy.groups or INTERMEDIATE_GROUPS, cfg_path)
    # Idle connections (WebSocket tunnels) then cost no read/write buffers inside OpenSSL.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    # pyOpenSSL turns on partial writes: SSL_write then returns after each 16 KiB record, and a
    # 64 KiB chunk takes four calls. Into a memory BIO (which never refuses bytes) a full write is
    # one call that always completes.
    ctx.clear_mode(MODE_ENABLE_PARTIAL_WRITE)
    ctx.set_session_id(SESSION_ID_CONTEXT)
    ctx.set_timeout(policy.session_timeout)
    ctx.set_alpn_select_callback(alpn_selector(policy.alpn))


def set_groups(ctx: SSL.Context, groups: tuple[str, ...], cfg_path: object = "") -> None:
    """The key exchange groups (curves) `ctx` offers, in this order. pyOpenSSL has only
    set_tmp_ecdh (one curve); its binding has SSL_CTX_set1_curves_list (= set1_groups_list).
    A name OpenSSL does not know is a ConfigError naming it."""
    from OpenSSL._util import lib
    if lib.SSL_CTX_set1_curves_list(ctx._context, ":".join(groups).encode()) == 1:
        return
    # Which names? Ask one at a time, on a scratch context (the list call changes nothing when it fails).
    scratch = SSL.Context(SSL.TLS_SERVER_METHOD)
    unknown = [g for g in groups if lib.SSL_CTX_set1_curves_list(scratch._context, g.encode()) != 1]
    lib.ERR_clear_error()          # the failed calls left errors queued; pyOpenSSL would report them later
    raise ConfigError(cfg_path, "tls.groups",
                      f"OpenSSL does not know {', '.join(map(repr, unknown or groups))} as a key exchange group "
                      f"(names such as {', '.join(map(repr, INTERMEDIATE_GROUPS))}, 'X448', 'secp521r1', 'ffdhe2048')")


def new_context(policy: TlsPolicy, cfg_path: object = "") -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    apply_policy(ctx, policy, cfg_path)
    return ctx


class Front:
    """The front context for one [tls] policy. `on_server_name` is whatever the current certificate
    store says (swapped on reload); the context itself never changes."""

    def __init__(self, policy: TlsPolicy, on_server_name: Callable[[SSL.Connection], None], cfg_path: object = ""):
        self.policy = policy
        self.on_server_name = on_server_name
        self.context = new_context(policy, cfg_path)
        self.context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        # Must be set before the context makes its first connection (pyOpenSSL freezes it then).
        self.context.set_tlsext_servername_callback(self._server_name)

    def _server_name(self, conn: SSL.Connection) -> None:
        # OpenSSL calls this for every ClientHello (SNI or not), after it has chosen the protocol
        # version and before it chooses a TLS 1.2 cipher: the one place to set a per-version order.
        if self.policy.prefer_server_ciphers == "tls1.2" and conn.get_protocol_version_name() == "TLSv1.2":
            conn.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE)
        self.on_server_name(conn)


# ---- memory-BIO relay helpers
# The relay asks these before calling into OpenSSL, so that the common case (nothing left to read,
# nothing queued to send) costs no call that ends in a WantReadError: raising and catching one costs
# about as much as decrypting a small record. pyOpenSSL has no public "bytes in this memory BIO";
# the binding it uses has BIO_get_mem_data, and Connection keeps its BIOs in _into_ssl/_from_ssl.
# The same access lets renew_bios swap them for new ones (BIO_new, SSL_set_bio).
# Checked once at import: without them, the helpers ask OpenSSL and catch the exception instead
# (slower, same result). tests/unit/test_tls_relay.py pins the behaviour the relay relies on.

def _private_bio_access() -> bool:
    try:
        from OpenSSL._util import lib
        conn = SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD), None)
        return (all(hasattr(lib, name) for name in ("BIO_get_mem_data", "BIO_new", "BIO_s_mem", "BIO_free", "SSL_set_bio"))
                and conn._into_ssl is not None and conn._from_ssl is not None and conn._ssl is not None)
    except (ImportError, AttributeError):     # pragma: no cover - another pyOpenSSL layout
        return False


if _private_bio_access():
    from OpenSSL._util import ffi as _ffi, lib as _lib
    _bio_size, _NULL = _lib.BIO_get_mem_data, _ffi.NULL

    def may_have_plaintext(conn: SSL.Connection) -> bool:
        """False when a `recv` could only raise WantReadError: no ciphertext waits in the incoming
        BIO and no decrypted byte in the SSL object. OpenSSL reads records from the BIO without
        read-ahead (header, then exactly the body), so nothing else is buffered in between; a
        partial record left in the BIO counts as "may have" (`recv` then says WantReadError)."""
        return _bio_size(conn._into_ssl, _NULL) > 0 or conn.pending() > 0

    def drain_output(conn: SSL.Connection) -> bytes:
        """Everything OpenSSL has queued for the peer (records, alerts), b"" if nothing: one BIO
        read of exactly the queued size."""
        queued = _bio_size(conn._from_ssl, _NULL)
        return conn.bio_read(queued) if queued > 0 else b""

    def renew_bios(conn: SSL.Connection) -> bool:
        """Give the connection new, empty memory BIOs when both of its own are empty; False (nothing
        done) while bytes wait in either. A memory BIO keeps the largest buffer it has needed (the
        handshake's, about 2 KiB for both here): an established connection can be held idle for
        hours, thousands at once. Cheap, but not for every read: the next large transfer makes a
        new BIO grow again, step by step."""
        if _bio_size(conn._into_ssl, _NULL) or _bio_size(conn._from_ssl, _NULL):
            return False
        into, out = _lib.BIO_new(_lib.BIO_s_mem()), _lib.BIO_new(_lib.BIO_s_mem())
        if into == _NULL or out == _NULL:        # pragma: no cover - out of memory
            for bio in (into, out):
                if bio != _NULL:
                    _lib.BIO_free(bio)
            return False
        _lib.SSL_set_bio(conn._ssl, into, out)     # frees the old pair (the SSL object owns its BIOs)
        conn._into_ssl, conn._from_ssl = into, out
        return True

else:     # pragma: no cover
    def may_have_plaintext(conn: SSL.Connection) -> bool:
        return True

    def renew_bios(conn: SSL.Connection) -> bool:
        return False

    def drain_output(conn: SSL.Connection) -> bytes:
        out = []
        while True:
            try:
                out.append(conn.bio_read(65536))
            except SSL.WantReadError:
                return b"".join(out)
