"""The model room: cell kinds (registry), the recurrent layers, the model zoo, the cell math in torch and the
torch -> ONNX weight layout, and the checkpoint file (``checkpoint``: a config plus weights, loaded safely) that
training writes and verify, optimize and export read. Training and export both build on it.

``cells`` imports neither torch nor onnx (the numpy oracle and the runtime read it); the other modules need torch.
"""
