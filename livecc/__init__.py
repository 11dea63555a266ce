"""livecc: fast training and real-time streaming of video LLMs on ASR words interleaved with frames.

Importing livecc makes ``attn_implementation="livecc"`` known to transformers, so
``AutoModelForImageTextToText.from_pretrained(path, attn_implementation="livecc")`` works as is;
:func:`patch` switches an already loaded model to livecc's attention, loss and fused ops.
"""

from .kernels import paged_decode_attention, preprocess_frames, text_only_linear_cross_entropy, varlen_attention
from .models import load_model, patch, register, text_only_causal_lm_loss

register()

__version__ = "0.1.0"
__all__ = [
    "__version__",
    "load_model",
    "paged_decode_attention",
    "patch",
    "preprocess_frames",
    "text_only_causal_lm_loss",
    "text_only_linear_cross_entropy",
    "varlen_attention",
]
