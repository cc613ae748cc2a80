"""Constants of the wire formats that the config's validation and :mod:`qtd.compress` both need.

A leaf module (no imports), so that checking a config never loads torch and compress never loads config.
"""

QUANTIZED_BITS = tuple(range(1, 9))  # stochastic quantization onto 2**bits levels
UNQUANTIZED_BITS = (16, 32)  # half precision, raw float32
ALLOWED_BITS = QUANTIZED_BITS + UNQUANTIZED_BITS
DIFFERENCE_KINDS = ("grid", "topk", "sign")  # compression.differences: how CHOCO's differences are compressed
