"""Training: built-in tasks and padded batches (``data``), the training loop (``loop``), safe checkpoints
(``checkpoint``) and ``edgernn train`` as a function (``workflow``)."""
