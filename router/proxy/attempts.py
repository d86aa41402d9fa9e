"""One request's tries: connect hedging, retries elsewhere and the per-try timeout, under a retry budget.

The rules (issue 17; docs/reliability.md has the measured effect):

* Every method: a try that failed before anything was sent (connect refused or timed out, a fresh
  connection already closed) is retried on another instance. A connect that has not completed after the
  hedge delay (`proxy.hedge.delay`, at least 4x the connect time seen so far) gets a second connect to
  another instance; the first connection wins and the request is sent on that one only, so a
  non-idempotent request still reaches one instance at most. All connects of a request share one
  `proxy.dialtimeout`.
* Idempotent requests without a body (GET, HEAD, OPTIONS, PUT/DELETE without one) may also be sent
  again. A try that fails after sending (reset, closed without an answer, a 502/503/504 answer, a body
  cut short while its first `proxy.retry.buffer` bytes are held back) is retried on another instance.
  When no headers came within the per-try timeout (`proxy.retry.pertrytimeout`, at least 4x the route's
  latency estimate) a hedge is sent to another instance and the first answer wins; the other is dropped.
* Every retry and hedge takes a token from the route's retry budget (router/proxy/budget.py) and counts
  toward `proxy.retry.attempts`; without one the failure is answered honestly (502/503/504, or the
  instance's own 5xx answer).
* Stalls, when no response-header timeout applies (neither `proxy.responseheadertimeout` nor the route's
  `timeout=`): an instance is *stalled* when it has sent no response headers for the stall time while at
  least STALL_TRIES tries sent to it since its last answer waited (InstanceState.stalled). The stall time
  is `proxy.stall.timeout` (1 s) or STALL_FACTOR x the route's latency estimate, whichever is longer, and
  is judged only once the route's picker has seen STALL_SAMPLES answers. A try still waiting on a
  stalled instance after the stall time ends (504, or elsewhere for an idempotent request), the instance
  is ejected, and no retry or hedge goes to a stalled instance. A slow answer from an instance that
  answers other requests meanwhile is never cut: silence of the whole instance is the signal, not the
  time one request takes. A request that cannot be sent twice is moved off a first pick that is
  stalled or failed since its last success, when a sound instance exists: a POST is never the probe
  that finds out whether an instance is back (idempotent requests are, one at a time, by p2c).
* A body that does not start: an idempotent answer whose headers came with a Content-Length and then not
  one byte of that body within the per-try timeout waits out the stall time, then goes to an instance that
  answers (within the budget). A request that cannot be sent again (POST, PATCH, a route of one
  instance) waits for that first byte for the stall time (at least the header timeout) and is then
  answered 504: the client's head has not been sent yet. Chunked and close-delimited answers (server-sent
  events, long polls) are never cut this way.

The common case runs inline and creates no task: a task is made only to dial, and for a hedge.

Past 400 lines on purpose: the tries of one request are one state machine (`send` and its hedges, the
retry rules, the stall watchdog that cuts its waits), and the hot path runs through it inline; split, each
rule would be read without the others it interacts with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from time import perf_counter
from typing import Any

from router.proxy.balance import Balancer
from router.proxy.instance import STALL_TRIES
from router.proxy.picker import RoutePicker
from router.proxy.upstream import Upstream
from router.proxy.upstream_errors import UPSTREAM_FAILURES, Stale, UpstreamError, UpstreamTimeout
from router.proxy.upstream_request import IDEMPOTENT, HeaderBlock, Prepared, prepare, prepare_block
from router.proxy.upstream_response import Response

log = logging.getLogger("router.proxy")

RETRY_STATUS = frozenset({502, 503, 504})
PER_TRY_FACTOR = 4.0  # per-try timeout: at least this times the route's latency estimate
HEDGE_FACTOR = 4.0  # connect hedge delay: at least this times the average connect time
STALL_FACTOR = 4.0  # stall time: at least this times the route's latency estimate
STALL_SAMPLES = 16  # answers a route's picker must have seen before a silence on it is judged a stall


class Failed(Exception):
    """No try got an answer: the proxy answers `status` with `text`; `idx` is the last instance tried."""

    def __init__(self, status: int, text: str, idx: int) -> None:
        super().__init__(text)
        self.status, self.text, self.idx = status, text, idx


class Stalled(UpstreamTimeout):
    """The try's instance is stalled: it answered nothing for the stall time while several tries waited."""


