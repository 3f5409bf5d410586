"""Fine-tuning from a parent model (gaugan.parent, gaugan.growth): tiny networks trained a few steps on
CPU, saved as the train stage saves them, loaded into a fresh trainer.

- a class table that gains classes: before any update the grown G gives the parent's images for maps
  of the old classes (max abs difference <= 1e-6) and the grown D the parent's scores (also with a
  style encoder, whose fc reads no labels); the same by name when the classes are reordered
  (class_remap by_name);
- the same table and a ``full`` training state: G, E, D, EMA and the optimizer moments are exactly
  the parent's (state dicts equal), the step counter and the learning-rate schedule start over;
- refusals, one line naming the file and both values: another architecture, a renamed or reordered
  class, a file that is neither a generator nor a training state.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import random_batch, tiny_config, toy_classes, train_options

from gaugan.checkpoint import save_generator, save_train_state
from gaugan.encoding import encode_labels
from gaugan.errors import CheckpointError
from gaugan.parent import read_parent_file, start_from_parent
from gaugan.trainer import NETWORK_PARTS, OPTIMIZER_PARTS, GauGANTrainer

OLD = toy_classes(("sky", "grass", "water", "sand"))
GROWN = toy_classes(("sky", "grass", "water", "sand", "snow", "road"))


def config(classes=OLD, **kw):
    return tiny_config(label_nc=classes.label_nc, use_instance=True, norm_G="spectralspadebatch3x3", **kw)


def batch(cfg, seed: int) -> dict:
    """A random 32x32 training batch (the smallest size the generator takes)."""
    return {k: v[..., :32, :32] for k, v in random_batch(cfg, seed=seed).items()}


def trained(cfg, steps: int = 2, seed: int = 0) -> GauGANTrainer:
    """A trainer after a few steps: weights, EMA, BN statistics and Adam moments all moved (PyTorch's
    default initialisation: outputs far from 0, so that equal outputs say something)."""
    torch.manual_seed(seed)
    trainer = GauGANTrainer(cfg, train_options(ema_decay=0.9, decay_start_step=0, total_steps=10, init_type="none"))
    for step in range(steps):
        trainer.train_step(batch(cfg, step))
    return trainer


def save_both(tmp_path, trainer: GauGANTrainer, classes, full: bool):
    """The generator file (EMA weights) and the training state, as the train stage writes them."""
    netG, netE = trainer.inference_generator()
    save_generator(tmp_path / "generator.pt", netG, netE, trainer.config, classes, {"steps": trainer.step})
    parts = trainer.state_dict(NETWORK_PARTS + (OPTIMIZER_PARTS if full else ()))
    save_train_state(tmp_path / "state.pt", parts, trainer.config, classes, {"steps": trainer.step})
    return tmp_path / "generator.pt", tmp_path / "state.pt"


def fresh(cfg, seed: int = 7, **options) -> GauGANTrainer:
    torch.manual_seed(seed)  # other initial weights than the parent's: every loaded tensor must come from it
    return GauGANTrainer(cfg, train_options(ema_decay=0.9, decay_start_step=0, total_steps=20, **options))


def old_class_maps(n: int = 3):
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, OLD.label_nc, (n, 32, 32), generator=g)
    labels[:, :4] = 255  # dontcare rows
    edges = (torch.rand(n, 1, 32, 32, generator=g) > 0.85).float()
    return labels, edges


def images(cfg_parent, cfg_child, parent_trainer, child_trainer, labels, edges, to_child=None):
    """(parent's images, child's images) of the served generators (EMA, eval) for the same maps."""
    child_labels = labels if to_child is None else torch.where(labels == 255, labels, to_child[labels.clamp(max=3)])
    sem_parent = encode_labels(labels, cfg_parent.label_nc, True, edges)
    sem_child = encode_labels(child_labels, cfg_child.label_nc, True, edges)
    with torch.no_grad():
        a = parent_trainer.inference_generator()[0](sem_parent)
        b = child_trainer.inference_generator()[0](sem_child)
    return a, b, sem_parent, sem_child


def test_a_grown_class_table_gives_the_parents_images_and_scores_before_any_update(tmp_path):
    parent = trained(config())
    _, state = save_both(tmp_path, parent, OLD, full=True)
    child_cfg = config(GROWN)
    child = fresh(child_cfg)
    warnings = start_from_parent(child, read_parent_file(state), GROWN, "strict", moments=True)
    assert warnings == []
    labels, edges = old_class_maps()
    a, b, sem_a, sem_b = images(config(), child_cfg, parent, child, labels, edges)
    assert (a - b).abs().max().item() <= 1e-6 and a.std() > 0.01
    # D: the same scores on (map, image) pairs of the old classes
    image = torch.rand(labels.shape[0], 3, 32, 32) * 2 - 1
    parent.netD.eval(), child.netD.eval()
    with torch.no_grad():
        da = parent.netD(torch.cat([sem_a, image], 1))
        db = child.netD(torch.cat([sem_b, image], 1))
    for scale_a, scale_b in zip(da, db, strict=True):
        assert (scale_a[-1] - scale_b[-1]).abs().max().item() <= 1e-6 and scale_a[-1].std() > 0.01
    # the new classes' channels start at zero, the dontcare and edge channels moved behind them
    fc_old, fc_new = parent.netG.fc.weight.detach(), child.netG.fc.weight.detach()
    assert fc_new.shape[1] == GROWN.label_nc + 2 and torch.equal(fc_new[:, 4:6], torch.zeros_like(fc_new[:, 4:6]))
    assert torch.equal(fc_new[:, 6:8], fc_old[:, 4:6]) and torch.equal(fc_new[:, :4], fc_old[:, :4])
    shared = child.netG.up_1.norm_0.mlp_shared[0].weight.detach()
    assert shared.shape[1] == 8 and not shared[:, 4:6].any()
    # the Adam moments of the grown weights grew with them (zero for the new channels) and training goes on
    moments = child.opt_G.state[child.netG.fc.weight]["exp_avg"]
    assert moments.shape == fc_new.shape and not moments[:, 4:6].any() and moments[:, :4].abs().sum() > 0
    losses = child.train_step(batch(child_cfg, 9))
    assert child.step == 1 and all(torch.isfinite(torch.tensor(v)) for v in losses.values())


def test_a_style_code_generator_grows_its_spade_label_convolutions_and_keeps_its_linear_fc(tmp_path):
    cfg, child_cfg = config(use_vae=True), config(GROWN, use_vae=True)
    parent = trained(cfg, steps=0)
    generator, _ = save_both(tmp_path, parent, OLD, full=False)
    child = fresh(child_cfg)
    start_from_parent(child, read_parent_file(generator), GROWN)
    assert child.netG.fc.weight.shape == parent.netG.fc.weight.shape  # a linear layer on the style code
    assert child.netG.head_0.norm_0.mlp_shared[0].weight.shape[1] == GROWN.label_nc + 2
    labels, edges = old_class_maps()
    z = torch.randn(labels.shape[0], cfg.z_dim)
    with torch.no_grad():
        a = parent.inference_generator()[0](encode_labels(labels, cfg.label_nc, True, edges), z)
        b = child.inference_generator()[0](encode_labels(labels, child_cfg.label_nc, True, edges), z)
    assert (a - b).abs().max().item() <= 1e-6 and a.std() > 0.01


def test_reordered_classes_are_refused_or_remapped_by_name(tmp_path):
    parent = trained(config(), steps=1)
    generator, _ = save_both(tmp_path, parent, OLD, full=False)
    shuffled = toy_classes(("grass", "sky", "water", "sand", "snow"))
    cfg = config(shuffled)
    with pytest.raises(CheckpointError, match=r"generator\.pt: class 0 is 'sky' in the parent and 'grass' in the data"):
        start_from_parent(fresh(cfg), read_parent_file(generator), shuffled, "strict")
    child = fresh(cfg)
    warnings = start_from_parent(child, read_parent_file(generator), shuffled, "by_name")
    assert any("no discriminator (D)" in w for w in warnings)  # a generator file holds no D
    labels, edges = old_class_maps()
    a, b, _, _ = images(config(), cfg, parent, child, labels, edges, to_child=torch.tensor([1, 0, 2, 3]))
    assert (a - b).abs().max().item() <= 1e-6
    renamed = toy_classes(("sky", "grass", "lake", "sand"))
    with pytest.raises(CheckpointError, match=r"class 2 is 'water' in the parent and 'lake' in the data"):
        start_from_parent(fresh(config(renamed)), read_parent_file(generator), renamed, "strict")
    with pytest.raises(CheckpointError, match=r"the parent's classes 2 'water' are not in the data's class table"):
        start_from_parent(fresh(config(renamed)), read_parent_file(generator), renamed, "by_name")


def test_the_same_table_and_a_full_state_continue_exactly_the_parents_networks(tmp_path):
    cfg = config(use_vae=True)
    parent = trained(cfg)
    _, state = save_both(tmp_path, parent, OLD, full=True)
    child = fresh(cfg)
    assert start_from_parent(child, read_parent_file(state), OLD, "strict", moments=True) == []
    pairs = [(parent.netG, child.netG), (parent.netE, child.netE), (parent.netD, child.netD), (parent.ema, child.ema)]
    for mine, theirs in pairs:
        a, b = mine.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for opt_a, opt_b in ((parent.opt_G, child.opt_G), (parent.opt_D, child.opt_D)):
        sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
        assert sa.keys() == sb.keys() and len(sa) >= 8
        assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in ("step", "exp_avg", "exp_avg_sq"))
    # the step counter and the schedule start over: the parent decayed 2 of 10 steps, the child none
    assert parent.step == 2 and child.step == 0
    lr = child.opt_G.param_groups[0]["lr"]
    assert float(lr) == pytest.approx(child.base_lr["G"]) and float(parent.opt_G.param_groups[0]["lr"]) < float(lr)
    # weights only: the networks, but fresh Adam moments, with a warning when they were asked for
    _, weights_only = save_both(tmp_path, parent, OLD, full=False)
    child = fresh(cfg)
    warnings = start_from_parent(child, read_parent_file(weights_only), OLD, "strict", moments=True)
    assert warnings == [f"{weights_only} holds no optimizer moments (saved with weights only): Adam starts fresh"]
    first_d = "discriminator_0.model0.0.weight"
    assert not child.opt_G.state and torch.equal(child.netD.state_dict()[first_d], parent.netD.state_dict()[first_d])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ngf": 8}, r"ngf is 4 there and 8 here"),
        ({"norm_G": "spectralspadeinstance3x3"}, r"norm_G is 'spectralspadebatch3x3' there and 'spectralspade"),
        ({"num_upsampling_layers": "more"}, r"num_upsampling_layers is 'normal' there and 'more' here"),
        ({"use_vae": True}, r"use_vae is False there and True here"),
        ({"use_instance": False}, r"instance channel \(use_instance\) is True there and False here"),
    ],
)
def test_another_architecture_is_refused_naming_the_file_and_both_values(tmp_path, change, message):
    cfg = config()
    torch.manual_seed(0)
    parent = GauGANTrainer(cfg, train_options())
    generator, _ = save_both(tmp_path, parent, OLD, full=False)
    other = dataclasses.replace(cfg, **change)
    with pytest.raises(CheckpointError, match=rf"^{tmp_path}/generator\.pt: another architecture: {message}"):
        start_from_parent(fresh(other), read_parent_file(generator), OLD)


def test_a_file_that_is_neither_a_generator_nor_a_training_state_is_refused(tmp_path):
    torch.save({"format": "gaugan-segmenter/1"}, tmp_path / "seg.pt")
    with pytest.raises(
        CheckpointError, match=r"seg\.pt: neither a GauGAN generator file .* it holds 'gaugan-segmenter/1'"
    ):
        read_parent_file(tmp_path / "seg.pt")
    torch.save(trained(config(), steps=0).netG.state_dict(), tmp_path / "latest_net_G.pth")
    with pytest.raises(CheckpointError, match=r"a plain state dict: an NVlabs checkpoint\? give its folder"):
        read_parent_file(tmp_path / "latest_net_G.pth")


def test_batch_and_syncbatch_norms_are_the_same_weights(tmp_path):
    parent = trained(config(), steps=0)
    generator, _ = save_both(tmp_path, parent, OLD, full=False)
    child = fresh(dataclasses.replace(config(), norm_G="spectralspadesyncbatch3x3"))
    start_from_parent(child, read_parent_file(generator), OLD)
    a, b = parent.ema.netG.state_dict(), child.netG.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
