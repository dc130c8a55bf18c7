"""Training: built-in tasks and padded batches (``data``), the training loop (``loop``) and ``edgernn train`` as a
function (``workflow``). The checkpoints it writes are ``edgernn.model.checkpoint`` (``checkpoint`` here re-exports
it for existing imports); comparing cells (train, export, bench) is ``edgernn.workflows.compare``."""
