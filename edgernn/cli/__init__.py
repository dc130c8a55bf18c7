"""The ``edgernn`` command line: one click module per group of commands, each command calling one library
function."""

from .main import main

__all__ = ["main"]
