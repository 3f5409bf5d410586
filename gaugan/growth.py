"""Label-channel surgery: a trained model's networks grown for a class table that extends its own.

A model's label input is ``[class 0 .. class N-1, dontcare?, instance edge?]`` (gaugan.encoding),
and D's input is that followed by the 3 image channels. Three kinds of layers read it: the
generator's first convolution ``fc`` (models without a style encoder; with one, ``fc`` is a linear
layer on the style code and reads no labels), every SPADE's label convolution ``mlp_shared.0``, and
the first convolution of each discriminator scale (``discriminator_<i>.model0.0``). Growing a layer
gives it the new number of input channels (pix2pixHD's generator reads it in its first convolution
``model.1.0`` alone; under spectral norm its power-iteration vector grows with it): the parent's
channels move to their new positions (the dontcare and edge channels after the new classes) with
their weights, and the new classes' channels start at zero. A one-hot map of the parent's classes
then meets exactly the parent's weights, so the grown model computes the parent's function on it
(up to float summation order).
"""

from __future__ import annotations

import torch

from gaugan.choices import CLASS_REMAPS
from gaugan.classes import ClassTable
from gaugan.config import GauGANConfig
from gaugan.errors import CheckpointError


def class_index_map(parent: ClassTable, child: ClassTable, remap: str, source: str) -> list[int]:
    """The child's index of each parent class.

    ``strict``: the child's table must start with the parent's names in the parent's order (new
    classes appended); a renamed or reordered class is refused naming its index and both names.
    ``by_name``: each parent class goes to the child's class of the same name, wherever it is.
    """
    if remap not in CLASS_REMAPS:
        raise CheckpointError(f"class remap must be one of {CLASS_REMAPS}, got {remap!r}")
    if remap == "by_name":
        where: dict[str, int] = {}
        for i, name in enumerate(child.names):
            where.setdefault(name, i)
        missing = [f"{i} {name!r}" for i, name in enumerate(parent.names) if name not in where]
        if missing:
            raise CheckpointError(
                f"{source}: the parent's classes {', '.join(missing[:5])} are not in the data's class table "
                f"({child.describe()}); a fine-tune may add classes, not remove them"
            )
        return [where[name] for name in parent.names]
    for i, name in enumerate(parent.names):
        if i >= child.label_nc:
            raise CheckpointError(
                f"{source}: the parent has class {i} {name!r} but the data's class table ends at {child.label_nc - 1} "
                f"({child.describe()}); a fine-tune may add classes, not remove them"
            )
        if child.names[i] != name:
            raise CheckpointError(
                f"{source}: class {i} is {name!r} in the parent and {child.names[i]!r} in the data: a renamed or "
                "reordered class table; keep the parent's classes at their indices (new ones appended), or "
                "remap by name (class_remap: by_name)"
            )
    return list(range(parent.label_nc))


def semantic_index_map(parent: GauGANConfig, child: GauGANConfig, class_map: list[int]) -> list[int]:
    """The child's label-input channel of each parent label-input channel (classes, dontcare, edge)."""
    index = list(class_map)
    if parent.contain_dontcare_label:
        index.append(child.label_nc)
    if parent.use_instance:
        index.append(child.label_nc + int(child.contain_dontcare_label))
    return index


def grow_input_channels(weight: torch.Tensor, index: list[int], channels: int, key: str) -> torch.Tensor:
    """``weight`` [out, in, ...] -> [out, channels, ...]: input channel i at ``index[i]``, the others zero."""
    if weight.dim() < 2 or weight.shape[1] != len(index):
        raise CheckpointError(
            f"{key}: takes {weight.shape[1] if weight.dim() > 1 else '?'} input channels, the parent's "
            f"label layout has {len(index)}"
        )
    grown = weight.new_zeros((weight.shape[0], channels, *weight.shape[2:]))
    grown[:, index] = weight
    return grown


def is_generator_label_key(key: str) -> bool:
    """G's label convolutions (also under ``netG.``): SPADE's ``fc`` (when a convolution) and every
    ``mlp_shared.0``; pix2pixHD's first convolution ``model.1.0`` (``weight``, or ``weight_orig`` under
    spectral norm)."""
    parts = key.split(".")
    if parts[0] == "netG":
        parts = parts[1:]
    if parts[-3:] == ["mlp_shared", "0", "weight"] or parts == ["fc", "weight"]:
        return True
    return parts in (["model", "1", "0", "weight"], ["model", "1", "0", "weight_orig"])


def grow_power_vector(v: torch.Tensor, index: list[int], channels: int, key: str) -> torch.Tensor:
    """Spectral norm's right singular vector of a grown convolution: [in * k * k] -> [channels * k * k],
    the parent's entries at their channels' new places, zeros for the new channels (the new weights
    are zero, so this is the vector the power iteration would give)."""
    if v.numel() % len(index):
        raise CheckpointError(f"{key}: {v.numel()} entries do not split over {len(index)} label channels")
    rows = v.view(len(index), -1)
    grown = v.new_zeros((channels, rows.shape[1]))
    grown[index] = rows
    return grown.flatten()


def is_discriminator_label_key(key: str) -> bool:
    """The first convolution of each discriminator scale."""
    parts = key.split(".")
    return len(parts) == 4 and parts[0].startswith("discriminator_") and parts[1:] == ["model0", "0", "weight"]


def grow_state(state: dict, index: list[int], channels: int, discriminator: bool = False) -> dict:
    """A copy of a G (or GeneratorModel/EMA) or D state dict with its label convolutions grown.

    ``index``/``channels``: the label-input map (:func:`semantic_index_map`) and the child's number of
    label channels; for D the 3 image channels follow the label channels on both sides.
    """
    if discriminator:
        index = list(index) + [channels + k for k in range(3)]
        channels += 3
    label_key = is_discriminator_label_key if discriminator else is_generator_label_key
    grown = {}
    for k, v in state.items():
        if label_key(k) and v.dim() == 4:
            v = grow_input_channels(v, index, channels, k)
        elif k.endswith(".weight_v") and label_key(k[: -len("_v")] + "_orig"):
            v = grow_power_vector(v, index, channels, k)
        grown[k] = v
    return grown


def grow_moments(optimizer_state: dict, names: list[str], index: list[int], channels: int, discriminator: bool) -> dict:
    """Adam's per-parameter moments grown like their parameters (``names``: the optimizer's parameters
    in order, as ``named_parameters`` lists them); the new channels' moments start at zero."""
    state = {}
    for i, values in optimizer_state["state"].items():
        name = names[int(i)]
        grown = grow_state({name: values["exp_avg"]}, index, channels, discriminator)[name]
        if grown is values["exp_avg"]:
            state[i] = values
            continue
        state[i] = {
            **values,
            "exp_avg": grown,
            "exp_avg_sq": grow_state({name: values["exp_avg_sq"]}, index, channels, discriminator)[name],
        }
    return {**optimizer_state, "state": state}
