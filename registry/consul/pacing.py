"""How long a watch loop waits before its next blocking query (pure: the clock is passed in).

Consul's blocking-query guidance asks for a rate limit so a loop cannot spin when answers come back at
once without news (an index that does not move, goes backwards or is 0: a broken proxy, a restored
snapshot, an idempotent write). The watcher used to take a token (`registry.consul.maxrate`/s, burst 2)
before *every* read, so the third real change of any quick sequence (a deploy, a node drain) waited
~50 ms for a token although Consul had news each time.

Here an answer pays according to what it brought:

* an index above the previous answer's: news. Paid from a bucket ten times as large and
  fast (`CHANGE_FACTOR`), which a burst of real changes never empties; it only paces a source whose
  index moves on every read without end (a faulty relay), so no such source can make the loop spin
  either.
* anything else (the same index, a lower one, 0): no news. Paid from the `maxrate`/s bucket,
  burst 2, as before: this is the protection against the busy loop.

Comparing with the index of the last answer (not the index the next request sends, which is 0 after a
reset) keeps a Consul that always answers the same low index at once on the slow bucket: a reset read
from 0 returning that index again is not news. An index that went backwards becomes the new base, so
after a real restore (a dev agent restarted, counting from 10 again) the next real change is news at once.
"""

from __future__ import annotations

# The news bucket's rate and burst relative to `maxrate`: 20/s -> 200/s, burst 200 (a burst of 50
# changes in 100 ms passes unpaced).
CHANGE_FACTOR = 10
QUIET_BURST = 2


class Bucket:
    """A token bucket on a caller-supplied clock: `take(now)` returns how long to wait for the token."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class WatchPacer:
    """One watch loop's pacing: call `after(index, now)` with each answer's X-Consul-Index (None after an
    error, which backs off on its own and does not spend a token here) and sleep the result before the next read."""

    def __init__(self, rate: float, now: float, index: int = 0, burst: int = QUIET_BURST,
                 change_factor: float = CHANGE_FACTOR, quiet: Bucket | None = None) -> None:
        # `quiet` shared by several loops (the hot-service watches, registry/consul/hot.py) holds all of
        # them together to `rate` no-news answers per second: one bucket each would multiply the busy-loop bound
        self.quiet = quiet if quiet is not None else Bucket(rate, burst, now)
        self.news = Bucket(rate * change_factor, max(burst, rate * change_factor), now)
        self.last = index  # the index of the latest answer (the initial read's, for a watch's first)
        self.paced = 0  # answers after which the loop had to wait (for /api/status and the tests)

    def after(self, index: int | None, now: float) -> float:
        if index is None:
            return 0.0
        news = index > self.last
        self.last = index
        delay = self.news.take(now) if news else self.quiet.take(now)
        if delay > 0:
            self.paced += 1
        return delay
