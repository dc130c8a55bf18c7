"""Proof that the deployed model computes what the trained one computes: the numpy oracle (``reference``), the
parity machinery and its tolerance table (``parity``), the checks against eager torch (``against_torch``),
what every target's check shares (``check``; the checks are the targets' own, ``edgernn.targets``), what
is inside a model (``inspect``) and speed against torch (``bench``). Re-checking a file against what it came from
is a workflow over export and verify (``edgernn.workflows.recheck``).

The package itself, ``parity``, ``reference`` and ``inspect`` import without torch, for use on a device.
"""
