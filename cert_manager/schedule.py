"""When to (re)issue a certificate: pure functions of the certificate's validity, the clock, the
failures so far and what the CA asked for. Times are unix seconds.

- A valid certificate is renewed when a third of its lifetime is left, a little earlier by a
  random `jitter` in [0, 1) (up to 5% of the lifetime), so that many names issued together do not
  all come back to the CA at once. A renewal window from the CA (ACME renewal information)
  replaces that: a random point in the window.
- After a failure: exponential back-off from `retry_min`, doubled per failure up to `retry_max`,
  stretched by up to a quarter by the jitter; never before the CA's Retry-After.
"""
from __future__ import annotations

import email.utils

RENEW_REMAINING = 1 / 3          # renew when this fraction of the lifetime is left
JITTER_SHARE = 0.05              # of the lifetime, at most this much earlier
BACKOFF_JITTER = 0.25


def renewal_time(not_before: float, not_after: float, jitter: float,
                 window: tuple[float, float] | None = None) -> float:
    """When a certificate valid from `not_before` to `not_after` is due for renewal."""
    if window is not None:
        start, end = window
        return start + max(0.0, end - start) * jitter
    lifetime = max(0.0, not_after - not_before)
    return not_after - lifetime * (RENEW_REMAINING + JITTER_SHARE * jitter)


def backoff(failures: int, retry_min: float, retry_max: float, jitter: float) -> float:
    """Seconds to wait after the `failures`-th failure in a row (failures >= 1)."""
    base = min(retry_max, retry_min * 2 ** min(max(failures - 1, 0), 60))
    return min(retry_max, base * (1 + BACKOFF_JITTER * jitter))


def next_attempt(*, now: float, not_before: float | None, not_after: float | None, failures: int,
                 last_failure: float | None, retry_after: float | None, retry_min: float,
                 retry_max: float, jitter: float, window: tuple[float, float] | None = None) -> float:
    """When to try next for one name.

    No certificate (or one that does not cover the name any more): now. A certificate: its
    renewal time. After failures in a row (`failures`, the last at `last_failure`): not before
    the back-off from that failure nor before the CA's `retry_after`.
    """
    due = now if not_after is None or not_before is None else renewal_time(not_before, not_after, jitter, window)
    if failures > 0 and last_failure is not None:
        due = max(due, last_failure + backoff(failures, retry_min, retry_max, jitter))
    if retry_after is not None:
        due = max(due, retry_after)
    return due


def expiry_warning(now: float, not_after: float | None, warning_days: float) -> bool:
    """The certificate in use expires within `warning_days` (or has expired)."""
    return not_after is not None and not_after - now < warning_days * 86400


def parse_retry_after(value: str | None, now: float, limit: float = 7 * 86400) -> float | None:
    """A Retry-After header (RFC 9110 10.2.3: seconds, or an HTTP date) as a unix time, capped at
    `limit` from now; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return now + min(float(value), limit)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(when, now), now + limit)
