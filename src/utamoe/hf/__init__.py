"""Hugging Face and GGUF loading: the backbones and vision towers the unified model builds on.

    from utamoe.hf.parts import HFPart, build_backbone, build_vision
    from utamoe.hf.gguf import load_gguf_causal_lm, load_gguf_tokenizer   # the `gguf` extra
"""
