"""What `frontgate check` and `frontgate certs` say about the terminator's certificates."""
from __future__ import annotations

import datetime

from frontgate.config import ConfigError, TerminatorConfig
from tls_terminator.certificate_files import load_all, now_utc
from tls_terminator.certs import CertStore
from tls_terminator.tls import new_context


def check_certificates(cfg: TerminatorConfig) -> list[str]:
    """Problems with the certificate files (and the [tls] ciphers, and client CA bundles), one line
    each ("file: key: problem"); empty when everything loads. For `frontgate check`."""
    try:
        new_context(cfg.tls, cfg.path)
    except ConfigError as e:
        return [str(e)]
    _, problems, _ = load_all(cfg, None)
    errors = [p.removesuffix("; skipped") for p in problems]
    if not errors:
        try:
            CertStore.load(cfg, strict=False)
        except ConfigError as e:
            errors.append(str(e))
    return errors


def describe_certificates(cfg: TerminatorConfig, now: datetime.datetime | None = None) -> list[dict]:
    """What `frontgate certs` lists: one dict per certificate file (loaded or not), in load order.
    Keys: file, key_file, source, names, subject, issuer, key_type, not_before, not_after (ISO
    8601 UTC), days_left, status ("valid", "expired", "not yet valid"), ocsp (file or None),
    default (bool); a file that does not load has only file, source and error."""
    now = now or now_utc()
    loaded, problems, _ = load_all(cfg, None)
    default_entry = cfg.default_certificate
    default = next((c for c in loaded if default_entry is not None and c.entry == default_entry),
                   loaded[0] if loaded else None)
    rows: list[dict] = []
    for c in loaded:
        status = "expired" if c.not_after <= now else "not yet valid" if c.not_before > now else "valid"
        rows.append({
            "file": str(c.entry.cert), "key_file": str(c.key_file),
            "source": "certs_dir" if c.position is None else f"certificate[{c.position}]",
            "names": list(c.names), "subject": c.leaf.subject.rfc4514_string(),
            "issuer": c.leaf.issuer.rfc4514_string(), "key_type": c.key_detail,
            "not_before": c.not_before.isoformat(), "not_after": c.not_after.isoformat(),
            "days_left": (c.not_after - now).days, "status": status,
            "ocsp": str(c.ocsp_file) if c.ocsp_file else None, "default": c is default,
        })
    for p in problems:
        # "file: key: /path: problem; skipped"
        rest = p.split(": ", 2)[2] if p.count(": ") >= 2 else p
        file, _, reason = rest.partition(": ")
        rows.append({"file": file, "source": p.split(": ", 2)[1] if p.count(": ") >= 2 else "",
                     "error": reason.removesuffix("; skipped")})
    return rows


def format_certificates(rows: list[dict]) -> str:
    """`frontgate certs` output: one block per certificate."""
    out = []
    for r in rows:
        if "error" in r:
            where = f"{r['file']}  [{r['source']}]\n  " if "file" in r else ""   # a config error has no file
            out.append(f"{where}ERROR: {r['error']}")
            continue
        flags = " (default)" if r["default"] else ""
        # A certificate without DNS names (the development CA) is shown by its subject.
        names = f"names:   {', '.join(r['names'])}" if r["names"] else f"subject: {r['subject']}"
        out.append(
            f"{r['file']}  [{r['source']}]{flags}\n"
            f"  {names}\n"
            f"  issuer:  {r['issuer']}\n"
            f"  key:     {r['key_type']}\n"
            f"  expires: {r['not_after']}  ({r['days_left']} days left, {r['status']})\n"
            f"  ocsp:    {r['ocsp'] or '-'}")
    return "\n".join(out)
