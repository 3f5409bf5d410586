"""Architecture settings of a GauGAN model; names follow the reference implementation's options."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

UPSAMPLINGS = {"normal": 5, "more": 6, "most": 7}


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

    def __post_init__(self) -> None:
        if self.num_upsampling_layers not in UPSAMPLINGS:
            raise ValueError(f"num_upsampling_layers must be one of {sorted(UPSAMPLINGS)}, got {self.num_upsampling_layers!r}")
        if self.label_nc < 1:
            raise ValueError(f"label_nc must be positive, got {self.label_nc}")

    @property
    def semantic_nc(self) -> int:
        """Channels of the encoded label map: classes, dontcare, instance edges."""
        return self.label_nc + int(self.contain_dontcare_label) + int(self.use_instance)

    @property
    def num_upsamplings(self) -> int:
        return UPSAMPLINGS[self.num_upsampling_layers]

    @property
    def latent_hw(self) -> tuple[int, int]:
        """(height, width) of the generator's first feature map at the configured crop."""
        sw = self.crop_size // (2 ** self.num_upsamplings)
        return max(1, round(sw / self.aspect_ratio)), max(1, sw)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GauGANConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown GauGAN config keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)


def reference_setting(name: str, use_vae: bool = False) -> GauGANConfig:
    """The reference implementation's defaults for its published checkpoints."""
    settings = {
        "ade20k": dict(label_nc=150, contain_dontcare_label=True, use_instance=False),
        "coco-stuff": dict(label_nc=182, contain_dontcare_label=True, use_instance=True),
        "cityscapes": dict(label_nc=35, contain_dontcare_label=False, use_instance=True, crop_size=512, aspect_ratio=2.0),
    }
    if name not in settings:
        raise ValueError(f"unknown reference setting {name!r}; choose one of {sorted(settings)}")
    return GauGANConfig(**settings[name], use_vae=use_vae)


def parameter_counts(config: GauGANConfig) -> dict[str, int]:
    from gaugan.discriminator import MultiscaleDiscriminator
    from gaugan.encoder import ConvEncoder
    from gaugan.generator import SPADEGenerator

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    counts = {"G": count(SPADEGenerator(config)), "D": count(MultiscaleDiscriminator(config))}
    if config.use_vae:
        counts["E"] = count(ConvEncoder(config))
    return counts
