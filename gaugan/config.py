"""Architecture settings of a GauGAN model; names follow the reference implementation's options."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from gaugan.errors import ConfigError

UPSAMPLINGS = {"normal": 5, "more": 6, "most": 7}
# [spectral]<batch|syncbatch|instance|none> for D and E
NORM_DE_PATTERN = re.compile(r"^(spectral)?(batch|syncbatch|instance|none)?$")
GENERATOR_FAMILIES = ("spade", "pix2pixhd")  # model.netG
# pix2pixhd's own options (the reference's --resnet_*), which change its weights
PIX2PIXHD_OPTIONS = ("resnet_n_downsample", "resnet_n_blocks", "resnet_kernel_size", "resnet_initial_kernel_size")


def size_hw(width: int, aspect_ratio: float = 1.0) -> tuple[int, int]:
    """(H, W) of an image ``width`` pixels wide at ``aspect_ratio`` = width / height."""
    return max(1, round(width / aspect_ratio)), int(width)


def parse_norm_G(norm_G: str) -> tuple[bool, bool, str, int]:
    """'spectralspadesyncbatch3x3' -> (spectral=True, spade=True, 'syncbatch', kernel 3).

    A norm_G without 'spade' ('instance', 'spectralbatch', ...) builds the same generator with a
    plain parameter-free norm and no modulation: the ablation of the paper's Sec. 3.
    """
    spectral = norm_G.startswith("spectral")
    rest = norm_G[len("spectral") :] if spectral else norm_G
    match = re.fullmatch(r"spade(batch|syncbatch|instance)(\d)x(\d)", rest)
    if match:
        ks = int(match.group(2))
        if ks != int(match.group(3)) or ks % 2 == 0:
            raise ConfigError(f"norm_G {norm_G!r}: the SPADE kernel must be square and odd (e.g. 3x3)")
        return spectral, True, match.group(1), ks
    if rest in ("batch", "syncbatch", "instance"):
        return spectral, False, rest, 0
    raise ConfigError(
        f"norm_G {norm_G!r} is not [spectral]spade<batch|syncbatch|instance><k>x<k> "
        "(e.g. spectralspadesyncbatch3x3) or a plain [spectral]<batch|syncbatch|instance>"
    )


@dataclass(frozen=True)
class GauGANConfig:
    label_nc: int
    contain_dontcare_label: bool = True
    use_instance: bool = False
    ngf: int = 64
    ndf: int = 64
    nef: int = 64
    z_dim: int = 256
    spade_hidden: int = 128
    use_vae: bool = False
    num_upsampling_layers: str = "normal"
    norm_G: str = "spectralspadesyncbatch3x3"
    norm_D: str = "spectralinstance"
    norm_E: str = "spectralinstance"
    num_D: int = 2
    n_layers_D: int = 4
    crop_size: int = 256
    aspect_ratio: float = 1.0
    # the generator family: "spade" (GauGAN) or "pix2pixhd" (its baseline, gaugan/pix2pixhd.py), and
    # pix2pixhd's options, named as the reference's (--netG, --resnet_*)
    netG: str = "spade"
    resnet_n_downsample: int = 4
    resnet_n_blocks: int = 9
    resnet_kernel_size: int = 3
    resnet_initial_kernel_size: int = 7

    def __post_init__(self) -> None:
        problems = self._family_problems()
        if self.num_upsampling_layers not in UPSAMPLINGS:
            problems.append(
                f"num_upsampling_layers must be one of {sorted(UPSAMPLINGS)}, got {self.num_upsampling_layers!r}"
            )
        for name in ("label_nc", "ngf", "ndf", "nef", "z_dim", "spade_hidden", "num_D", "n_layers_D", "crop_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        try:
            parse_norm_G(str(self.norm_G))
        except ConfigError as err:
            problems.append(str(err))
        for name in ("norm_D", "norm_E"):
            if not NORM_DE_PATTERN.match(str(getattr(self, name))):
                problems.append(f"{name} {getattr(self, name)!r} is not [spectral]<batch|syncbatch|instance|none>")
        if not self.aspect_ratio > 0:
            problems.append(f"aspect_ratio must be positive, got {self.aspect_ratio!r}")
        if self.num_upsampling_layers == "most" and isinstance(self.ngf, int) and self.ngf % 2:
            problems.append(
                f"num_upsampling_layers 'most' halves ngf in its last block: ngf must be even, got {self.ngf}"
            )
        if problems:
            raise ConfigError("invalid GauGAN config: " + "; ".join(problems))

    def _family_problems(self) -> list[str]:
        """What the generator family refuses: a pix2pixhd generator has no SPADE and no style code."""
        if self.netG not in GENERATOR_FAMILIES:
            return [f"netG must be one of {list(GENERATOR_FAMILIES)}, got {self.netG!r}"]
        if self.netG == "spade":
            return []
        problems = []
        for name in PIX2PIXHD_OPTIONS:
            value = getattr(self, name)
            least = 0 if name == "resnet_n_blocks" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                problems.append(f"{name} must be an integer >= {least}, got {value!r}")
            elif name.endswith("kernel_size") and value % 2 == 0:
                problems.append(f"{name} must be odd (the convolutions keep the size), got {value}")
        try:
            if parse_norm_G(str(self.norm_G))[1]:
                problems.append(
                    f"norm_G {self.norm_G!r} is a SPADE norm, which the pix2pixhd generator does not have: "
                    "use a plain [spectral]<instance|batch|syncbatch> (e.g. spectralinstance)"
                )
        except ConfigError:
            pass  # named below
        if self.use_vae is True:
            problems.append("use_vae: the pix2pixhd generator takes no style code; set use_vae false")
        if not problems and isinstance(self.crop_size, int) and self.aspect_ratio > 0:
            multiple = 2**self.resnet_n_downsample
            h, w = size_hw(self.crop_size, self.aspect_ratio)
            if h % multiple or w % multiple:
                problems.append(
                    f"the crop ({h}x{w}: crop_size {self.crop_size}, aspect_ratio {self.aspect_ratio}) is not a "
                    f"multiple of {multiple}, which resnet_n_downsample {self.resnet_n_downsample} needs"
                )
        return problems

    @property
    def semantic_nc(self) -> int:
        """Channels of the encoded label map: classes, dontcare, instance edges."""
        return self.label_nc + int(self.contain_dontcare_label) + int(self.use_instance)

    @property
    def num_upsamplings(self) -> int:
        """How many times the generator doubles its first feature map (5, 6 or 7)."""
        return UPSAMPLINGS[self.num_upsampling_layers]

    @property
    def latent_hw(self) -> tuple[int, int]:
        """(sh, sw): the first feature map's size at the configured crop, as the reference computes it."""
        sw = self.crop_size // (2**self.num_upsamplings)
        return max(1, round(sw / self.aspect_ratio)), max(1, sw)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GauGANConfig:
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown GauGAN config keys {unknown}; known keys: {known}")
        if "label_nc" not in data:
            raise ConfigError("GauGAN config needs label_nc (the number of classes)")
        return cls(**data)


# The reference's dataset modes (NVlabs/SPADE data/*_dataset.py modify_commandline_options) on top of
# its option defaults; the key/shape layouts in shared/reference/spade_checkpoint_keys.md come from these.
REFERENCE_SETTINGS: dict[str, dict[str, Any]] = {
    # values 0..150 with 0 = "other": the reference's label_nc 150 plus the dontcare channel that
    # value 150 shares, i.e. 151 channels, one per value, and no separate dontcare
    "ade20k": dict(label_nc=151, contain_dontcare_label=False, use_instance=False),
    "coco-stuff": dict(label_nc=182, contain_dontcare_label=True, use_instance=True),
    "cityscapes": dict(
        label_nc=35,
        contain_dontcare_label=False,
        use_instance=True,
        crop_size=512,
        aspect_ratio=2.0,
        num_upsampling_layers="more",
    ),
}


def reference_setting(name: str, use_vae: bool = False) -> GauGANConfig:
    """The reference implementation's settings for its published checkpoints."""
    if name not in REFERENCE_SETTINGS:
        raise ConfigError(f"unknown reference setting {name!r}; choose one of {sorted(REFERENCE_SETTINGS)}")
    return GauGANConfig(**REFERENCE_SETTINGS[name], use_vae=use_vae)
