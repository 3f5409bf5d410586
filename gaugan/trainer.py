"""GAN training one step at a time: a generator step, then a discriminator step on the same fake.

The trainer owns the networks, the optimizers (two-time-scale rule), the learning-rate decay,
mixed precision, the generator EMA and the DDP wrapping. The caller owns the data, logging, RNG
states and checkpoint files: ``hooks`` are called after each step, and ``state_dict`` holds
everything else a resumed run needs to continue bit-identically.

Differences from the reference trainer, deliberate, each with the option that restores it:
- ``d_fake="reuse"``: the D step learns on the G step's (detached) images instead of images of the
  updated G (``"regenerate"``, the reference); it saves a G forward per step, and both optimizer
  steps are applied only once both losses are known to be finite;
- ``kl_reduction="mean"``: the KL term is averaged over the batch (``"sum"``, the reference; see
  :func:`gaugan.losses.kl_loss`);
- the EMA of G (``ema_decay``, ``ema_warmup``, ``ema_start_step``; None: none, as the reference);
- D's parameters do not collect gradients during the G step (they would be thrown away).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.nn as nn

from gaugan.checkpoint import CheckpointError
from gaugan.checkpoint import unwrap as _unwrap
from gaugan.config import GauGANConfig
from gaugan.discriminator import MultiscaleDiscriminator
from gaugan.encoder import ConvEncoder
from gaugan.encoding import encode_labels
from gaugan.errors import ConfigError, InputError, NonFiniteLossError
from gaugan.layers import convert_sync_batchnorm
from gaugan.losses import (
    GAN_MODES,
    LAMBDA_FEAT,
    LAMBDA_KLD,
    LAMBDA_VGG,
    VGGLoss,
    feature_matching_loss,
    gan_d_loss,
    gan_g_loss,
    kl_loss,
)
from gaugan.networks import Generator, GeneratorModel, build_discriminator
from gaugan.weight_init import INIT_TYPES, init_weights

__all__ = [
    "GauGANTrainer",
    "NonFiniteLossError",
    "TrainOptions",
    "convert_sync_batchnorm",
    "ema_decay_at",
    "update_ema",
]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# the parts of :meth:`GauGANTrainer.state_dict` that a training-state file keeps
NETWORK_PARTS = ("G", "E", "D", "ema")
OPTIMIZER_PARTS = ("opt_G", "opt_D", "scaler_G", "scaler_D")


@dataclass
class TrainOptions:
    """How the trainer trains. The defaults are params.yaml's ``train`` defaults (tests/test_layout.py
    holds them equal), except ``lambda_vgg`` (the paper's 10), ``precision`` and ``channels_last``
    (params.yaml's ``auto`` is resolved per device) and ``decay_start_step`` (a constant rate)."""

    lr: float = 2e-4
    beta1: float = 0.0  # Adam betas of both optimizers, in both modes, as the reference; its defaults
    beta2: float = 0.9  # are (0, 0.9) with TTUR and (0.5, 0.999) without
    ttur: bool = True  # G at lr/2, D at lr*2, as the reference's default (no --no_TTUR)
    lambda_feat: float = LAMBDA_FEAT
    lambda_vgg: float = LAMBDA_VGG  # 0 turns the VGG loss (and its weights file) off
    lambda_kld: float = LAMBDA_KLD
    vgg_weights: str | None = None  # None: the torch hub cache
    ema_decay: float | None = 0.995  # with the warm-up: measured better than none and than 0.999 (bench/quality.py)
    ema_warmup: bool = True  # decay of update t: min(ema_decay, (1 + t) / (10 + t)) (see ema_decay_at)
    ema_start_step: int = 0  # the EMA copies G until this many steps are applied, then averages
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast on the trainer's device; GradScaler for fp16)
    channels_last: bool = False
    compile: bool = False
    total_steps: int = 0  # where the linear decay reaches 0
    decay_start_step: int | None = None  # None: constant learning rate
    gan_mode: str = "hinge"  # hinge | ls | original | w (gaugan.losses)
    d_steps_per_g: int = 1  # G is updated every this many steps, D every step (the reference's D_steps_per_G)
    init_type: str = "xavier"  # xavier | normal | xavier_uniform | kaiming | orthogonal | none (gaugan.weight_init)
    init_variance: float = 0.02  # the gain (std for normal) of the initialisation
    accumulation: int = 1  # micro-batches per step: gradients are accumulated, then one optimizer step
    kl_reduction: str = "mean"  # mean over the batch (this project) | sum (the reference)
    # reuse: D learns on G's images of the step | regenerate: on G's after its update (the reference)
    d_fake: str = "reuse"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")
        if self.ema_start_step < 0:
            raise ConfigError(f"ema_start_step must be >= 0, got {self.ema_start_step}")
        for name in ("lambda_feat", "lambda_vgg", "lambda_kld"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.gan_mode not in GAN_MODES:
            raise ConfigError(f"gan_mode must be one of {GAN_MODES}, got {self.gan_mode!r}")
        if self.init_type not in INIT_TYPES:
            raise ConfigError(f"init_type must be one of {INIT_TYPES}, got {self.init_type!r}")
        if self.kl_reduction not in ("mean", "sum") or self.d_fake not in ("reuse", "regenerate"):
            raise ConfigError(
                f"kl_reduction must be mean|sum and d_fake reuse|regenerate, got {self.kl_reduction!r}, {self.d_fake!r}"
            )
        if self.d_steps_per_g < 1 or self.accumulation < 1:
            raise ConfigError(
                f"d_steps_per_g and accumulation must be >= 1, got {self.d_steps_per_g}, {self.accumulation}"
            )


class GauGANTrainer:
    """``train_step(batch)`` -> losses. Batch: ``label`` integer [B,H,W] (255 = dontcare), ``image``
    float [B,3,H,W] in [-1, 1] or uint8 [B,3,H,W], ``edge`` float [B,1,H,W] (or uint8, 255 on
    boundaries) when the model uses instance edges; uint8 is converted on the trainer's device."""

    def __init__(self, config: GauGANConfig, options: TrainOptions | None = None, device: torch.device | str = "cpu"):
        self.config = config
        self.options = options = options if options is not None else TrainOptions()
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        # built and initialised on the CPU, so the initial weights do not depend on the device
        self.generator = init_weights(GeneratorModel(config), options.init_type, options.init_variance).to(self.device)
        self.discriminator = init_weights(build_discriminator(config), options.init_type, options.init_variance)
        self.discriminator = self.discriminator.to(self.device)
        self.vgg_loss: VGGLoss | None = None
        if options.lambda_vgg > 0:
            from gaugan.vgg import VGG19Features

            self.vgg_loss = VGGLoss(VGG19Features(options.vgg_weights)).to(self.device)
        if options.channels_last:
            for module in (self.generator, self.discriminator, self.vgg_loss):
                if module is not None:
                    module.to(memory_format=torch.channels_last)
        # deepcopy is safe only now: after a training forward, spectral norm's computed weight is
        # a non-leaf tensor that deepcopy refuses
        self.ema = copy.deepcopy(self.generator).eval().requires_grad_(False) if options.ema_decay else None

        lr_G, lr_D = (options.lr / 2, options.lr * 2) if options.ttur else (options.lr, options.lr)
        betas = (options.beta1, options.beta2)
        self.base_lr = {"G": lr_G, "D": lr_D}
        # fused: one kernel per step, and it skips a step on the device (found_inf) without a sync;
        # the learning rates are device tensors for the same reason (the schedule follows applied steps)
        self.fused = self.device.type in ("cuda", "cpu")
        self.opt_G = torch.optim.Adam(self.generator.parameters(), lr=self._lr(lr_G), betas=betas, fused=self.fused)
        self.opt_D = torch.optim.Adam(self.discriminator.parameters(), lr=self._lr(lr_D), betas=betas, fused=self.fused)
        fp16 = options.precision == "fp16"
        self.scaler_G = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_D = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.step = 0  # steps taken (batches consumed), applied or skipped
        self._counters = _StepCounters(self.device)
        self.hooks: list[Callable[[int, dict], None]] = []
        # what the steps call; distribute() and compile swap in wrapped versions
        self._G: nn.Module | Callable[..., Any] = self.generator
        self._D: nn.Module | Callable[..., Any] = self.discriminator
        self._compile_wrappers()

    # ------------------------------------------------------------------ set-up
    @property
    def netG(self) -> Generator:
        return cast(Generator, _unwrap(self.generator).netG)

    @property
    def netE(self) -> ConvEncoder | None:
        return cast("ConvEncoder | None", _unwrap(self.generator).netE)

    @property
    def netD(self) -> MultiscaleDiscriminator:
        return cast(MultiscaleDiscriminator, _unwrap(self.discriminator))

    def _lr(self, value: float) -> float | torch.Tensor:
        return torch.tensor(value, dtype=torch.float32, device=self.device) if self.fused else value

    def _compile_wrappers(self) -> None:
        if self.options.compile:
            self._G = torch.compile(self._G)
            self._D = torch.compile(self._D)

    def distribute(self, process_group=None, device_ids: list[int] | None = None) -> None:
        """Wrap G(+E) and D in DistributedDataParallel; the process group must exist.

        SyncBatchNorm only on CUDA (it cannot run on CPU); with gloo on CPU each process keeps its
        own batch statistics.
        """
        from torch.nn.parallel import DistributedDataParallel as DDP

        if self.device.type == "cuda":
            # the top modules are not norms: converted in place, the same objects come back
            self.generator = cast(GeneratorModel, convert_sync_batchnorm(self.generator, process_group))
            self.discriminator = cast(
                MultiscaleDiscriminator, convert_sync_batchnorm(self.discriminator, process_group)
            )
            if device_ids is None:
                device_ids = [self.device.index]
        else:
            device_ids = None
        # no buffer broadcast: every rank's buffers are identical by construction (same seed, same
        # weights: spectral norm's power iteration gives the same u/v everywhere; SyncBatchNorm's
        # statistics are global); on CPU each rank's BatchNorm statistics are its own either way.
        # Newer torch: forward_sync_buffers (buffers still synced once, at construction)
        keep: dict[str, Any] = {"broadcast_buffers": False}
        if "forward_sync_buffers" in inspect.signature(DDP).parameters:
            keep = {"forward_sync_buffers": False}
        self._G = DDP(self.generator, device_ids=device_ids, process_group=process_group, **keep)
        self._D = DDP(self.discriminator, device_ids=device_ids, process_group=process_group, **keep)
        self._compile_wrappers()

    def _autocast(self):
        dtype = PRECISIONS[self.options.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _prepare(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        edges = batch.get("edge") if self.config.use_instance else None
        if self.config.use_instance and edges is None:
            raise InputError("the model uses instance edges (use_instance) but the batch has no 'edge' tensor")
        nb = self.device.type == "cuda"
        if edges is not None:
            edges = edges.to(self.device, non_blocking=nb)
            if edges.dtype == torch.uint8:  # the loader's 0/255 edges, converted on the device
                edges = edges.float().div_(255.0)
        semantics = encode_labels(
            batch["label"].to(self.device, non_blocking=nb),
            self.config.label_nc,
            self.config.contain_dontcare_label,
            edges,
            check=False,  # no host sync per step: the loader's maps are checked when the dataset is prepared
        )
        image = batch["image"].to(self.device, non_blocking=nb)
        image = image.float().div_(127.5).sub_(1.0) if image.dtype == torch.uint8 else image.float()
        if self.options.channels_last:
            semantics = semantics.contiguous(memory_format=torch.channels_last)
            image = image.contiguous(memory_format=torch.channels_last)
        return semantics, image

    def _discriminate(self, semantics: torch.Tensor, fake: torch.Tensor, real: torch.Tensor):
        """D on fake and real in one batch (its instance norms keep the samples independent)."""
        both = torch.cat([torch.cat([semantics, fake], 1), torch.cat([semantics, real], 1)], 0)
        preds = self._D(both)
        n = fake.shape[0]
        return [[f[:n] for f in scale] for scale in preds], [[f[n:] for f in scale] for scale in preds]

    @contextlib.contextmanager
    def _d_frozen(self):
        """During the G step D's parameter gradients are never used: skip computing them, and keep
        DDP from reducing anything (no_sync)."""
        no_sync = self._D.no_sync() if hasattr(self._D, "no_sync") else contextlib.nullcontext()
        params = [p for p in self.discriminator.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            with no_sync:
                yield
        finally:
            for p in params:
                p.requires_grad_(True)

    def _check_finite(self, losses: dict[str, torch.Tensor]) -> None:
        values = torch.stack([v.detach().float().reshape(()) for v in losses.values()])
        finite = torch.isfinite(values).all().float().reshape(1)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # every rank stops at the same step
        if finite.item() < 1:
            bad = [f"{k}={v.item()}" for k, v in losses.items() if not torch.isfinite(v.detach()).all()]
            raise NonFiniteLossError(
                f"non-finite loss at step {self.step + 1}: {', '.join(bad) or 'on another process'}; "
                "no optimizer step was applied, the weights are those of the last good step"
            )

    # ------------------------------------------------------------------ the two halves
    def _g_backward(self, semantics: torch.Tensor, real: torch.Tensor, share: float = 1.0) -> tuple[dict, torch.Tensor]:
        """G's losses on one (micro-)batch, backpropagated with weight ``share``; -> (losses, detached fake)."""
        o = self.options
        with self._d_frozen():
            with self._autocast():
                fake, mu, logvar = self._G(semantics, real if self.config.use_vae else None)
                pred_fake, pred_real = self._discriminate(semantics, fake, real)
                losses = {"G_GAN": gan_g_loss(pred_fake, o.gan_mode)}
                if o.lambda_feat > 0:
                    losses["G_GAN_Feat"] = feature_matching_loss(pred_fake, pred_real, o.lambda_feat)
                if self.vgg_loss is not None:
                    losses["G_VGG"] = self.vgg_loss(fake, real) * o.lambda_vgg
                if mu is not None:
                    losses["KLD"] = kl_loss(mu, logvar, o.kl_reduction) * o.lambda_kld
            total = torch.stack([v.float() for v in losses.values()]).sum()
            self.scaler_G.scale(total * share if share != 1.0 else total).backward()
        return losses, fake.detach()

    def _d_backward(self, semantics: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, share: float = 1.0) -> dict:
        """D's losses on real images and ``fake``, backpropagated with weight ``share``."""
        mode = self.options.gan_mode
        with self._autocast():
            pred_fake, pred_real = self._discriminate(semantics, fake.detach(), real)
            losses = {"D_Fake": gan_d_loss(pred_fake, False, mode), "D_real": gan_d_loss(pred_real, True, mode)}
        total = torch.stack([v.float() for v in losses.values()]).sum()
        self.scaler_D.scale(total * share if share != 1.0 else total).backward()
        return losses

    @torch.no_grad()
    def _fake(self, semantics: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """G's images without a G update (the steps where only D trains, d_steps_per_g > 1)."""
        with self._autocast():
            return self._G(semantics, real if self.config.use_vae else None)[0]

    def _micro_batches(self, batch: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
        semantics, real = self._prepare(batch)
        k = self.options.accumulation
        if k == 1:
            return [(semantics, real)]
        if semantics.shape[0] % k:
            raise ConfigError(f"a batch of {semantics.shape[0]} does not split into {k} micro-batches (accumulation)")
        return list(zip(semantics.chunk(k), real.chunk(k), strict=True))

    def _passes(self, chunks: list[tuple[torch.Tensor, torch.Tensor]], g: bool, d: bool) -> list[dict]:
        """Forward and backward over the micro-batches: G's losses (``g``), D's (``d``) on G's images of
        this pass, or on images G makes now without a G update; -> each micro-batch's losses."""
        share = 1.0 / len(chunks)
        parts = []
        for i, (semantics, real) in enumerate(chunks):
            with self._no_sync_unless(i == len(chunks) - 1):
                losses, fake = self._g_backward(semantics, real, share) if g else ({}, None)
                if d:
                    fake = fake if fake is not None else self._fake(semantics, real)
                    losses = {**losses, **self._d_backward(semantics, real, fake, share)}
                parts.append(losses)
        return parts

    def _no_sync_unless(self, last: bool):
        """DDP reduces gradients once per step: on the last micro-batch only."""
        stack = contextlib.ExitStack()
        if not last:
            for wrapped in (self._G, self._D):
                if hasattr(wrapped, "no_sync"):
                    stack.enter_context(wrapped.no_sync())
        return stack

    def _apply(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        scaler.step(optimizer)
        scaler.update()

    def _apply_where(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, ok: torch.Tensor) -> None:
        """The optimizer step, applied only where ``ok`` (a device bool) holds, without a host sync:
        fp16 makes the scaler see an inf (it skips and lowers its scale); otherwise the fused Adam
        gets ``found_inf`` (the GradScaler contract: no update, its step count kept)."""
        if scaler.is_enabled():
            _poison_first_grad(optimizer, ok)
            self._apply(optimizer, scaler)
        elif not self.fused:  # an optimizer without found_inf: ask the device (a sync)
            if bool(ok):
                self._apply(optimizer, scaler)
        else:
            optimizer.found_inf = (~ok).float().reshape(())  # type: ignore[attr-defined]
            optimizer.grad_scale = None  # type: ignore[attr-defined]
            try:
                self._apply(optimizer, scaler)
            finally:
                del optimizer.found_inf, optimizer.grad_scale  # type: ignore[attr-defined]

    def _step_ok(self, losses: dict[str, torch.Tensor], optimizers: list[torch.optim.Optimizer]) -> torch.Tensor:
        """A device bool, the same on every rank: may this step's updates be applied? No when a loss is
        non-finite on any rank, with fp16 when a gradient overflowed, and in fp32/bf16 after a
        non-finite loss (nothing more is applied until the caller reads the flag and stops)."""
        values = torch.stack([v.detach().float().reshape(()) for v in losses.values()])
        bad = ~torch.isfinite(values).all()
        if self.scaler_G.is_enabled():  # gradients are all-reduced: the same answer on every rank
            grads = [p.grad for o in optimizers for g in o.param_groups for p in g["params"] if p.grad is not None]
            bad = bad | ~torch.isfinite(torch.nn.utils.get_total_norm(grads, float("inf")))
        flag = bad.float().reshape(1)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank skips or stops at the same step
        ok = flag[0] == 0
        return ok if self.scaler_G.is_enabled() else ok & ~self._counters.halted()

    # ------------------------------------------------------------------ public steps
    def generator_step(self, batch: dict) -> tuple[dict[str, float], torch.Tensor]:
        """One G (+E) update; returns the losses and the detached fake for :meth:`discriminator_step`."""
        semantics, real = self._prepare(batch)
        self.opt_G.zero_grad(set_to_none=True)
        losses, fake = self._g_backward(semantics, real)
        self._check_finite(losses)
        self._apply(self.opt_G, self.scaler_G)
        return {k: v.item() for k, v in losses.items()}, fake

    def discriminator_step(self, batch: dict, fake_detached: torch.Tensor) -> dict[str, float]:
        """One D update on the real images and the given fake."""
        semantics, real = self._prepare(batch)
        self.opt_D.zero_grad(set_to_none=True)
        losses = self._d_backward(semantics, real, fake_detached)
        self._check_finite(losses)
        self._apply(self.opt_D, self.scaler_D)
        return {k: v.item() for k, v in losses.items()}

    def train_step(self, batch: dict, read: bool = True) -> dict:
        """G step (every ``d_steps_per_g`` steps), D step, EMA, learning-rate schedule, step + 1, hooks.

        ``d_fake: reuse``: D learns on the images of G's step, and both updates are applied once both
        losses are known finite. ``regenerate`` (the reference's order): G is updated first, then D
        learns on images of the updated G. With ``accumulation`` k, the batch is split into k
        micro-batches whose gradients add up (each weighted 1/k) before the optimizer steps.

        A step whose losses are not all finite (on any rank), or whose fp16 gradients overflowed, is
        skipped everywhere: no G or D update, no EMA update, no learning-rate step; it is counted in
        ``skipped_steps``. ``read=False``: the losses stay 0-d device tensors and nothing waits for
        the device (no host sync); a later ``read=True`` step reports (and stops on) what happened.
        """
        chunks = self._micro_batches(batch)
        g_turn = self.step % self.options.d_steps_per_g == 0
        self.opt_G.zero_grad(set_to_none=True)
        self.opt_D.zero_grad(set_to_none=True)
        if self.options.d_fake == "reuse" or not g_turn:
            step_losses = _mean_losses(self._passes(chunks, g=g_turn, d=True))
            ok = self._step_ok(step_losses, [self.opt_G, self.opt_D] if g_turn else [self.opt_D])
            if g_turn:
                self._apply_where(self.opt_G, self.scaler_G, ok)
        else:
            step_losses = _mean_losses(self._passes(chunks, g=True, d=False))
            ok = self._step_ok(step_losses, [self.opt_G])
            self._apply_where(self.opt_G, self.scaler_G, ok)
            d_losses = _mean_losses(self._passes(chunks, g=False, d=True))
            ok = ok & self._step_ok(d_losses, [self.opt_D])
            step_losses.update(d_losses)
        self._apply_where(self.opt_D, self.scaler_D, ok)
        if g_turn:
            self._update_ema(ok)
        self._counters.count(ok, self.step + 1, halt=not self.scaler_G.is_enabled())
        losses: dict = dict(step_losses)
        if read:
            losses = self._read(step_losses)  # raises before the step counts when it was not applied
        self.step += 1
        self._apply_lr_schedule()
        for hook in self.hooks:
            hook(self.step, losses)
        return losses

    def _read(self, step_losses: dict[str, torch.Tensor]) -> dict[str, float]:
        """The step's losses, learning rates and skip counts as numbers: the one host sync of a step
        that is read. Raises NonFiniteLossError when updates were stopped by a non-finite loss (fp32,
        bf16) or when fp16 skipped ``MAX_SKIPPED_IN_A_ROW`` steps in a row."""
        lrs = [self._lr_factor_t() * self.base_lr[k] for k in ("G", "D")]
        parts = [v.detach().double().reshape(1) for v in step_losses.values()]
        parts += [torch.as_tensor(v, device=self.device).double().reshape(1) for v in lrs]
        values = torch.cat([*parts, self._counters.stacked()]).tolist()  # the sync
        n = len(step_losses)
        losses = dict(zip(step_losses, values[:n], strict=True))
        skipped, in_a_row, first_bad = (int(v) for v in values[n + 2 :])
        if first_bad >= 0 or in_a_row >= MAX_SKIPPED_IN_A_ROW:
            self._counters.clear_halt()  # reported: a caller that goes on starts from the last good weights
            bad = [f"{k}={v}" for k, v in losses.items() if not math.isfinite(v)]
            where = (
                f"step {first_bad}" if first_bad >= 0 else f"{in_a_row} fp16 steps in a row up to step {self.step + 1}"
            )
            now = f": {', '.join(bad)}" if bad else f" (found at step {self.step + 1})"
            raise NonFiniteLossError(
                f"non-finite loss at {where}{now}; no update was applied from then on, the weights are those "
                "of the last good step"
            )
        return {**losses, "lr_G": values[n], "lr_D": values[n + 1], "skipped_steps": float(skipped)}

    # ------------------------------------------------------------------ schedule and EMA
    def lr_factor(self, step: int) -> float:
        """1 until decay_start_step, then linearly down to 0 at total_steps."""
        start, total = self.options.decay_start_step, self.options.total_steps
        if start is None or step <= start or total <= start:
            return 1.0
        return max(0.0, 1.0 - (step - start) / (total - start))

    def _lr_factor_t(self) -> torch.Tensor:
        """:meth:`lr_factor` of the applied steps, on the device (skipped steps do not advance it)."""
        start, total = self.options.decay_start_step, self.options.total_steps
        applied = self._counters.applied.float()
        if start is None or total <= start:
            return torch.ones_like(applied)
        return (1.0 - (applied - start) / (total - start)).clamp(0.0, 1.0)

    def _apply_lr_schedule(self) -> None:
        factor = self._lr_factor_t()
        for optimizer, key in ((self.opt_G, "G"), (self.opt_D, "D")):
            for group in optimizer.param_groups:
                if not self.fused:
                    group["lr"] = self.base_lr[key] * float(factor)
                elif torch.is_tensor(group["lr"]) and group["lr"].device == self.device:
                    group["lr"].copy_(factor * self.base_lr[key])
                else:  # loaded from a checkpoint (a CPU tensor, or a number)
                    group["lr"] = (factor * self.base_lr[key]).to(torch.float32)

    def _update_ema(self, ok: torch.Tensor) -> None:
        """The EMA's update of this step (decay from :func:`ema_decay_at` of the applied steps so
        far), where ``ok`` (a device bool), else nothing; no host sync."""
        if self.ema is None:
            return
        o = self.options
        assert o.ema_decay is not None  # self.ema exists only when ema_decay is set
        decay = ema_decay_at(self._counters.applied, o.ema_decay, o.ema_warmup, o.ema_start_step)
        update_ema(self.ema, _unwrap(self.generator), decay, ok)

    # ------------------------------------------------------------------ state
    def inference_generator(self) -> tuple[Generator, ConvEncoder | None]:
        """(G, E) for sampling and export: the EMA weights when on, eval mode, no DDP/compile
        wrapper, plain BatchNorm2d. A fresh module loaded from the state dict (deepcopy fails on
        spectral norm after a forward); building it leaves torch's global RNG untouched."""
        source = self.ema if self.ema is not None else _unwrap(self.generator)
        with torch.random.fork_rng(devices=[]):
            model = GeneratorModel(self.config)
        model.load_state_dict(source.state_dict())
        model = model.to(self.device).eval().requires_grad_(False)
        return model.netG, model.netE

    def state_dict(self, parts: tuple[str, ...] | None = None) -> dict:
        """The trainer's state. All of it (``parts`` None) is what a resumed run needs: the networks, the
        optimizers, the fp16 scalers, the step and the skip counters, as the trainer's own tensors (it
        loads with ``weights_only=True``; RNG states are the caller's). Named ``parts``
        (:data:`NETWORK_PARTS`, :data:`OPTIMIZER_PARTS`) are what continuing elsewhere needs
        (:func:`gaugan.checkpoint.save_train_state`), copied onto the CPU."""
        state = {
            "G": self.netG.state_dict(),
            "E": self.netE.state_dict() if self.netE is not None else None,
            "D": self.netD.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "scaler_G": self.scaler_G.state_dict(),
            "scaler_D": self.scaler_D.state_dict(),
            "step": self.step,
            "counters": self._counters.state_dict(),
        }
        return state if parts is None else _to_cpu({k: state[k] for k in parts})

    def load_state_dict(self, state: dict, fine_tune: bool = False) -> None:
        """Continue from :meth:`state_dict` (every part required), or with ``fine_tune`` start from another
        model's parts at step 0: G and, where given, E, D, the EMA (else it starts from the loaded G),
        the optimizer moments (only their per-parameter state: this run's learning rates and betas
        stay) and the fp16 scaler states; what is not given keeps its fresh initial value, and the
        step counter, the learning-rate schedule and the skip counters start over."""
        self.netG.load_state_dict(state["G"])
        if self.netE is not None and (state.get("E") is not None or not fine_tune):
            if state.get("E") is None:
                raise CheckpointError("this model has a style encoder (use_vae) but the state has no 'E' weights")
            self.netE.load_state_dict(state["E"])
        if state.get("D") is not None or not fine_tune:
            self.netD.load_state_dict(state["D"])
        if fine_tune:
            self._load_optimizer_moments(state)
        else:
            self.opt_G.load_state_dict(state["opt_G"])
            self.opt_D.load_state_dict(state["opt_D"])
            self.scaler_G.load_state_dict(state["scaler_G"])
            self.scaler_D.load_state_dict(state["scaler_D"])
        if self.ema is not None:
            # a state without an EMA starts the average from the loaded weights
            self.ema.load_state_dict(state.get("ema") or _unwrap(self.generator).state_dict())
        self.step = 0 if fine_tune else int(state["step"])
        self._counters = _StepCounters(self.device)
        if not fine_tune:
            self._counters.load_state_dict(state.get("counters") or {"applied": self.step})
        self._apply_lr_schedule()

    def _load_optimizer_moments(self, parts: dict) -> None:
        for key, optimizer in (("opt_G", self.opt_G), ("opt_D", self.opt_D)):
            if parts.get(key) is not None:
                own = optimizer.state_dict()
                optimizer.load_state_dict({**own, "state": parts[key]["state"]})
        for key, scaler in (("scaler_G", self.scaler_G), ("scaler_D", self.scaler_D)):
            if parts.get(key) and scaler.is_enabled():
                scaler.load_state_dict(parts[key])


MAX_SKIPPED_IN_A_ROW = 50  # fp16 steps skipped one after the other: no scale is that wrong, the run diverged


class _StepCounters:
    """Device-side step bookkeeping, read only when the caller reads a step: updates applied, steps
    skipped (in all, and in a row), and the first step stopped by a non-finite loss (-1: none)."""

    def __init__(self, device: torch.device):
        self.values = torch.tensor([0, 0, 0, -1], dtype=torch.int64, device=device)

    @property
    def applied(self) -> torch.Tensor:
        return self.values[0]

    def halted(self) -> torch.Tensor:
        return self.values[3] >= 0

    def count(self, ok: torch.Tensor, step_number: int, halt: bool) -> None:
        """``halt`` (fp32, bf16): a step not applied stops the updates; fp16 skips it and goes on."""
        v, okl = self.values, ok.long()
        first_bad = torch.where((v[3] < 0) & ~ok, step_number, v[3]) if halt else v[3]
        self.values = torch.stack([v[0] + okl, v[1] + 1 - okl, (v[2] + 1) * (1 - okl), first_bad])

    def clear_halt(self) -> None:
        v = self.values
        self.values = torch.stack([v[0], v[1], torch.zeros_like(v[2]), torch.full_like(v[3], -1)])

    def stacked(self) -> torch.Tensor:
        return self.values[1:].double()

    def state_dict(self) -> dict:
        applied, skipped, in_a_row, first_bad = self.values.tolist()
        return {"applied": applied, "skipped": skipped, "in_a_row": in_a_row, "first_bad": first_bad}

    def load_state_dict(self, state: dict) -> None:
        keys = ("applied", "skipped", "in_a_row", "first_bad")
        defaults = {"applied": 0, "skipped": 0, "in_a_row": 0, "first_bad": -1}
        self.values = torch.tensor([int(state.get(k, defaults[k])) for k in keys], device=self.values.device)


def _to_cpu(value):
    """Tensors (inside dicts and lists too) detached, cloned onto the CPU."""
    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def ema_decay_at(applied: torch.Tensor, decay: float, warmup: bool, start_step: int) -> torch.Tensor:
    """The EMA decay of the update that follows ``applied`` applied steps (a device tensor: no sync).

    0 (the average is G itself) until ``start_step`` steps are applied; then ``decay``, or with
    ``warmup`` ``min(decay, (1 + t) / (10 + t))``, t counting the updates since ``start_step``
    (0.1, 0.18, ... 0.9 at t = 80, 0.98 at 440): with a decay of 0.995 and a start near a random or
    grey G, the plain average still holds ``decay**t`` of the start after t updates (8% at 500).
    """
    t = applied.double() - start_step
    value = torch.full_like(t, decay)
    if warmup:
        value = torch.minimum(value, (1.0 + t) / (10.0 + t))
    return torch.where(t >= 0, value, torch.zeros_like(value)).float()


@torch.no_grad()
def update_ema(ema: nn.Module, live: nn.Module, decay: torch.Tensor, ok: torch.Tensor) -> None:
    """``ema += (1 - decay) * (live - ema)`` where ``ok`` (device bools/tensors, no sync); the
    buffers (BN statistics, spectral-norm vectors) are copied from ``live``."""
    ema_params: list[torch.Tensor] = list(ema.parameters())
    live_params = [p.detach() for p in live.parameters()]
    delta = torch._foreach_sub(live_params, ema_params)
    torch._foreach_mul_(delta, ok.float() * (1.0 - decay))
    torch._foreach_add_(ema_params, delta)
    for b_ema, b_live in zip(ema.buffers(), live.buffers(), strict=True):
        b_ema.copy_(torch.where(ok, b_live, b_ema))


def _poison_first_grad(optimizer: torch.optim.Optimizer, ok: torch.Tensor) -> None:
    """One gradient element becomes NaN where ``ok`` is false: the GradScaler then skips the step
    (on the device, no sync) and lowers its scale."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p.grad[(0,) * p.grad.dim()].mul_(torch.where(ok, 1.0, float("nan")).to(p.grad.dtype))
                return


def _mean_losses(parts: list[dict]) -> dict[str, torch.Tensor]:
    """Each loss averaged over the micro-batches (detached: for the finite check and the log)."""
    return {k: torch.stack([p[k].detach().float() for p in parts]).mean() for k in parts[0]}
