"""utamoe: unified multimodal autoregressive models with task-aware mixture-of-experts.

One transformer understands images (caption, VQA, grounding) and generates them
(text to image, editing); TA-MoE layers inside it give each task group its own
experts so that the two objectives stop fighting over the same FFN weights.
"""

__version__ = "0.1.0"

from utamoe._runtime import configure_cpu as _configure_cpu

_configure_cpu()  # CPU numerics for every entry point, before torch spawns threads
