"""Vision: the image processor and image-file reader, understanding encoders (and the registry of
encoder kinds), aligners, MoVE's mixture with its deformable transform, and the VQ image
tokenizer (pixels <-> discrete codes). Training the tokenizer is utamoe.train.codec.

    from utamoe.vision import TokenizerConfig, VQTokenizer
    from utamoe.vision.encoders import register_encoder_kind, EncoderKind
"""

from utamoe.vision.tokenizer import (
    L2VectorQuantizer,
    TokenizerConfig,
    TokenizerLoadError,
    VQTokenizer,
)

__all__ = ["L2VectorQuantizer", "TokenizerConfig", "TokenizerLoadError", "VQTokenizer"]
