"""Architecture registry (mlp, cnn) and ONNX export validated by onnxruntime."""

from uverify.models.export import ExportReport, export_onnx, read_metadata
from uverify.models.registry import accuracy, build_model, predict_logits, registered

__all__ = ["ExportReport", "accuracy", "build_model", "export_onnx", "predict_logits", "read_metadata", "registered"]
