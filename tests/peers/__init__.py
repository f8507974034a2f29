"""Real protocol peers started by the tests themselves (one module per peer). Loopback or test-made
network namespaces only."""
