"""Fake quantization: primitives, quantizer modules and ``apply_policy``."""

from .apply import apply_policy, calibrate_, quantizers
from .fake_quant import CALIB_METHODS, ActQuantizer, CalibConfig, QuantConv2d, QuantLinear, WeightQuantizer
from .primitives import MAX_BITS, MIN_BITS, fake_quantize, qrange

__all__ = [
    "apply_policy",
    "calibrate_",
    "quantizers",
    "CALIB_METHODS",
    "CalibConfig",
    "ActQuantizer",
    "WeightQuantizer",
    "QuantConv2d",
    "QuantLinear",
    "MIN_BITS",
    "MAX_BITS",
    "fake_quantize",
    "qrange",
]
