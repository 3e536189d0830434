"""The `cdcf` command line (entry point ``ops.cli:app``): importing the command modules registers their commands."""

from ops.cli import capture, local, pipeline, scoring  # noqa: F401
from ops.cli.app import app

__all__ = ["app"]
