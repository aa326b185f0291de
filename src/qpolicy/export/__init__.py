"""Export of quantized models (ONNX with standard QuantizeLinear/DequantizeLinear, or integer operators for
all-8-bit policies) and their verification."""

from .int8 import export_int8
from .onnx import METADATA_KEY, VerifyResult, export_onnx, verify_onnx

__all__ = ["METADATA_KEY", "VerifyResult", "export_int8", "export_onnx", "verify_onnx"]
