"""Vision parts: the VQ image tokenizer (pixels <-> discrete codes) and its training.

    from utamoe.vision import TokenizerConfig, VQTokenizer, train_tokenizer
"""

from utamoe.vision.tokenizer import (
    L2VectorQuantizer,
    TokenizerConfig,
    TokenizerLoadError,
    VQTokenizer,
)
from utamoe.vision.tokenizer_train import (
    codebook_usage,
    evaluate_tokenizer,
    format_report,
    train_tokenizer,
)

__all__ = [
    "L2VectorQuantizer",
    "TokenizerConfig",
    "TokenizerLoadError",
    "VQTokenizer",
    "codebook_usage",
    "evaluate_tokenizer",
    "format_report",
    "train_tokenizer",
]
