"""GauGANTrainer on tiny settings: steps, gradients, NaN guard, exact resume, EMA copy, DDP over gloo."""

from __future__ import annotations

import math

import pytest
import torch
import torch.multiprocessing as mp
from conftest import tiny_config, train_options, trainer_weights

import gaugan.networks as networks_module
from gaugan.config import GauGANConfig
from gaugan.trainer import GauGANTrainer, NonFiniteLossError, TrainOptions, ema_decay_at


def tiny(**kw) -> GauGANConfig:
    return tiny_config(**{"label_nc": 5, **kw})


def make_batch(cfg: GauGANConfig, b: int = 2, seed: int = 0, size: tuple[int, int] = (64, 64)) -> dict:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, cfg.label_nc, (b, *size), generator=g)
    label[:, :4, :4] = 255  # some dontcare
    batch = {"label": label, "image": torch.rand(b, 3, *size, generator=g) * 2 - 1}
    if cfg.use_instance:
        batch["edge"] = (torch.rand(b, 1, *size, generator=g) > 0.9).float()
    return batch


def flat_state(state: dict, prefix: str = "") -> dict:
    """Nested trainer state -> {dotted path: leaf}, for exact comparisons."""
    out = {}
    if isinstance(state, dict):
        for k, v in state.items():
            out.update(flat_state(v, f"{prefix}.{k}"))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            out.update(flat_state(v, f"{prefix}.{i}"))
    else:
        out[prefix] = state
    return out


