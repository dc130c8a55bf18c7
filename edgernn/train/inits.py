"""The weight initialisation schemes of training (``TrainConfig.init``, ``edgernn train --init``), applied by
``edgernn.train.loop.initialise``. Torch-free, so the CLI offers them without loading torch."""

INITS = ("default", "xavier", "he", "orthogonal", "identity")
