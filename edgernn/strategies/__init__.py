"""The export strategies: how a recurrent layer is written into an ONNX graph, one module each (``native``,
``loop``, ``unroll``, ``step``), registered by name in ``registry``. A new strategy is one module here that
subclasses ``registry.Strategy`` and calls ``register_strategy``, plus its test."""
