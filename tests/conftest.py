pytest_plugins = ["tests.peers.mosquitto"]
