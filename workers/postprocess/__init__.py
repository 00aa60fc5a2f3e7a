"""Postprocessing, usable without the protocol: decoding and validating images, upscaling (Real-ESRGAN
with a classical fallback), enhancement, format conversion, quality metrics, safety validation."""
