from tests.peers.panel import access_panel  # noqa: F401  (fixture)
