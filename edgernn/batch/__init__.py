"""Batch inference over many sequences: a directory of shards on this machine (``edgernn.batch.shards``), or a
Ray Data pipeline (``edgernn.batch.ray``: ``map_model`` over a dataset, ``run_directory_ray`` over shards).

Importing this package imports neither onnxruntime nor ray.
"""
