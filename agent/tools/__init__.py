"""Command-line tools for installers, field techs and operators (they use the core, never the reverse)."""
