"""GF(2) polynomial arithmetic on packed words: carry-less multiply, Karatsuba, NTT fallback.

Bit order: bit ``i`` is ``(words[i // 64] >> (i % 64)) & 1`` (see :mod:`.bits`). The PCLMULQDQ
path (:mod:`.karatsuba`, :mod:`.toeplitz`) is used when the CPU has the instruction
(:func:`has_pclmul`); otherwise the exact NTT in :mod:`.ntt` gives the same output.
"""

from .bits import mask_tail, pack_bits, unpack_bits, words_for
from .intrinsics import has_pclmul, has_vpclmul

__all__ = [
    "has_pclmul",
    "has_vpclmul",
    "mask_tail",
    "pack_bits",
    "unpack_bits",
    "words_for",
]
