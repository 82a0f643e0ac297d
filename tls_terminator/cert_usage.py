"""Whether a certificate may be served by a TLS server at all, pure.

A CA certificate is never one: with the private key of a CA the terminator could sign any name,
so a CA key in a certs_dir (the development CA's, say) must fail loudly rather than be served.
"""
from __future__ import annotations

from cryptography import x509


def unfit_for_serving(cert: x509.Certificate) -> str | None:
    """Why `cert` cannot be a TLS server's certificate; None when it can. Every key exchange the
    terminator offers (ECDHE, TLS 1.3) has the server sign the handshake, so a keyUsage extension
    must allow digitalSignature (clients refuse it otherwise)."""
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if usage.digital_signature:
        return None
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca and usage.key_cert_sign:
        return ("a CA certificate (it issues certificates; serve one it issued, and keep its key "
                "out of the certificate files)")
    return "its keyUsage does not allow digitalSignature, which every TLS handshake the terminator offers needs"