def assert_same_state(a: dict, b: dict) -> None:
    fa, fb = flat_state(a), flat_state(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        if torch.is_tensor(fa[k]):
            assert torch.equal(fa[k], fb[k]), k
        else:
            assert fa[k] == fb[k], k


# ------------------------------------------------------------------------------------ options
def test_options_and_the_two_time_scale_rule():
    with pytest.raises(ValueError, match="precision"):
        TrainOptions(precision="fp8")
    with pytest.raises(ValueError, match="ema_decay"):
        TrainOptions(ema_decay=1.5)
    cfg = tiny()
    ttur = GauGANTrainer(cfg, train_options(lr=2e-4))
    assert ttur.opt_G.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert ttur.opt_D.param_groups[0]["lr"] == pytest.approx(4e-4)
    assert ttur.opt_G.param_groups[0]["betas"] == (0.0, 0.9) == ttur.opt_D.param_groups[0]["betas"]
    plain = GauGANTrainer(cfg, train_options(lr=3e-4, ttur=False, beta1=0.5, beta2=0.999))
    assert plain.opt_G.param_groups[0]["lr"] == plain.opt_D.param_groups[0]["lr"] == pytest.approx(3e-4)
    assert plain.opt_G.param_groups[0]["betas"] == (0.5, 0.999)
    # the betas apply with TTUR too, as in the reference (never silently replaced by (0, 0.9))
    ttur_betas = GauGANTrainer(cfg, train_options(beta1=0.5, beta2=0.99))
    assert ttur_betas.opt_G.param_groups[0]["betas"] == (0.5, 0.99) == ttur_betas.opt_D.param_groups[0]["betas"]
    assert plain.vgg_loss is None  # lambda_vgg 0: no VGG, no weights file needed
    schedule = GauGANTrainer(cfg, train_options(total_steps=10, decay_start_step=6))
    assert [schedule.lr_factor(s) for s in (0, 6, 7, 8, 10, 12)] == [1.0, 1.0, 0.75, 0.5, 0.0, 0.0]


# ------------------------------------------------------------------------------------ steps
def test_training_steps_give_finite_losses_decay_the_lr_and_call_hooks():
    cfg = tiny(use_vae=True, use_instance=True)  # default norm_G: SPADE with (sync)batch norm
    torch.manual_seed(0)
    trainer = GauGANTrainer(cfg, train_options(total_steps=4, decay_start_step=2, lr=2e-4))
    calls = []
    trainer.hooks.append(lambda step, losses: calls.append((step, dict(losses))))
    history = [trainer.train_step(make_batch(cfg, seed=s)) for s in range(4)]
    assert set(history[0]) == {"G_GAN", "G_GAN_Feat", "KLD", "D_Fake", "D_real", "lr_G", "lr_D", "skipped_steps"}
    assert all(math.isfinite(v) for losses in history for v in losses.values())
    assert history[0]["KLD"] > 0 and history[0]["D_real"] >= 0 and history[0]["D_Fake"] >= 0
    assert [h["lr_G"] for h in history] == pytest.approx([1e-4, 1e-4, 0.5e-4, 0.0])
    assert [h["lr_D"] for h in history] == pytest.approx([4e-4, 4e-4, 2e-4, 0.0])
    assert trainer.step == 4 and [c[0] for c in calls] == [1, 2, 3, 4] and calls[2][1] == history[2]


def test_gradients_reach_every_parameter_of_G_E_and_D():
    cfg = tiny(use_vae=True, use_instance=True)
    torch.manual_seed(0)
    # PyTorch's default initialisation: with the reference's (xavier, gain 0.02) SPADE's modulation
    # starts near zero and its gradients are tiny next to conv_img's, so "small" would not single
    # out the structurally cancelled biases below
    trainer = GauGANTrainer(cfg, train_options(init_type="none"))
    batch = make_batch(cfg)
    _, fake = trainer.generator_step(batch)
    assert not fake.requires_grad and fake.shape == (2, 3, 64, 64)
    g_params = dict(trainer.generator.named_parameters())
    assert any(n.startswith("netE.") for n in g_params)
    missing = [n for n, p in g_params.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []

    # Some biases add a per-channel constant that a later normalization subtracts again: a block's
    # conv_0 (norm_1 follows), and, in every block but the last, conv_1 and the shortcut's SPADE
    # beta (the next block normalizes both of its paths). Their true gradient is zero (as in the
    # reference); what they get is rounding noise. Every other parameter gets a real gradient.
    def cancelled(name: str) -> bool:
        return name.endswith("conv_0.bias") or (
            name.endswith(("conv_1.bias", "norm_s.mlp_beta.bias")) and not name.startswith("netG.up_3.")
        )

    scale = max(p.grad.abs().max().item() for p in g_params.values())
    small = {n for n, p in g_params.items() if p.grad.abs().max() < 1e-4 * scale}
    assert small == {n for n in g_params if cancelled(n)}
    assert len(small) == 7 + 6 + 3
    assert all(p.grad is None for p in trainer.discriminator.parameters())  # not computed in the G step
    trainer.discriminator_step(batch, fake)
    missing = [n for n, p in trainer.discriminator.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert missing == []


def test_a_nan_loss_stops_before_any_update():
    cfg = tiny(use_vae=True)
    torch.manual_seed(0)
    trainer = GauGANTrainer(cfg, train_options(ema_decay=0.9))
    trainer.train_step(make_batch(cfg, seed=0))
    good_weights, good_state = trainer_weights(trainer), trainer.state_dict()
    good_opt = flat_state(good_state["opt_G"]) | flat_state(good_state["opt_D"], "D")
    calls = []
    trainer.hooks.append(lambda step, losses: calls.append(step))
    bad = make_batch(cfg, seed=1)
    bad["image"][1, 0, 5, 5] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 2: .*G_GAN_Feat=nan.*D_real=nan"):
        trainer.train_step(bad)
    after = trainer_weights(trainer)
    assert all(torch.equal(good_weights[k], after[k]) for k in good_weights)
    state = trainer.state_dict()
    assert flat_state(state["opt_G"]) | flat_state(state["opt_D"], "D") == good_opt
    assert all(torch.equal(v, state["ema"][k]) for k, v in good_state["ema"].items())
    assert trainer.step == 1 and calls == []
    # the D step alone, fed a broken fake
    fake = torch.zeros(2, 3, 64, 64)
    fake[0, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteLossError, match="D_Fake"):
        trainer.discriminator_step(make_batch(cfg, seed=2), fake)
    assert all(torch.equal(good_weights[k], v) for k, v in trainer_weights(trainer).items())
    # and training goes on from the last good weights
    assert math.isfinite(trainer.train_step(make_batch(cfg, seed=3))["G_GAN"])


FAMILIES = {  # each generator family, trained by the same trainer
    "spade": dict(use_vae=True, use_instance=True),
    "pix2pixhd": dict(netG="pix2pixhd", norm_G="spectralinstance", resnet_n_downsample=2, resnet_n_blocks=2),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_resume_from_a_state_dict_is_bit_identical_to_an_uninterrupted_run(tmp_path, family):
    cfg = tiny(**FAMILIES[family])
    options = train_options(ema_decay=0.9, total_steps=4, decay_start_step=1)

    def run(trainer: GauGANTrainer, upto: int) -> GauGANTrainer:
        while trainer.step < upto:
            torch.manual_seed(100 + trainer.step)  # the caller owns the RNG (VAE noise)
            trainer.train_step(make_batch(cfg, seed=trainer.step))
        return trainer

    torch.manual_seed(0)
    straight = run(GauGANTrainer(cfg, options), 4)
    torch.manual_seed(0)
    again = run(GauGANTrainer(cfg, options), 4)
    assert_same_state(straight.state_dict(), again.state_dict())  # determinism under a seed

    torch.manual_seed(0)
    first_half = run(GauGANTrainer(cfg, options), 2)
    torch.save(first_half.state_dict(), tmp_path / "state.pt")
    torch.manual_seed(1)  # other initial weights: everything must come from the file
    resumed = GauGANTrainer(cfg, options)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert resumed.step == 2 and float(resumed.opt_G.param_groups[0]["lr"]) == pytest.approx(1e-4 * 2 / 3)
    run(resumed, 4)
    assert_same_state(straight.state_dict(), resumed.state_dict())


def test_inference_generator_is_an_eval_copy_with_the_ema_weights():
    cfg = tiny(use_vae=True, use_instance=True)
    torch.manual_seed(0)
    trainer = GauGANTrainer(cfg, train_options(ema_decay=0.5))
    for s in range(2):
        trainer.train_step(make_batch(cfg, seed=s))
    rng = torch.get_rng_state()
    netG, netE = trainer.inference_generator()
    assert torch.equal(rng, torch.get_rng_state())  # building the copy drew no random numbers
    assert not netG.training and not netE.training
    assert not any(p.requires_grad for p in netG.parameters())
    copy_state = netG.state_dict()
    ema_state = {k[len("netG.") :]: v for k, v in trainer.ema.state_dict().items() if k.startswith("netG.")}
    assert all(torch.equal(copy_state[k], v) for k, v in ema_state.items())
    live = trainer.netG.state_dict()
    assert any(not torch.equal(live[k], v) for k, v in copy_state.items() if k.endswith("weight_orig"))
    # EMA after two steps with decay 0.5: 0.25 * initial + 0.25 * after step 1 + 0.5 * after step 2
    batch = make_batch(cfg, seed=9)
    from gaugan.encoding import encode_labels

    sem = encode_labels(batch["label"], cfg.label_nc, True, batch["edge"])
    with torch.no_grad():
        z = netE(batch["image"])[0]
        assert torch.equal(netG(sem, z), netG(sem, z))  # eval mode: no power iteration, no BN update
    no_ema = GauGANTrainer(cfg, train_options(ema_decay=None))
    netG2, netE2 = no_ema.inference_generator()
    assert all(torch.equal(v, no_ema.netG.state_dict()[k]) for k, v in netG2.state_dict().items())


def test_ema_decay_schedule_warms_up_and_starts_late():
    def decays(steps, decay, warmup, start):
        return [round(float(ema_decay_at(torch.tensor(t), decay, warmup, start)), 4) for t in steps]

    assert decays([0, 1, 500], 0.995, False, 0) == [0.995, 0.995, 0.995]  # the plain EMA
    # (1 + t) / (10 + t) until it reaches the decay: 0.1 at the first update, 0.9 at t = 80
    assert decays([0, 1, 80, 1790, 5000], 0.995, True, 0) == [0.1, 0.1818, 0.9, 0.995, 0.995]
    assert decays([0, 9, 10, 11, 90], 0.995, True, 10) == [0.0, 0.0, 0.1, 0.1818, 0.9]  # G itself before the start
    assert decays([2, 3], 0.5, False, 3) == [0.0, 0.5]
    with pytest.raises(ValueError, match="ema_start_step"):
        TrainOptions(ema_start_step=-1)


@pytest.mark.parametrize("warmup,start", [(True, 0), (False, 1)])
def test_ema_is_the_scheduled_average_of_the_live_weights(warmup, start):
    """After each step: ema = d_t * ema + (1 - d_t) * G_t, d_t from the schedule (0 before the start:
    the EMA is G); the exported generator is that average."""
    cfg = tiny(use_instance=True)
    torch.manual_seed(0)
    options = train_options(ema_decay=0.8, ema_warmup=warmup, ema_start_step=start)
    trainer = GauGANTrainer(cfg, options)
    expected = {k: v.clone().double() for k, v in trainer.netG.named_parameters()}
    for t in range(3):
        trainer.train_step(make_batch(cfg, seed=t))
        d = 0.0 if t < start else min(0.8, (1 + t - start) / (10 + t - start)) if warmup else 0.8
        for k, v in trainer.netG.named_parameters():
            expected[k] = d * expected[k] + (1 - d) * v.detach().double()
    netG, _ = trainer.inference_generator()
    exported = dict(netG.named_parameters())
    assert exported.keys() == expected.keys()
    for k, v in expected.items():
        torch.testing.assert_close(exported[k].double(), v, rtol=1e-5, atol=1e-6, msg=k)
    live = dict(trainer.netG.named_parameters())
    assert any(not torch.allclose(live[k], exported[k]) for k in exported if k.endswith("weight_orig"))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last_run_on_cpu(precision):
    cfg = tiny(use_instance=True, use_vae=True)
    torch.manual_seed(0)
    trainer = GauGANTrainer(cfg, train_options(precision=precision, channels_last=True))
    losses = trainer.train_step(make_batch(cfg))
    assert all(math.isfinite(v) for v in losses.values())
    assert trainer.netG.fc.weight.dtype == torch.float32  # autocast, not half-precision weights
    assert trainer.netD.discriminator_0.model0[0].weight.is_contiguous(memory_format=torch.channels_last)
    scaler_state = trainer.state_dict()["scaler_G"]
    # fp16: the scaler is active; with the reference's small initial weights the first step's G
    # gradients may overflow at 2**16, and the scaler then halves its scale once
    assert (scaler_state["scale"] in (2.0**16, 2.0**15)) if precision == "fp16" else scaler_state == {}


# ------------------------------------------------------------------------------------ DDP over gloo
def _fixed_reparameterize(mu, logvar, generator=None):
    """Deterministic 'noise' so that a split batch and a whole batch see the same z."""
    return mu + 0.5 * torch.exp(0.5 * logvar)


def _ddp_config() -> GauGANConfig:
    # instance norms everywhere: samples are independent, so a split batch equals the whole batch
    return tiny(use_vae=True, use_instance=True, norm_G="spectralspadeinstance3x3")


def _half(batch: dict, rank: int, world: int) -> dict:
    n = batch["label"].shape[0] // world
    return {k: v[rank * n : (rank + 1) * n] for k, v in batch.items()}


def _one_round(trainer: GauGANTrainer, rank: int, world: int) -> dict:
    cfg = trainer.config
    batch = _half(make_batch(cfg, b=4, seed=1), rank, world)
    _, fake = trainer.generator_step(batch)
    grads_G = {n: p.grad.clone() for n, p in trainer.netG.named_parameters()}
    grads_E = {n: p.grad.clone() for n, p in trainer.netE.named_parameters()}
    trainer.discriminator_step(batch, fake)
    grads_D = {n: p.grad.clone() for n, p in trainer.netD.named_parameters()}
    trainer.train_step(_half(make_batch(cfg, b=4, seed=2), rank, world))
    return {"G": grads_G, "E": grads_E, "D": grads_D, "state": trainer.state_dict()}


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    networks_module.reparameterize = _fixed_reparameterize
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        trainer = GauGANTrainer(_ddp_config(), train_options(ema_decay=None), "cpu")
        trainer.distribute()
        torch.save(_one_round(trainer, rank, world), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_over_gloo_matches_one_process_with_the_whole_batch(tmp_path, monkeypatch):
    """Two CPU processes with half the batch each give the gradients of one process with the whole
    batch (DDP averages; every loss, KL included, is a batch mean), and identical weights after."""
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    monkeypatch.setattr(networks_module, "reparameterize", _fixed_reparameterize)
    torch.manual_seed(0)
    single = _one_round(GauGANTrainer(_ddp_config(), train_options(ema_decay=None), "cpu"), 0, 1)
    for net in ("G", "E", "D"):
        # absolute tolerance from the network's gradient scale: biases right before a norm have a
        # zero true gradient, so theirs are rounding noise that differs with the batch split
        scale = max(g.abs().max().item() for g in single[net].values())
        for name, grad in single[net].items():
            for r in ranks:
                torch.testing.assert_close(r[net][name], grad, rtol=1e-3, atol=1e-5 * scale, msg=f"{net}.{name}")
    # both processes hold exactly the same networks after a full train_step
    for net in ("G", "E", "D"):
        for k, v in ranks[0]["state"][net].items():
            assert torch.equal(v, ranks[1]["state"][net][k]), f"{net}.{k}"
