"""Giving freed heap memory back to the system, where the C library can (glibc's malloc_trim).

glibc returns memory to the system only from the top of its heap; pages freed in the middle stay
in the process's resident size until something else reuses them. A daemon whose connections freed
large buffers (tls-terminator after big downloads) would look as big as at its peak for as long as
it runs. malloc_trim(0) hands every wholly free page back (madvise), whatever its place.
"""
from __future__ import annotations

import ctypes


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):       # not glibc
        return None


_trim = _malloc_trim()


def release_free_memory() -> bool:
    """False where the C library has no malloc_trim."""
    if _trim is None:
        return False
    _trim(0)
    return True
