"""LDPC reconciliation internals: stored QC mother codes, the batched layered decoder, rate adaptation."""

from .codes import QCCode, available_codes, load_code
from .decoder import BatchDecoder, channel_llr, decode_batch

__all__ = ["BatchDecoder", "QCCode", "available_codes", "channel_llr", "decode_batch", "load_code"]
