"""Shared test setup: the Amplitude and Segment stand-in fixtures and a Hypothesis profile for busy machines."""

import pytest
from fake_amplitude import TEST_API_KEY, FakeAmplitude, fake_amplitude  # noqa: F401  (pytest fixture)
from fake_segment import fake_segment  # noqa: F401  (pytest fixture)
from hypothesis import HealthCheck, settings

# CI machines run other work at the same time: time-based health checks and per-example
# deadlines would make property tests flaky without testing anything about the code.
settings.register_profile("edgeproxy", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("edgeproxy")


@pytest.fixture
async def amp():
    """A started Amplitude stand-in that accepts TEST_API_KEY; ``amp.base_url`` is its address."""
    fake = FakeAmplitude(api_keys={TEST_API_KEY})
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory):
    """One redis-server for the whole run; tests keep apart by key prefix (``unique_prefix``)."""
    from redis_server import redis_server

    with redis_server(tmp_path_factory.mktemp("shared-redis")) as url:
        yield url


@pytest.fixture
def unique_prefix(request) -> str:
    import secrets

    return f"t{secrets.token_hex(4)}:"
