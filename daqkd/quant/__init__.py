"""Quantizers, quantized layers and model conversion (METHOD.md §3)."""
from daqkd.quant.base import (
    ALLOWED_BITS,
    QuantConv2d,
    QuantLinear,
    Quantizer,
    calibrate,
    check_bits,
    quant_layers,
    quantize_model,
    quantizer_parameters,
    summary,
)
from daqkd.quant.ewgs import EWGSQuantizer, estimate_ewgs_deltas, ewgs_round

__all__ = [
    "ALLOWED_BITS",
    "EWGSQuantizer",
    "QuantConv2d",
    "QuantLinear",
    "Quantizer",
    "calibrate",
    "check_bits",
    "estimate_ewgs_deltas",
    "ewgs_round",
    "quant_layers",
    "quantize_model",
    "quantizer_parameters",
    "summary",
]
