"""Checking the L_p-ball property of an ONNX classifier: import, bounds, attacks, check, reports."""
