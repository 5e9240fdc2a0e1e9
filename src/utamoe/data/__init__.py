"""Data: the on-disk dataset format and its loader (`formats`, `check`), conversations, samples to
token sequences and batches (`sequences`), and sequence packing (`packing`: several samples per
row, the one meaning of "packing"). Which benchmark a dataset belongs to comes from its manifest
(`formats.find_benchmark`, utamoe.benchmarks); the built-in benchmark's generator is
utamoe.shapes.

`formats`, `check` and `conversations` import no torch: datasets are plain samples (text +
uint8 arrays), so they can be generated, checked and scored without the model stack.
"""

from utamoe.data.formats import (
    DataFormatError,
    LoadReport,
    Sample,
    load_dataset,
    load_split,
    write_split,
)

__all__ = [
    "DataFormatError",
    "LoadReport",
    "Sample",
    "load_dataset",
    "load_split",
    "write_split",
]
