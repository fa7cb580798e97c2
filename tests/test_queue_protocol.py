"""Both delivery queue backends implement the whole DeliveryQueue protocol, call for call.

Why a signature check and not only behaviour tests: /debug, the worker and the CLI call
the queue through the protocol, and a method one backend lacks (or takes other parameters
in) surfaces only when that page or command runs against that backend. This fails first.
"""

from __future__ import annotations

import inspect

import pytest

from edgeproxy.delivery.queue import DeliveryQueue
from edgeproxy.delivery.redis_queue import RedisQueue
from edgeproxy.delivery.spool import Spool

PROTOCOL_METHODS = sorted(
    name for name, value in vars(DeliveryQueue).items() if inspect.iscoroutinefunction(value) and not name.startswith("_")
)


def shape(fn) -> list[tuple[str, object, object]]:
    """Parameter names, kinds and defaults: what a caller relies on (annotations may differ: row ids)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_the_protocol_declares_what_debug_and_the_cli_call() -> None:
    assert {"dead_by_reason", "undelivered", "dead_letters", "replay_dead_letters", "settle", "stats"} <= set(PROTOCOL_METHODS)


@pytest.mark.parametrize("backend", [Spool, RedisQueue], ids=["sqlite", "redis"])
@pytest.mark.parametrize("name", PROTOCOL_METHODS)
def test_backend_method_matches_the_protocol(backend: type, name: str) -> None:
    method = getattr(backend, name, None)
    assert method is not None, f"{backend.__name__} lacks {name}"
    assert inspect.iscoroutinefunction(method), f"{backend.__name__}.{name} is not a coroutine function"
    assert shape(method) == shape(getattr(DeliveryQueue, name))
