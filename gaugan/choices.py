"""The values of the library's string-valued settings, spelled once: as ``Literal`` types, which
``pipeline.params`` annotates its settings with (pydantic validates them; mypy checks their use),
and as tuples, which the library checks its arguments against. Torch-free: the CLI and ingest
validate params.yaml without importing torch.
"""

from typing import Literal, get_args

# How gaugan.transforms.Geometry resizes (and crops) a sample: the reference's --preprocess_mode.
PreprocessMode = Literal[
    "resize_and_crop",
    "scale_width_and_crop",
    "scale_width",
    "scale_shortside_and_crop",
    "scale_shortside",
    "crop",
    "fixed",
    "none",
]
PREPROCESS_MODES: tuple[PreprocessMode, ...] = get_args(PreprocessMode)

# How a parent model's classes map onto a child's class table (gaugan.growth.class_index_map).
ClassRemap = Literal["strict", "by_name"]
CLASS_REMAPS: tuple[ClassRemap, ...] = get_args(ClassRemap)
