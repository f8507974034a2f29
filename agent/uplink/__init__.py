"""MQTT uplink: session, topics, encoding, birth/will, command intake."""
