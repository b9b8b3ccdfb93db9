"""End-to-end tests: the local cluster with real traffic (helpers: xpunet.cluster.testing); a garbage
collection after each test so that a leaked socket fails the test that leaked it."""

from xpunet.testing.leaks import collect_garbage_after_test

__all__ = ["collect_garbage_after_test"]
