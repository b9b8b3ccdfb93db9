"""End-to-end tests: the local cluster with real traffic (helpers: xpunet.cluster.testing)."""
