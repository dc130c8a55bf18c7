"""Rewrites of ONNX graphs, onnx and numpy only: each takes a ModelProto and returns the same computation in
another form. ``hygiene`` (the clean-up every export gets), ``onnx_unroll`` (a Scan written out step by step),
``travel`` (the forms engines with bound shapes, fp32 fills and no If load) and ``ncnn_forms`` (the forms ncnn
and MNN need). Nothing here knows torch, a strategy or a target."""
