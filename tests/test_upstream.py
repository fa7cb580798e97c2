"""The delivery worker's memory of the services' answers (edgeproxy.delivery.upstream), alone.

The worker's tests drive these rules through a fake Amplitude; here each rule is checked on
its own, with a seeded random source and explicit times, including the edges the HTTP tests
reach only by chance (a reopened endpoint starts its backoff over; a pause the body did not
name falls on the items' own device and user; one project's pause is not another's).
"""

from __future__ import annotations

import random

import orjson

from edgeproxy.delivery.classify import Verdict
from edgeproxy.delivery.records import ClaimedItem
from edgeproxy.delivery.upstream import Upstream, identities

KEY = ("amplitude", "default", "2/httpapi")
SCOPE = ("amplitude", "default")


def claimed(device: str | None, user: str | None, *, in_item: bool = False) -> ClaimedItem:
    item = {"event_type": "e", **({"device_id": device, "user_id": user} if in_item else {})}
    return ClaimedItem(1, "m1", "2/httpapi", orjson.dumps(item), None,
                       None if in_item else device, None if in_item else user, 0, 10)


def test_a_server_failure_closes_the_endpoint_for_a_growing_backoff_and_any_other_answer_reopens_it() -> None:
    up = Upstream(retry_base=1.0, retry_max=60.0, rng=random.Random(7))
    assert up.closed_until(KEY) == 0
    up.note(KEY, Verdict("retry"), 1_000)
    first = up.closed_until(KEY) - 1_000
    up.note(KEY, Verdict("retry"), 1_000)
    second = up.closed_until(KEY) - 1_000
    assert 500 <= first <= 1_000 and 1_000 <= second <= 2_000  # equal jitter: half fixed, half random
    up.note(KEY, Verdict("ok"), 2_000)
    assert up.closed_until(KEY) == 0
    up.note(KEY, Verdict("retry"), 3_000)  # the count started over: a first step again
    assert 500 <= up.closed_until(KEY) - 3_000 <= 1_000
    assert up.closed_until(("segment", "default", "v1/batch")) == 0  # another target is unaffected


def test_retry_after_closes_the_endpoint_for_exactly_that_long() -> None:
    up = Upstream(retry_base=1.0, retry_max=60.0, rng=random.Random(7))
    up.note(KEY, Verdict("throttled", retry_after=12.5), 10_000)
    assert up.closed_until(KEY) == 22_500


def test_a_pause_falls_on_the_ids_the_answer_names_else_on_the_items_own() -> None:
    up = Upstream(retry_base=1.0, retry_max=60.0, rng=random.Random(7))
    named = Verdict("throttled", throttled_devices=frozenset({"d1"}), throttled_users=frozenset({"u9"}))
    up.pause(SCOPE, named, [claimed("d2", None)], 5_000)
    assert up.any_paused(1_000)
    assert up.paused_until(SCOPE, claimed("d1", None), 1_000) == 5_000
    assert up.paused_until(SCOPE, claimed(None, "u9", in_item=True), 1_000) == 5_000
    assert up.paused_until(SCOPE, claimed("d2", None), 1_000) == 0  # named ids only
    assert up.paused_until(("amplitude", "staging"), claimed("d1", None), 1_000) == 0  # another project

    up.pause(SCOPE, Verdict("throttled"), [claimed("d3", "u3", in_item=True)], 7_000)
    assert up.paused_until(SCOPE, claimed("d3", None), 1_000) == 7_000
    assert up.paused_until(SCOPE, claimed(None, "u3"), 1_000) == 7_000


def test_ended_pauses_are_forgotten() -> None:
    up = Upstream(retry_base=1.0, retry_max=60.0, rng=random.Random(7))
    up.pause(SCOPE, Verdict("throttled", throttled_devices=frozenset({"d1"})), [], 5_000)
    assert up.any_paused(4_999)
    assert not up.any_paused(5_000)
    assert up.paused_until(SCOPE, claimed("d1", None), 4_000) == 0  # gone, not merely past


def test_an_item_counts_against_its_mapped_ids_before_the_spool_columns() -> None:
    c = ClaimedItem(1, "m", "2/httpapi", orjson.dumps({"device_id": "mapped", "user_id": 42}), None, "column", "col-u", 0, 1)
    assert identities(SCOPE, c) == [(*SCOPE, "device", "mapped"), (*SCOPE, "user", "42")]
    assert identities(SCOPE, claimed(None, None)) == []
