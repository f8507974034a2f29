"""What a driver sees of the agent: point and device types, the Driver base class, the registry."""
