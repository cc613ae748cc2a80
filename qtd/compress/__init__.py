"""Pure tensor compression: the unbiased stochastic quantizer, bit packing, the wire message, TopK,
error feedback, Block-Sign and the gradient messages of parameter-server mode. Never imports torch.distributed.

``encode_message`` / ``decode_message`` run the fused fast path for the tensor's device when it is
available (numba on CPU, Triton on CUDA) and the plain torch reference otherwise (see :mod:`.fused`);
``warm_up`` compiles those fast paths ahead of a run (see :mod:`.warmup`).
"""

from .backend import select_backend
from .blocksign import blocksign_compress, blocksign_decompress
from .error_feedback import ErrorFeedback
from .fused import quantize_pack, unpack_dequantize
from .gradient_codec import BlockSignCodec, TopKCodec
from .gradient_wire import (GRAD_HEADER_BYTES, GradHeader, decode_sign_message, decode_topk_message,
                            encode_sign_message, encode_topk_message, read_grad_header, sign_message_nbytes,
                            topk_message_nbytes)
from .noise import noise_key, uniform_noise
from .packing import pack_bits, packed_nbytes, unpack_bits
from .quantizer import Quantized, dequantize, quantize
from .topk import Sparse, topk_compress, topk_decompress
from .uint_packing import index_bits, pack_uints, unpack_uints
from .warmup import warm_up, warm_up_for
from .wire import HEADER_BYTES, Header, decode_message, encode_message, message_nbytes, read_header

__all__ = [
    "BlockSignCodec",
    "GRAD_HEADER_BYTES",
    "GradHeader",
    "HEADER_BYTES",
    "ErrorFeedback",
    "Header",
    "Quantized",
    "Sparse",
    "TopKCodec",
    "blocksign_compress",
    "blocksign_decompress",
    "decode_message",
    "decode_sign_message",
    "decode_topk_message",
    "dequantize",
    "encode_message",
    "encode_sign_message",
    "encode_topk_message",
    "index_bits",
    "message_nbytes",
    "noise_key",
    "pack_bits",
    "pack_uints",
    "packed_nbytes",
    "quantize",
    "quantize_pack",
    "read_grad_header",
    "read_header",
    "select_backend",
    "sign_message_nbytes",
    "topk_compress",
    "topk_decompress",
    "topk_message_nbytes",
    "uniform_noise",
    "unpack_bits",
    "unpack_dequantize",
    "unpack_uints",
    "warm_up",
    "warm_up_for",
]
