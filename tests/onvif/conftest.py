from tests.peers.onvif import onvif_camera  # noqa: F401  (fixture)
