"""Per-node rate limits: a token bucket that says how long a sender must wait, or whether an
action is allowed now."""

from __future__ import annotations


class TokenBucket:
    """Allows `rate` messages per second on average and bursts of `burst`.

    `delay(now)` takes one token and returns how many seconds the caller must wait before
    acting on the message (0.0 when within the rate). Waiting, rather than dropping, throttles
    the sender through HTTP/2 flow control: its stream is simply not read meanwhile.
    """

    __slots__ = ("_rate", "_burst", "_tokens", "_stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now

    def delay(self, now: float) -> float:
        tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        tokens -= 1.0
        self._tokens = tokens
        return 0.0 if tokens >= 0.0 else -tokens / self._rate

    def take(self, now: float) -> bool:
        """Take one token if there is one (True); never goes into debt."""
        tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True
