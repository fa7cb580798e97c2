"""Shared pytest fixtures. The fixture code lives in its own module; it is only registered here."""

from fake_amplitude import fake_amplitude  # noqa: F401  (registers the fixture)
