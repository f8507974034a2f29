"""edge-agent: the site agent of connected public buildings."""

__version__ = "0.1.0"
