"""Proof that the deployed model computes what the trained one computes: the numpy oracle (``reference``), the
parity machinery and its tolerance table (``parity``), the checks against eager torch (``against_torch``),
re-checking a file (``recheck``), what is inside a model (``inspect``) and speed against torch (``bench``).

The package itself, ``parity``, ``reference`` and ``inspect`` import without torch, for use on a device.
"""
