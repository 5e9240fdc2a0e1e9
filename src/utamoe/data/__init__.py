"""Data: the on-disk dataset format (`formats`) and the built-in ShapesWorld benchmark (`shapes`).

Nothing here imports torch: datasets are plain samples (text + uint8 arrays), so
they can be generated, checked and scored without the model stack.
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
