"""Pure tensor compression: the unbiased stochastic quantizer, bit packing, the wire message, TopK,
error feedback and Block-Sign. Never imports torch.distributed.

``encode_message`` / ``decode_message`` run the fused fast path for the tensor's device when it is
available (numba on CPU, Triton on CUDA) and the plain torch reference otherwise (see :mod:`.fused`).
"""

from .blocksign import blocksign_compress, blocksign_decompress
from .error_feedback import ErrorFeedback
from .fused import quantize_pack, select_backend, unpack_dequantize
from .noise import noise_key, uniform_noise
from .packing import pack_bits, packed_nbytes, unpack_bits
from .quantizer import Quantized, dequantize, quantize
from .topk import Sparse, topk_compress, topk_decompress
from .wire import HEADER_BYTES, Header, decode_message, encode_message, message_nbytes, read_header

__all__ = [
    "HEADER_BYTES",
    "ErrorFeedback",
    "Header",
    "Quantized",
    "Sparse",
    "blocksign_compress",
    "blocksign_decompress",
    "decode_message",
    "dequantize",
    "encode_message",
    "message_nbytes",
    "noise_key",
    "pack_bits",
    "packed_nbytes",
    "quantize",
    "quantize_pack",
    "read_header",
    "select_backend",
    "topk_compress",
    "topk_decompress",
    "uniform_noise",
    "unpack_bits",
    "unpack_dequantize",
]
