"""Protocol drivers, one package each; registered by name in ``agent.contract.registry.DRIVERS``."""
