"""Quantization: backend quantizers fed by mmedge's calibration sources and branch policies."""