class _Req:
    """What every try of one request shares."""

    __slots__ = ("method", "path_qs", "headers", "body", "header_timeout", "deadline")

    def __init__(self, method: str, path_qs: str, headers: Sequence[tuple[str, str]],
                 body: AsyncIterator[bytes] | None, header_timeout: float, now: float) -> None:
        self.method, self.path_qs, self.headers, self.body = method, path_qs, headers, body
        self.header_timeout = header_timeout
        self.deadline = now + header_timeout if header_timeout > 0 else 0.0

    def left(self) -> float:
        """Seconds left of the header timeout (0 = no limit; a tiny positive number once it passed)."""
        return max(self.deadline - perf_counter(), 1e-6) if self.deadline else 0.0


def _abandon(task: asyncio.Task) -> None:
    """A connect nobody waits for any more: cancel it, and whatever it ends with is dealt with. Cancelling
    a task that has already finished does nothing: its connection was left open, or asyncio logged "Task
    exception was never retrieved" with a traceback for each one (seen end to end, with Docker)."""
    task.cancel()
    task.add_done_callback(_discard)


def _discard(task: asyncio.Task) -> None:
    if task.cancelled():
        return
    if task.exception() is None:
        task.result().abort()


class Sender:
    """The try policy of one ProxyApp; the Balancer keeps the state it decides on."""

    def __init__(self, upstream: Upstream, lb: Balancer, *, attempts: int = 3, hedge_delay: float = 0.025,
                 per_try: float = 0.25, buffer: int = 65536, stall: float = 1.0) -> None:
        self.upstream = upstream
        self.lb = lb
        self.attempts = attempts
        self.hedge_delay = hedge_delay  # 0: no connect hedging
        self.per_try = per_try  # 0: no per-try timeout, no hedged requests
        self.buffer = buffer  # 0: responses are not held back
        self.stall = stall  # proxy.stall.timeout; 0: no stall detection
        self._every = max(stall / 8, 0.01)  # the stall watchdog's period while an instance is suspect
        self._suspects: set[Any] = set()  # instances with STALL_TRIES or more tries unanswered
        self._tick: asyncio.TimerHandle | None = None
        self.connect_avg = 0.0  # seconds, an EWMA over successful dials

    def _prep(self, picker: RoutePicker, idx: int, rq: _Req) -> Prepared:
        if type(rq.headers) is HeaderBlock:  # the common case: the header lines are encoded already
            return prepare_block(rq.method, picker.keys[idx], rq.headers, rq.body)
        t = picker.targets[idx]
        return prepare(rq.method, f"{t.scheme}://{t.host}:{t.port}{rq.path_qs}", rq.headers, rq.body,
                       verify_tls=not t.tls_skip_verify)

    def _next(self, picker: RoutePicker, tried: list[int], now: float, answering: bool = False) -> int:
        """Another instance for a retry or hedge, if attempts, instances and the budget allow (-1 if not).
        Never one known to be stalled; with `answering`, only one that has left no try waiting longer
        than the per-try timeout (after a stall: the next instance must be one that answers)."""
        if len(tried) >= self.attempts:
            return -1
        exclude: list[int] = tried
        after = self._stall_after(picker)
        if after:  # a cold path: O(instances)
            if answering:
                quiet = self._per_try(picker)
                silent = [i for i, s in enumerate(picker.states)
                          if i not in tried and s.unanswered and now - s.silent_since >= quiet]
            else:
                silent = [i for i, s in enumerate(picker.states) if i not in tried and s.stalled(now, after)]
            if silent:
                exclude = tried + silent
        j = picker.pick(now, exclude)
        if j < 0 or not picker.budget.withdraw(now):
            return -1
        tried.append(j)
        return j

    # --- connections
    async def _dial(self, key: tuple) -> Any:
        t0 = perf_counter()
        conn = await self.upstream.dial(key)
        dt = perf_counter() - t0
        self.connect_avg = dt if not self.connect_avg else self.connect_avg * 0.9 + dt * 0.1
        return conn

    async def _connection(self, picker: RoutePicker, idx: int, rq: _Req, tried: list[int],
                          pooled: bool = True, prep: Prepared | None = None) -> tuple[Any, int, Prepared, bool]:
        """A connection for a try on `idx`: (conn, instance, its request head, fresh). A pooled one if
        there is one; else dials, hedged and retried on other instances. Raises Failed (502) when no
        connect succeeded within proxy.dialtimeout or the attempts or the budget ran out."""
        if prep is None:
            prep = self._prep(picker, idx, rq)
        if pooled:
            conn = self.upstream.take(prep.key)
            if conn is not None:
                return conn, idx, prep, False
        lb, states = self.lb, picker.states
        loop = asyncio.get_running_loop()
        deadline = perf_counter() + (self.upstream.dial_timeout or 1e9)
        pending: dict[asyncio.Task, tuple[int, Prepared, float]] = {}

        def start(i: int, p: Prepared) -> None:
            pending[loop.create_task(self._dial(p.key))] = (i, p, perf_counter())
            states[i].outstanding += 1

        def drop(reason: str, now: float) -> None:
            for task, (j, _, began) in pending.items():
                _abandon(task)
                states[j].outstanding -= 1
                lb.try_failed(states[j], now - began, now, reason(now - began), connect=True)  # type: ignore[operator]
            pending.clear()

        start(idx, prep)
        hedging = self.hedge_delay > 0
        last = ""
        try:
            while True:
                now = perf_counter()
                wait = deadline - now
                if hedging:
                    wait = min(wait, max(self.hedge_delay, HEDGE_FACTOR * self.connect_avg))
                done, _ = await asyncio.wait(pending, timeout=max(wait, 0.0), return_when=asyncio.FIRST_COMPLETED)
                now = perf_counter()
                won = None
                for task in done:
                    i, p, began = pending.pop(task)
                    states[i].outstanding -= 1
                    exc = task.exception()
                    if exc is not None:
                        last = str(exc)
                        lb.try_failed(states[i], now - began, now, f"connect failed: {exc}", connect=True)
                    elif won is None:
                        won = (task.result(), i, p, True)
                    else:
                        task.result().abort()  # two connects completed at once: one is enough
                if won is not None:
                    drop(lambda s: f"connect took over {s:.3f}s (another instance answered first)", now)
                    return won
                if now >= deadline:
                    drop(lambda s: f"connect timeout after {s:.1f}s", now)
                    log.warning("upstream unreachable: no connect within %.1fs", self.upstream.dial_timeout)
                    raise Failed(502, "upstream unreachable\n", idx)
                if done and pending:
                    continue  # one connect failed, another is still going
                j = self._next(picker, tried, now)
                if j >= 0:
                    if done:
                        lb.retries += 1
                    else:
                        lb.hedges += 1
                    idx = j
                    start(j, self._prep(picker, j, rq))
                elif not pending:
                    log.warning("upstream unreachable: %s", last)
                    raise Failed(502, "upstream unreachable\n", idx)
                else:
                    hedging = False  # nowhere to hedge to: wait for the connect in progress
        finally:
            if pending:  # cancelled from outside (the client left, or a hedge race was decided)
                for task, (j, _, _) in pending.items():
                    _abandon(task)
                    states[j].outstanding -= 1

    # --- requests
    async def send(self, picker: RoutePicker, idx: int, method: str, path_qs: str,
                   headers: Sequence[tuple[str, str]], body: AsyncIterator[bytes] | None,
                   header_timeout: float, now: float) -> tuple[Response, int]:
        """Send the request; returns (the response, with its headers; the instance that answered).
        Raises Failed for the proxy's own 502/504; ClientGone & co. from the body pass through."""
        lb, budget = self.lb, picker.budget
        budget.deposit(now)
        once = body is not None or method not in IDEMPOTENT  # may reach one instance only
        resend = not once and len(picker.targets) > 1
        hedged = resend and self.per_try > 0
        # the tries' shared record is made only when a try leaves the common case (a dial, a hedge, a
        # header timeout); the common case prepares its head inline from the picker's pool keys
        block = type(headers) is HeaderBlock
        rq = None if block else _Req(method, path_qs, headers, body, header_timeout, now)
        begun = now
        deadline = now + header_timeout if header_timeout > 0 else 0.0
        if once and len(picker.targets) > 1:
            st = picker.states[idx]
            if st.fails or st.unanswered >= STALL_TRIES:
                idx = self._sound(picker, idx, now)
        tried = [idx]
        # the stall time (0: stalls are not judged), _stall_after() inline: this runs for every request
        if deadline or not self.stall or picker.answers < STALL_SAMPLES:
            after = 0.0
        else:
            after = STALL_FACTOR * picker.est  # max(self.stall, this), without the call
            if after < self.stall:
                after = self.stall
        pooled = True
        while True:
            prep = prepare_block(method, picker.keys[idx], headers, body) if block else \
                self._prep(picker, idx, rq)  # type: ignore[arg-type]
            conn = self.upstream.take(prep.key) if pooled else None
            if conn is not None:  # the common case, inline: no coroutine for _connection
                fresh = False
            else:
                if rq is None:
                    rq = _Req(method, path_qs, headers, body, header_timeout, begun)
                conn, idx, prep, fresh = await self._connection(picker, idx, rq, tried, False, prep)
            pooled = True
            st = picker.states[idx]
            t0 = perf_counter()
            try:
                resp = self.upstream.start(conn, prep, body, st)
                if not st.unanswered:  # _track() inline: the first try since the instance's last answer
                    st.silent_since = t0
                st.unanswered += 1
                if after:
                    st.waiting[resp] = (t0 + after, after)
                    if st.unanswered >= STALL_TRIES and st not in self._suspects:  # (a suspect has its tick)
                        self._suspect(st)
            except Stale as e:  # the connection was closed before we wrote: nothing was sent
                if fresh:
                    now = perf_counter()
                    lb.try_failed(st, now - t0, now, f"connection closed at once: {e}", connect=True)
                    j = self._next(picker, tried, now)
                    if j < 0:
                        raise Failed(502, "upstream unreachable\n", idx) from None
                    lb.retries += 1
                    idx = j
                continue  # a dead pooled connection: the next one, or a fresh one
            try:
                if hedged:
                    if rq is None:
                        rq = _Req(method, path_qs, headers, body, header_timeout, begun)
                    resp, idx, t0 = await self._hedged(picker, resp, idx, rq, tried, t0)
                    st = picker.states[idx]
                elif deadline:
                    await resp.headers(max(deadline - perf_counter(), 1e-6))  # _Req.left()
                else:  # no header timeout: resp.headers() inline, one coroutine less per request
                    try:
                        await resp._headers_fut  # Response.headers_future without the property's call
                    except BaseException:
                        resp.close()
                        raise
            except Stale as e:
                if not fresh and prep.resendable:  # a pooled connection died unseen: once more, fresh
                    pooled = False
                    continue
                now = perf_counter()
                lb.try_failed(st, now - t0, now, "closed the connection without answering")
                if resend and (j := self._next(picker, tried, now)) >= 0:
                    lb.retries += 1
                    idx = j
                    continue
                text = "upstream closed the connection without answering\n" if fresh else \
                    "reused upstream connection closed before answering\n"
                raise Failed(502, text, idx) from e
            except Stalled as e:
                now = perf_counter()
                lb.try_failed(st, now - t0, now, str(e))
                if resend and (j := self._next(picker, tried, now, answering=True)) >= 0:
                    lb.retries += 1
                    idx = j
                    continue
                log.warning("upstream %s: %s", st.addr, e)
                raise Failed(504, "upstream not answering\n", idx) from None
            except UpstreamTimeout as e:
                now = perf_counter()
                lb.try_failed(st, now - t0, now, str(e))
                raise Failed(504, "upstream timed out\n", idx) from None
            except UpstreamError as e:
                now = perf_counter()
                lb.try_failed(st, now - t0, now, str(e))
                if resend and (j := self._next(picker, tried, now)) >= 0:
                    lb.retries += 1
                    idx = j
                    continue
                log.warning("upstream %s failed: %s", st.addr, e)
                raise Failed(502, "upstream error\n", idx) from None
            now = perf_counter()
            rtt = now - t0
            status = resp.status
            st.unanswered = 0  # it answered: not silent, whatever the status
            if status >= 500:
                lb.try_failed(st, rtt, now, f"answered {status}")
                if resend and status in RETRY_STATUS and (j := self._next(picker, tried, now)) >= 0:
                    resp.close()
                    lb.retries += 1
                    idx = j
                    continue
                return resp, idx
            inv_tau = lb.inv_tau
            st.answered(rtt, now, inv_tau)  # Balancer.try_succeeded() without its own call level
            picker.observe_route(rtt, now, inv_tau)
            complete = resp._done and resp._error is None  # Response.complete, without the property's call
            if resend and self.buffer and not complete:
                try:
                    per_try = self._per_try(picker)
                    await resp.fill(self.buffer, per_try)
                    if resp.sized_and_silent and (after := self._stall_after(picker)):
                        # headers, then no body: wait out the stall time, then go where bodies come
                        await resp.fill(self.buffer, max(0.0, after - per_try))
                        now = perf_counter()
                        if resp.sized_and_silent and (j := self._next(picker, tried, now, answering=True)) >= 0:
                            resp.close()
                            lb.try_failed(st, now - t0, now, f"sent headers, then no body for {max(after, per_try):g}s")
                            lb.retries += 1
                            idx = j
                            continue
                except (UpstreamError, Stale) as e:
                    resp.close()
                    now = perf_counter()
                    lb.try_failed(st, now - t0, now, f"response cut short: {e}")
                    if (j := self._next(picker, tried, now)) >= 0:
                        lb.retries += 1
                        idx = j
                        continue
                    raise Failed(502, "upstream error\n", idx) from None
            elif not resend and self.stall and not complete and resp.sized_and_silent:
                await self._body_starts(resp, picker, st, t0, idx, header_timeout)
            return resp, idx

    async def _body_starts(self, resp: Response, picker: RoutePicker, st: Any, t0: float, idx: int,
                           header_timeout: float) -> None:
        """A request that cannot go elsewhere (a POST, or a route of one instance) got headers with a
        Content-Length and no body byte yet: wait for one for the stall time (at least the header timeout),
        then answer 504 rather than hold the client for ever. Nothing has reached the client yet (the
        listener sends the head with the first body bytes), so its answer is a whole, honest 504."""
        wait = max(self.stall, STALL_FACTOR * picker.est, header_timeout)
        try:
            await resp.fill(1, wait)
        except (UpstreamError, Stale) as e:
            resp.close()
            now = perf_counter()
            self.lb.try_failed(st, now - t0, now, f"response cut short: {e}")
            raise Failed(502, "upstream error\n", idx) from None
        if resp.sized_and_silent:
            resp.close()
            now = perf_counter()
            self.lb.try_failed(st, now - t0, now, f"sent headers, then no body for {wait:g}s")
            log.warning("upstream %s: sent headers, then no body for %gs", st.addr, wait)
            raise Failed(504, "upstream sent its headers, then no body\n", idx)

    def _per_try(self, picker: RoutePicker) -> float:
        return max(self.per_try, PER_TRY_FACTOR * picker.est)

    def _stall_after(self, picker: RoutePicker) -> float:
        """The route's stall time (0: stalls are not judged on it, yet or at all)."""
        if not self.stall or picker.answers < STALL_SAMPLES:
            return 0.0
        return max(self.stall, STALL_FACTOR * picker.est)

    def _sound(self, picker: RoutePicker, idx: int, now: float) -> int:
        """For a request that cannot be sent twice: the first pick, or another instance if it is stalled
        or failed since its last success, so such a request is never the probe that finds out whether an
        instance is back (idempotent requests are, one at a time: p2c's cold probe). Keeps `idx` when
        every instance is as bad."""
        after = self._stall_after(picker)
        st = picker.states[idx]
        if not st.fails and not (after and st.stalled(now, after)):
            return idx
        bad = [i for i, s in enumerate(picker.states) if s.fails or (after and s.stalled(now, after))]
        j = picker.pick(now, bad)
        if j < 0:
            return idx
        if st.probe_at == now:  # the pick marked it for a probe that now goes elsewhere
            st.probe_at = 0.0
        return j

    # --- stalls (see the module docstring): one timer per process, armed only while an instance is suspect
    def _track(self, st: Any, resp: Response, t0: float, after: float) -> None:
        """Count a try sent to `st` at `t0` as unanswered until it answers; with a stall time, let the
        watchdog cut it if the instance stalls. Per try: a few attribute updates and one dict insert (no
        timer: a timer per request cost more than all of this)."""
        if not st.unanswered:  # the first try since the instance's last answer: silence starts
            st.silent_since = t0
        st.unanswered += 1
        if after:
            st.waiting[resp] = (t0 + after, after)
            if st.unanswered >= STALL_TRIES:
                self._suspect(st)

    def _suspect(self, st: Any) -> None:
        self._suspects.add(st)
        if self._tick is None:
            self._tick = asyncio.get_running_loop().call_later(self._every, self._watch)

    def _watch(self) -> None:
        """The watchdog's tick: on each suspect instance that is stalled, end the tries that waited at least
        their stall time (Stalled, raised where they wait for headers) and eject it."""
        self._tick = None
        now = perf_counter()
        for st in list(self._suspects):
            if st.unanswered < STALL_TRIES or not st.waiting:
                self._suspects.discard(st)  # it answered, or nothing waits on it any more
                continue
            cut = [r for r, (at, after) in st.waiting.items() if now >= at and st.stalled(now, after)]
            if not cut:
                continue
            silent = now - st.silent_since
            self.lb.stalled(st, now, f"stalled: no response headers for {silent:.1f}s to {st.unanswered} requests",
                            len(cut))
            text = f"no response headers from {st.addr} for {silent:.1f}s ({st.unanswered} requests waited)"
            for r in cut:
                del st.waiting[r]
                r.give_up(Stalled(text))
        if self._suspects:
            self._tick = asyncio.get_running_loop().call_later(self._every, self._watch)

    async def _hedged(self, picker: RoutePicker, resp: Response, idx: int, rq: _Req, tried: list[int],
                      t0: float) -> tuple[Response, int, float]:
        """The headers of `resp`, or, when they take longer than the per-try timeout, of a hedge sent
        to another instance meanwhile, whichever comes first. Raises the first try's error when no
        hedge could be sent or the hedge failed too."""
        per_try = self._per_try(picker)
        left = rq.left()
        if left and per_try >= left:
            await resp.headers(left)
            return resp, idx, t0
        if await resp.arrived(per_try):
            return resp, idx, t0
        first = resp.headers_future
        now = perf_counter()
        j = self._next(picker, tried, now)
        if j < 0:
            await resp.headers(rq.left())
            return resp, idx, t0
        self.lb.hedges += 1
        hedge = asyncio.ensure_future(self._hedge(picker, j, rq, tried))
        pending: set[asyncio.Future] = {first, hedge}
        won: Response | None = None
        try:
            while pending:
                left = rq.left()
                done, pending = await asyncio.wait(pending, timeout=left or None, return_when=asyncio.FIRST_COMPLETED)
                if not done:  # the header timeout passed for both
                    await resp.headers(1e-6)  # raises UpstreamTimeout and closes it
                if first in done and not first.cancelled() and first.exception() is None:
                    won = resp
                    return resp, idx, t0
                if hedge in done and hedge.exception() is None:
                    now = perf_counter()
                    resp.close()
                    self.lb.try_failed(picker.states[idx], now - t0, now,
                                       f"no response headers within {per_try:.3f}s (a hedge answered first)")
                    won = hedge.result()[0]
                    return hedge.result()
            await resp.headers()  # both failed: the first try's error
            raise UpstreamError("no answer")  # not reached: headers() raised
        finally:
            if won is None:
                resp.close()  # both failed, the header timeout passed, or we were cancelled (client gone)
            if not hedge.done():
                hedge.cancel()
            elif not hedge.cancelled() and hedge.exception() is None and hedge.result()[0] is not won:
                hedge.result()[0].close()  # both answered at once: the hedge's answer is dropped

    async def _hedge(self, picker: RoutePicker, idx: int, rq: _Req, tried: list[int]) -> tuple[Response, int, float]:
        """One more try, on `idx` (or where its connect goes): up to its response headers."""
        conn, idx, prep, _ = await self._connection(picker, idx, rq, tried)
        st = picker.states[idx]
        t0 = perf_counter()
        try:
            resp = self.upstream.start(conn, prep, None, st)
            self._track(st, resp, t0, 0.0 if rq.deadline else self._stall_after(picker))
            await resp.headers(rq.left())
        except UPSTREAM_FAILURES as e:
            now = perf_counter()
            self.lb.try_failed(st, now - t0, now, f"hedge failed: {e}")
            raise
        return resp, idx, t0
