"""Test helpers shared by every area: a real nats-server fixture, fresh bucket names, small async helpers.

Integration tests get the fixtures through ``tests/integration/conftest.py``.
"""
