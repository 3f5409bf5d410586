"""Built-in class tables of the reference's three datasets, and ``data.classes`` resolution.

``data.classes`` (or ``ingest --classes``) picks the class table of a prepared dataset:

- ``null``: the format's own source (labels.txt, objectInfo150, classes.json/.txt; Cityscapes and
  the demo carry theirs built in);
- ``coco-stuff`` | ``ade20k`` | ``cityscapes``: the tables below, so a dataroot prepared for the
  reference implementation ingests as it is (``ingest --format spade --classes coco-stuff``);
- a path to a class file: ``classes.json`` (a prepared dataset's, or the ``folder`` format's),
  ``classes.txt`` (one ``name`` or ``name,r,g,b`` per line), or COCO-Stuff's ``labels.txt``.

The tables, written from the datasets' published facts:

- ``coco-stuff``: 182 classes, label value = COCO JSON id - 1 (the stuffthingmaps values), names
  from COCO-Stuff's ``labels.txt`` (the 11 thing ids COCO dropped keep their names and channels),
  255 = unlabeled (the dontcare channel, as the reference's coco mode). Colours: the PASCAL VOC
  bit-interleaved colour map of value + 1, which is how the reference's visualiser draws COCO-Stuff
  label maps; every class gets its own colour and black stays free for unlabeled.
- ``ade20k``: 151 classes: 0 = "other" (unannotated pixels) and 1..150 the SceneParsing classes
  (first name of each ``objectInfo150`` entry), no dontcare channel: 151 input channels, raw value v
  on channel v, exactly what the reference ADE20K generators were trained on (its label_nc 150 plus
  the dontcare channel that value 150 shares). Colours: the SceneParsing benchmark's 150-colour
  palette (``color150``), black for "other". 0 is left out of mIoU (the benchmark's protocol).
- ``cityscapes``: the 35 label ids of cityscapesScripts' ``labels.py`` (ids 0..33 as published;
  index 34 is "license plate", published with id -1 and never written into ``*_labelIds.png``,
  which is why the reference's label_nc is 35), with their colours, no dontcare channel; the
  classes whose ``ignoreInEval`` is set are left out of mIoU, as in the benchmark (19 classes scored).

Colours are the published ones, shared where the datasets share them (ADE20K's road and skyscraper,
Cityscapes' five black void classes, pole/polegroup, car/license plate).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from gaugan.classes import ClassTable
from pipeline.datasets.common import class_table, read_class_path
from pipeline.errors import IngestError

BUILTIN = ("coco-stuff", "ade20k", "cityscapes")

COCO_STUFF_NAMES = (
    # things: JSON ids 1..91 (12, 26, 29, 30, 45, 66, 68, 69, 71, 83 and 91 have no annotations)
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella", "shoe", "eye glasses",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window", "desk",
    "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster",
    "sink", "refrigerator", "blender", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush", "hair brush",
    # stuff: JSON ids 92..182
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel",
    "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip

ADE20K_NAMES = (
    "other",
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door",
    "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill",
    "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight",
    "booth", "television", "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator",
    "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy",
    "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
    "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal",
    "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light",
    "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)  # fmt: skip

# The SceneParsing palette (color150) of classes 1..150, as RGB hex, ten per line.
ADE20K_PALETTE = " ".join(
    (
        "787878 b47878 06e6e6 503232 04c803 787850 8c8c8c cc05ff e6e6e6 04fa07",
        "e005ff ebff07 96053d 787846 08ff33 ff0652 8fff8c ccff04 ff3307 cc4603",
        "0066c8 3de6fa ff0633 0b66ff ff0747 ff09e0 0907e6 dcdcdc ff095c 7009ff",
        "08ffd6 07ffe0 ffb806 0aff47 ff290a 07ffff e0ff08 6608ff ff3d06 ffc207",
        "ff7a08 00ff14 ff0829 ff0599 0633ff eb0cff a09614 00a3ff 8c8c8c fa0a0f",
        "14ff00 1fff00 ff1f00 ffe000 99ff00 0000ff ff4700 00ebff 00adff 1f00ff",
        "0bc8c8 ff5200 00fff5 003dff 00ff70 00ff85 ff0000 ffa300 ff6600 c2ff00",
        "008fff 33ff00 0052ff 00ff29 00ffad 0a00ff adff00 00ff99 ff5c00 ff00ff",
        "ff00f5 ff0066 ffad00 ff0014 ffb8b8 001fff 00ff3d 0047ff ff00cc 00ffc2",
        "00ff52 000aff 0070ff 3300ff 00c2ff 007aff 00ffa3 ff9900 00ff0a ff7000",
        "8fff00 5200ff a3ff00 ffeb00 08b8aa 8500ff 00ff5c b800ff ff001f 00b8ff",
        "00d6ff ff0070 5cff00 00e0ff 70e0ff 46b8a0 a300ff 9900ff 47ff00 ff00a3",
        "ffcc00 ff008f 00ffeb 85ff00 ff00eb f500ff ff007a fff500 0abed4 d6ff00",
        "00ccff 1400ff ffff00 0099ff 0029ff 00ffcc 2900ff 29ff00 ad00ff 00f5ff",
        "4700ff 7a00ff 00ffb8 005cff b8ff00 0085ff ffd600 19c2c2 66ff00 5c00ff",
    )
).split()

# cityscapesScripts labels.py: (name, colour, hasInstances, ignoreInEval) for label ids 0..33, then
# "license plate" (published with id -1) at index 34.
CITYSCAPES_LABELS = (
    ("unlabeled", (0, 0, 0), False, True),
    ("ego vehicle", (0, 0, 0), False, True),
    ("rectification border", (0, 0, 0), False, True),
    ("out of roi", (0, 0, 0), False, True),
    ("static", (0, 0, 0), False, True),
    ("dynamic", (111, 74, 0), False, True),
    ("ground", (81, 0, 81), False, True),
    ("road", (128, 64, 128), False, False),
    ("sidewalk", (244, 35, 232), False, False),
    ("parking", (250, 170, 160), False, True),
    ("rail track", (230, 150, 140), False, True),
    ("building", (70, 70, 70), False, False),
    ("wall", (102, 102, 156), False, False),
    ("fence", (190, 153, 153), False, False),
    ("guard rail", (180, 165, 180), False, True),
    ("bridge", (150, 100, 100), False, True),
    ("tunnel", (150, 120, 90), False, True),
    ("pole", (153, 153, 153), False, False),
    ("polegroup", (153, 153, 153), False, True),
    ("traffic light", (250, 170, 30), False, False),
    ("traffic sign", (220, 220, 0), False, False),
    ("vegetation", (107, 142, 35), False, False),
    ("terrain", (152, 251, 152), False, False),
    ("sky", (70, 130, 180), False, False),
    ("person", (220, 20, 60), True, False),
    ("rider", (255, 0, 0), True, False),
    ("car", (0, 0, 142), True, False),
    ("truck", (0, 0, 70), True, False),
    ("bus", (0, 60, 100), True, False),
    ("caravan", (0, 0, 90), True, True),
    ("trailer", (0, 0, 110), True, True),
    ("train", (0, 80, 100), True, False),
    ("motorcycle", (0, 0, 230), True, False),
    ("bicycle", (119, 11, 32), True, False),
    ("license plate", (0, 0, 142), False, True),
)

NOTES = {
    "coco-stuff": (
        "label value = COCO JSON id - 1 (the stuffthingmaps values), 255 = unlabeled (dontcare channel); "
        "the 11 thing ids COCO dropped keep their channels"
    ),
    "ade20k": (
        "label 0 is ADE20K's 'other' (unannotated) as a class of its own and 1..150 are the SceneParsing "
        "classes: 151 input channels, no dontcare channel, as the reference ADE20K generators were trained "
        "(its label_nc 150 plus the dontcare channel that value 150 shares); 0 is left out of mIoU ('ignore')"
    ),
    "cityscapes": (
        "the 35 Cityscapes label ids (labelIds.png values 0..33; 34 'license plate' is never written there), "
        "no dontcare channel, as the reference's cityscapes mode; classes with ignoreInEval are left out of mIoU"
    ),
}


def voc_color(value: int) -> tuple[int, int, int]:
    """The PASCAL VOC colour map: the bits of ``value`` spread over R, G and B from the top bit down."""
    r = g = b = 0
    for shift in range(7, -1, -1):
        r |= (value & 1) << shift
        g |= ((value >> 1) & 1) << shift
        b |= ((value >> 2) & 1) << shift
        value >>= 3
    return r, g, b


def cityscapes_instance_classes() -> tuple[int, ...]:
    """Label ids whose pixels carry instance ids (labelId * 1000 + k) in ``*_instanceIds.png``."""
    return tuple(i for i, row in enumerate(CITYSCAPES_LABELS) if row[2])


def builtin_table(name: str, has_instances: bool | None = None) -> ClassTable:
    """The built-in table ``name`` (one of :data:`BUILTIN`); ``has_instances`` as the data has them
    (None: as the reference trains that dataset)."""
    ignore: tuple[int, ...] | None
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    if name == "coco-stuff":
        names, colors = COCO_STUFF_NAMES, tuple(voc_color(v + 1) for v in range(len(COCO_STUFF_NAMES)))
        dontcare, inst, ignore = True, True if has_instances is None else has_instances, None
    elif name == "ade20k":
        names = ADE20K_NAMES
        colors = ((0, 0, 0),) + tuple((int(h[:2], 16), int(h[2:4], 16), int(h[4:], 16)) for h in ADE20K_PALETTE)
        dontcare, inst, ignore = False, bool(has_instances), (0,)
    elif name == "cityscapes":
        names = tuple(row[0] for row in CITYSCAPES_LABELS)
        colors = tuple(row[1] for row in CITYSCAPES_LABELS)
        dontcare, inst = False, True if has_instances is None else has_instances
        ignore = tuple(i for i, row in enumerate(CITYSCAPES_LABELS) if row[3])
    else:
        raise IngestError(f"unknown built-in class table {name!r}; choose one of {', '.join(BUILTIN)} or give a file")
    return ClassTable(
        dataset=name,
        names=names,
        colors=colors,
        contain_dontcare_label=dontcare,
        has_instances=inst,
        ignore=ignore,
        notes=NOTES[name],
    )


def read_classes_file(path: Path) -> ClassTable:
    """A class file -> its table: classes.json (a prepared dataset's, or the folder format's),
    COCO-Stuff's labels.txt, or classes.txt (``name`` or ``name,r,g,b`` per line)."""
    if not path.is_file():
        raise IngestError(
            f"{path}: class file not found (data.classes / --classes: {', '.join(BUILTIN)}, null, or a file)"
        )
    if path.suffix == ".json":
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise IngestError(f"{path}: not valid JSON ({err})") from None
        if isinstance(doc, dict) and "label_nc" in doc and "format_version" in doc:
            return ClassTable.from_dict(doc, str(path))  # a prepared dataset's classes.json, kept whole
    if path.name == "labels.txt":
        from pipeline.datasets.coco_stuff import read_labels_txt

        return replace(builtin_table("coco-stuff"), names=tuple(e["name"] for e in read_labels_txt(path)))
    entries, options = read_class_path(path)
    return class_table(
        str(options.get("dataset", path.stem)),
        entries,
        has_instances=False,
        contain_dontcare_label=bool(options.get("contain_dontcare_label", True)),
    )


def resolve_classes(spec: str | None, root: Path = Path(".")) -> ClassTable | None:
    """``data.classes`` -> the table to use, or None for the format's own source. Relative paths
    are relative to ``root`` (the project)."""
    if spec is None:
        return None
    if spec in BUILTIN:
        return builtin_table(spec)
    path = Path(spec)
    return read_classes_file(path if path.is_absolute() else Path(root) / path)
