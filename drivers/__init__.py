"""Protocol drivers, one package each; registered by name in ``agent.registry.DRIVERS``."""
