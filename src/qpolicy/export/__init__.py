"""Export of quantized models (ONNX with standard QuantizeLinear/DequantizeLinear) and their verification."""

from .onnx import METADATA_KEY, VerifyResult, export_onnx, verify_onnx

__all__ = ["METADATA_KEY", "VerifyResult", "export_onnx", "verify_onnx"]
