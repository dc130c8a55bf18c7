"""Workflows over several rooms at once, so that no room below has to reach up: ``compare`` (train, export and
bench every candidate), ``recheck`` (``edgernn parity``: an export against its checkpoint, module or another
file, the target's own runtime included) and ``longrun`` (``edgernn parity --steps``)."""
