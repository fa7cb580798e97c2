"""Shared test setup: the Amplitude stand-in fixture and a Hypothesis profile for busy machines."""

from hypothesis import HealthCheck, settings

from fake_amplitude import fake_amplitude  # noqa: F401  (pytest fixture)

# CI machines run other work at the same time: time-based health checks and per-example
# deadlines would make property tests flaky without testing anything about the code.
settings.register_profile("edgeproxy", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("edgeproxy")
