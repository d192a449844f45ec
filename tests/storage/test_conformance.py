"""Runs the conformance suite (conformance.py) against every driver in conftest.DRIVERS."""

from tests.storage.conformance import StorageDriverConformance


class TestConformance(StorageDriverConformance):
    """Every test of the suite, once per driver."""
