"""The delivery worker: spool -> batches -> each group's target, and each verdict back to the spool.

One background task. Each cycle asks the spool which (target, source, endpoint, options)
groups have due items, and sends a batch for every group that is full or whose oldest item
has waited ``flush_interval``. What the request looks like and what an answer means is the
group's ``Target``'s (``targets.py``: Amplitude, the Segment relay); everything else here is
the same for every target, so one unreachable service never holds up another's groups. A
batch's items stay ``inflight`` until its verdict is applied (ack, dead-letter, retry
later); items the verdict says to resend now (the rest of a partial 400, the halves of a
413, the unthrottled part of a 429) are sent again at once. Nothing busy polls: the task
sleeps on an ``asyncio.Event`` that ``wake()`` sets, with a timeout of at most
``flush_interval``.

An outage backs off as a whole, not only per batch: after a 5xx, a timeout or a connection
error the target's endpoint itself is closed for an exponentially growing, jittered delay
(reset by the next answer that is not a server failure), so while a service is down the
worker sends one probe per delay instead of one request per flush interval for every new
batch. A 429 with ``Retry-After`` (Segment's) closes it for exactly that long. Those rules,
and the pauses of throttled devices and users, are ``upstream.py``'s.

With no ``amplitude.api_key`` the Amplitude target delivers to a LOCAL SINK (an in-memory
ring of the request bodies it would have sent) so a newcomer sees the whole loop in /debug.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from typing import TYPE_CHECKING, Any, Sequence

import aiohttp

from edgeproxy.config import Settings
from edgeproxy.delivery.classify import Verdict, backoff_delay, body_excerpt
from edgeproxy.delivery.http_post import post
from edgeproxy.delivery.records import ClaimedItem, DueGroup, SpoolUnavailable, now_ms
from edgeproxy.delivery.targets import (
    AMPLITUDE,
    AMPLITUDE_MAX_BODY_BYTES,
    MAX_EVENTS,
    Target,
    amplitude_max_items,
    build_targets,
)
from edgeproxy.delivery.upstream import Upstream
from edgeproxy.cockpit.trail import MAX_EXCERPT, Attempt, Trail, item_outcomes
from edgeproxy.metrics import Metrics

if TYPE_CHECKING:
    from edgeproxy.delivery.queue import DeliveryQueue

log = logging.getLogger("edgeproxy.delivery")

MAX_BODY_BYTES = AMPLITUDE_MAX_BODY_BYTES
SINK_SIZE = 1_000
STATS_EVERY_S = 1.0
# Wakes come with every append; cycles run at most this often (or flush_interval / 10 if
# shorter), unless the last one left due items behind. A cycle's due_groups read costs ~0.35 ms
# of the event loop on the bench machine: at ~1,000 calls/s, 20 ms gave ~46 cycles/s (1.6% of
# the loop, in pieces each call arriving meanwhile waits for). Nothing waits on it: a group is
# sent when it holds a full batch or flush_interval (1 s) has passed, within a gap either way.
MIN_CYCLE_GAP_S = 0.1


max_items = amplitude_max_items  # Amplitude's per-endpoint batch limits (targets.py)


class DeliveryWorker:
    """Delivers spooled items to their targets (Amplitude's local sink when it has no API key)."""

    def __init__(
        self,
        spool: DeliveryQueue,
        settings: Settings,
        metrics: Metrics,
        *,
        client_session: aiohttp.ClientSession | None = None,
        sink_size: int = SINK_SIZE,
        rng: random.Random | None = None,
        targets: dict[tuple[str, str], Target] | None = None,
        trail: Trail | None = None,
    ) -> None:
        self.spool = spool
        self.targets = build_targets(settings) if targets is None else targets
        self.settings = settings
        self.metrics = metrics
        self.sink: collections.deque[dict[str, Any]] = collections.deque(maxlen=sink_size)
        self._session = client_session
        self._own_session = client_session is None
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._draining = False
        # Closed endpoints and throttled ids, per target and source (one project's, not all)
        self.upstream = Upstream(settings.delivery.retry_base, settings.delivery.retry_max, self._rng)
        self._last_stats = 0.0
        self._orphans: set[asyncio.Future[None]] = set()
        self.requests_sent = 0
        self.trail = trail  # the cockpit's event trail: each attempt's outcome per message

    @property
    def sink_mode(self) -> bool:
        """The default source's Amplitude target delivers to the local sink (no API key)."""
        target = self.targets.get((AMPLITUDE, "default"))
        return target is not None and target.sink

    def _target(self, g: DueGroup) -> Target | None:
        return self.targets.get((g.target, g.source))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._task is not None:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self._draining = False
        self._task = asyncio.create_task(self._run(), name="edgeproxy-delivery")

    async def stop(self, grace: float = 10.0) -> None:
        """Flush what is due within ``grace`` seconds; the rest stays pending for the next start."""
        task = self._task
        if task is None:
            return
        self._draining = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=max(0.0, grace))
        except asyncio.TimeoutError:
            task.cancel()  # mid-request: its claimed rows are released back to pending
            await asyncio.gather(task, return_exceptions=True)
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        except Exception:  # the task crashed; it already logged
            pass
        self._task = None
        if self._orphans:
            await asyncio.gather(*self._orphans, return_exceptions=True)
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def wake(self) -> None:
        """A hint from the edge that items were appended: re-check without waiting the full interval."""
        self._wake.set()

    # ------------------------------------------------------------------ main loop

    async def _run(self) -> None:
        flush = self.settings.delivery.flush_interval
        min_gap = min(MIN_CYCLE_GAP_S, flush / 10)
        while True:
            started = time.monotonic()
            forced = self._draining  # a cycle begun before stop() was called does not count as the flush
            try:
                more, deadline_ms = await self._cycle(force=forced)
                await self._refresh_stats()
            except SpoolUnavailable as exc:
                log.error("delivery paused: the spool is unavailable: %s", exc)
                more, deadline_ms = False, None
                if self._draining:
                    return
            except Exception:
                log.exception("delivery cycle failed; retrying after flush_interval")
                more, deadline_ms = False, None
                if self._draining:
                    return
            if forced and not more:
                return
            if self._draining and not forced:
                continue
            if more:
                await asyncio.sleep(0)
                continue
            timeout = flush
            if deadline_ms is not None:
                timeout = min(flush, max(0.0, (deadline_ms - now_ms()) / 1000))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(timeout, min_gap))
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            # Wakes come once per append under load: coalesce them into at most one cycle per gap.
            elapsed = time.monotonic() - started
            if elapsed < min_gap and not self._draining:
                await asyncio.sleep(min_gap - elapsed)

    async def _cycle(self, *, force: bool) -> tuple[bool, int | None]:
        """Send one batch per ready group. Returns (more due now, ms when something becomes due)."""
        t = now_ms()
        flush_ms = int(self.settings.delivery.flush_interval * 1000)
        groups = await self.spool.due_groups(t)
        ready: list[DueGroup] = []
        deadline: int | None = await self.spool.next_attempt_ms(t)
        for g in groups:
            closed = self.upstream.closed_until((g.target, g.source, g.endpoint))
            if closed > t:  # the endpoint is failing: wait for its backoff, even when draining
                deadline = closed if deadline is None else min(deadline, closed)
                continue
            target = self._target(g)
            full = target is None or g.count >= target.max_items(g.endpoint, self.settings.delivery.batch_size)
            if force or full or g.oldest_ms + flush_ms <= t:
                ready.append(g)
            else:
                due = g.oldest_ms + flush_ms
                deadline = due if deadline is None else min(deadline, due)
        if not ready:
            return False, deadline
        results = await asyncio.gather(*(self._deliver_group(g) for g in ready), return_exceptions=True)
        for result in results:  # every group finished (none left running detached); now report
            if isinstance(result, BaseException):
                raise result
        return any(results), deadline

    async def _refresh_stats(self) -> None:
        if time.monotonic() - self._last_stats >= STATS_EVERY_S:
            self._last_stats = time.monotonic()
            await self.spool.stats()  # sets metrics.spool_depth

    # ------------------------------------------------------------------ one group

    async def _claim(self, g: DueGroup, target: Target | None) -> list[ClaimedItem]:
        """Claim a batch; if we are cancelled meanwhile, the claim still lands, so release it then."""
        if target is None:  # nobody to send to: claimed only to be dead-lettered
            limit, max_bytes = MAX_EVENTS, MAX_BODY_BYTES
        else:
            limit, max_bytes = target.max_items(g.endpoint, self.settings.delivery.batch_size), target.max_body_bytes
        task = asyncio.ensure_future(self.spool.claim(g.group_key, limit=limit, max_bytes=max_bytes))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._release_orphaned_claim)
            raise

    def _release_orphaned_claim(self, task: asyncio.Future[list[ClaimedItem]]) -> None:
        if not task.cancelled() and task.exception() is None and task.result():
            orphan = asyncio.ensure_future(self._release_quietly([c.row_id for c in task.result()]))
            self._orphans.add(orphan)
            orphan.add_done_callback(self._orphans.discard)

    async def _release_quietly(self, row_ids: list[int]) -> None:
        try:
            await self.spool.release(row_ids)
        except SpoolUnavailable:
            pass  # in flight rows are made pending again when the spool is next opened

    async def _deliver_group(self, g: DueGroup) -> bool:
        target = self._target(g)
        claimed = await self._claim(g, target)
        if not claimed:
            return False
        count = len(claimed)
        unsettled = {c.row_id for c in claimed}
        try:
            claimed = await self._refuse_unsendable(g, target, claimed, unsettled)
            t = now_ms()
            deferred: dict[int, list[int]] = {}
            batch = claimed
            if self.upstream.any_paused(t):  # else no pass over the rows at all
                batch = []
                for c in claimed:
                    until = self.upstream.paused_until((g.target, g.source), c, t)
                    if until:
                        deferred.setdefault(until, []).append(c.row_id)
                    else:
                        batch.append(c)
            if deferred:
                await self.spool.settle(release=[(ids, until) for until, ids in deferred.items()])
                for ids in deferred.values():
                    unsettled.difference_update(ids)
            if batch:
                assert target is not None
                await self._send_batch(target, g.endpoint, g.options, batch, unsettled)
        except BaseException:
            # Cancelled by stop() after the grace period, or the spool failed: whatever was
            # claimed and not settled goes back to pending now rather than at the next open.
            if unsettled:
                await asyncio.shield(self._release_quietly(list(unsettled)))
            raise
        return count < g.count

    async def _refuse_unsendable(self, g: DueGroup, target: Target | None, claimed: list[ClaimedItem],
                                 unsettled: set[Any]) -> list[ClaimedItem]:
        """Dead-letter, unsent, what no request could deliver: items whose target is not in
        this configuration (replayable once it is again), and items over the target's size
        limit (Segment refuses a whole request for one message over 32 KB). Returns the rest."""
        if target is None:
            text = (f"no delivery target {g.target!r} for source {g.source!r} in this configuration"
                    " (enable it and run `edgeproxy replay --reason no_target`)")
            refused = {c.row_id: ("no_target", text) for c in claimed}
            log.error("%d item(s) dead-lettered: %s", len(claimed), text)
        else:
            refused = {c.row_id: ("too_large", f"{c.size} bytes, over {target.name}'s limit of {target.max_item_bytes}"
                                  " bytes per item") for c in claimed if c.size > target.max_item_bytes}
        if not refused:
            return claimed
        await self.spool.settle(dead=refused)
        unsettled.difference_update(refused)
        for code, _ in refused.values():
            self.metrics.dead_letters.labels(g.target, g.source, code).inc()
        return [c for c in claimed if c.row_id not in refused]

    async def _send_batch(
        self, target: Target, endpoint: str, options: dict[str, Any] | None, batch: list[ClaimedItem],
        unsettled: set[int],
    ) -> None:
        """Send, apply the verdict, resend what it says to resend now; bounded since resends shrink."""
        work: collections.deque[list[ClaimedItem]] = collections.deque([batch])
        key = (target.kind, target.source, endpoint)
        while work:
            sub = work.popleft()
            closed = self.upstream.closed_until(key)
            if closed > now_ms():  # a sibling half just met a server failure: wait with it
                ids = [c.row_id for c in sub]
                await self.spool.release(ids, closed)
                unsettled.difference_update(ids)
                continue
            verdict = await self._send_one(target, endpoint, options, sub)
            resent = {sub[i].row_id for indexes in verdict.resend for i in indexes}
            unsettled.difference_update({c.row_id for c in sub} - resent)
            for indexes in verdict.resend:
                work.append([sub[i] for i in indexes])

    async def _send_one(self, target: Target, endpoint: str, options: dict[str, Any] | None,
                        sub: list[ClaimedItem]) -> Verdict:
        labels = (target.kind, target.source, endpoint)
        if target.sink:
            self.sink.append(target.readable(endpoint, options, sub))
            verdict = Verdict("sink", ack=tuple(range(len(sub))))
            await self._apply(target, endpoint, sub, verdict, None, "")
            return verdict
        wait = target.limiter.reserve(len(sub), time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)
        req = target.request(endpoint, options, sub, now_ms())
        started = time.monotonic()
        assert self._session is not None
        answer = await post(self._session, req, self.settings.delivery.request_timeout)
        self.requests_sent += 1
        self.metrics.delivery_latency.labels(*labels).observe(time.monotonic() - started)
        status = answer.status
        verdict = target.classify(endpoint, status, answer.body, answer.headers, len(sub), answer.transport_error)
        self.upstream.note(labels, verdict, now_ms())
        excerpt = answer.transport_error if status is None else body_excerpt(answer.body)
        await self._apply(target, endpoint, sub, verdict, status, excerpt)
        return verdict

    async def _apply(self, target: Target, endpoint: str, sub: Sequence[ClaimedItem], v: Verdict, status: int | None,
                     excerpt: str) -> None:
        t = now_ms()
        redact = target.redact  # Amplitude echoes a wrong API key in its error: keep it out of logs
        excerpt, error = redact(excerpt), redact(v.error)
        ids = [c.row_id for c in sub]
        retry: list[tuple[list[int], int, str]] = []
        if v.backoff and v.retry_after is not None:  # the service said when: that long, a little jitter
            delay = v.retry_after + self._rng.random() * min(1.0, v.retry_after / 10 + 0.1)
            retry.append(([ids[i] for i in v.backoff], t + int(delay * 1000), error))
        elif v.backoff:
            attempts = 1 + max(sub[i].attempts for i in v.backoff)
            delay = backoff_delay(attempts, self.settings.delivery.retry_base, self.settings.delivery.retry_max, self._rng)
            retry.append(([ids[i] for i in v.backoff], t + int(delay * 1000), error))
        if v.pause:
            until = t + int(v.pause_s * 1000)
            retry.append(([ids[i] for i in v.pause], until, f"throttled (429), paused {v.pause_s:g}s: {error}"))
            self.upstream.pause((target.kind, target.source), v, [sub[i] for i in v.pause], until)
        response = None if v.outcome == "sink" else (endpoint, status, len(sub), excerpt, target.kind, target.source)
        await self.spool.settle(
            ack=ids if len(v.ack) == len(ids) else [ids[i] for i in v.ack],  # all of them, usually
            dead={ids[i]: (r.code, redact(r.text)) for i, r in v.dead.items()},
            retry=retry,
            response=response,
            now=t,
        )
        if self.trail is not None and len(self.trail):
            # retry holds the backoff's (row ids, until) first when there is one, the pause's last
            upcoming = {"retry": retry[0][1] if v.backoff and retry else None, "throttled": retry[-1][1] if v.pause else None}
            self.trail.attempted([c.message_id for c in sub], Attempt(t, target.kind, endpoint, status, v.outcome,
                                                                      excerpt[:MAX_EXCERPT], None),
                                 item_outcomes(v, v.outcome == "sink"), upcoming)
        labels = (target.kind, target.source)
        self.metrics.deliveries.labels(*labels, endpoint, v.outcome).inc()
        if v.ack:
            self.metrics.delivered_items.labels(*labels, endpoint).inc(len(v.ack))
        for reason in v.dead.values():
            self.metrics.dead_letters.labels(*labels, reason.code).inc()
        if v.config_problem:
            log.error("%s refused the request for a configuration reason (status %s): %s -- %s",
                      target.name, status, error, target.config_hint)
        elif v.outcome not in ("ok", "sink"):
            log.warning("%s /%s answered %s for %d items: %s -> %s", target.name, endpoint, status, len(sub), error,
                        v.outcome)
