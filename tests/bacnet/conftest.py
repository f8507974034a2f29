from tests.peers.bacnet import bacnet_lab  # noqa: F401  (fixture)
