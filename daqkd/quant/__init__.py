"""Quantizers, quantized layers and model conversion (docs/METHOD.md §3)."""
from daqkd.quant.base import (
    ALLOWED_BITS,
    Grid,
    QuantConv2d,
    Quantizer,
    QuantLinear,
    calibrate,
    check_bits,
    check_first_last,
    quant_layers,
    quantize_model,
    quantizer_parameters,
    summary,
)
from daqkd.quant.dorefa import DoReFaQuantizer
from daqkd.quant.ewgs import EWGSQuantizer, estimate_ewgs_deltas, ewgs_round
from daqkd.quant.lsq import LSQQuantizer
from daqkd.quant.pact import PACTQuantizer

__all__ = [
    "ALLOWED_BITS",
    "DoReFaQuantizer",
    "EWGSQuantizer",
    "Grid",
    "LSQQuantizer",
    "PACTQuantizer",
    "QuantConv2d",
    "QuantLinear",
    "Quantizer",
    "calibrate",
    "check_bits",
    "check_first_last",
    "estimate_ewgs_deltas",
    "ewgs_round",
    "quant_layers",
    "quantize_model",
    "quantizer_parameters",
    "summary",
]
