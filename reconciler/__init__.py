"""netapply: a declarative reconciler for Linux container networking."""

# The only place the version is written; pyproject.toml reads it from here.
__version__ = "0.1.0"
