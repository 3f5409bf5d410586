"""One GAN training step at a time: a generator step, then a discriminator step on the same fake.

The trainer owns the networks, the optimizers (two-time-scale rule), the learning-rate decay,
mixed precision, the generator EMA and DDP wrapping. The caller owns data, logging and
checkpoint files: ``hooks`` are called after each step, ``state_dict`` holds everything a resumed
run needs to continue bit-identically.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from gaugan.config import GauGANConfig
from gaugan.discriminator import MultiscaleDiscriminator
from gaugan.encoder import ConvEncoder, reparameterize
from gaugan.encoding import encode_labels
from gaugan.generator import SPADEGenerator
from gaugan.losses import VGGLoss, feature_matching_loss, hinge_d_loss, hinge_g_loss, kl_loss


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; raised before any optimizer step used it."""


@dataclass
class TrainOptions:
    lr: float = 2e-4
    beta1: float = 0.0
    beta2: float = 0.9
    ttur: bool = True
    lambda_feat: float = 10.0
    lambda_vgg: float = 10.0
    lambda_kld: float = 0.05
    vgg_weights: str | None = None
    ema_decay: float | None = 0.999
    precision: str = "fp32"  # fp32 | bf16 | fp16
    channels_last: bool = False
    compile: bool = False
    total_steps: int = 1
    decay_start_step: int | None = None


class GeneratorModel(nn.Module):
    """G and, for multimodal models, the style encoder E: one module so one DDP wraps both."""

    def __init__(self, config: GauGANConfig):
        super().__init__()
        self.netG = SPADEGenerator(config)
        self.netE = ConvEncoder(config) if config.use_vae else None

    def forward(self, semantics: torch.Tensor, image: torch.Tensor | None = None):
        mu = logvar = z = None
        if self.netE is not None and image is not None:
            mu, logvar = self.netE(image)
            z = reparameterize(mu, logvar)
        return self.netG(semantics, z), mu, logvar


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """SyncBatchNorm for multi-GPU runs; only valid on CUDA (it raises on CPU modules)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


class GauGANTrainer:
    def __init__(self, config: GauGANConfig, options: TrainOptions, device: torch.device | str = "cpu"):
        self.config = config
        self.options = options
        self.device = torch.device(device)
        if options.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {options.precision!r}")
        self.generator = GeneratorModel(config).to(self.device)
        self.discriminator = MultiscaleDiscriminator(config).to(self.device)
        self.vgg_loss = None
        if options.lambda_vgg > 0:
            from gaugan.vgg import VGG19Features

            self.vgg_loss = VGGLoss(VGG19Features(options.vgg_weights)).to(self.device)
        if options.channels_last:
            self.generator.to(memory_format=torch.channels_last)
            self.discriminator.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.generator).eval().requires_grad_(False) if options.ema_decay else None

        if options.ttur:
            lr_G, lr_D, betas = options.lr / 2, options.lr * 2, (0.0, 0.9)
        else:
            lr_G, lr_D, betas = options.lr, options.lr, (options.beta1, options.beta2)
        self.base_lr = {"G": lr_G, "D": lr_D}
        self.opt_G = torch.optim.Adam(self.generator.parameters(), lr=lr_G, betas=betas)
        self.opt_D = torch.optim.Adam(self.discriminator.parameters(), lr=lr_D, betas=betas)
        fp16 = options.precision == "fp16"
        self.scaler_G = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_D = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.step = 0
        self.hooks: list = []
        # The modules the steps call; distribute() and compile swap in wrapped versions.
        self._G: nn.Module = self.generator
        self._D: nn.Module = self.discriminator
        if options.compile:
            self._G = torch.compile(self._G)
            self._D = torch.compile(self._D)

    # ------------------------------------------------------------------ set-up
    def distribute(self, device_ids: list[int] | None = None) -> None:
        """Wrap G(+E) and D in DistributedDataParallel (the process group must exist)."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        if self.device.type == "cuda":
            self.generator = convert_sync_batchnorm(self.generator)
            self.discriminator = convert_sync_batchnorm(self.discriminator)
        self._G = DDP(self.generator, device_ids=device_ids)
        self._D = DDP(self.discriminator, device_ids=device_ids)
        if self.options.compile:
            self._G = torch.compile(self._G)
            self._D = torch.compile(self._D)

    def _autocast(self):
        if self.options.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.options.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _d_no_sync(self):
        return self._D.no_sync() if hasattr(self._D, "no_sync") else contextlib.nullcontext()

    def _prepare(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        edges = batch.get("edge") if self.config.use_instance else None
        if self.config.use_instance and edges is None:
            raise ValueError("the model uses instance edges but the batch has no 'edge' tensor")
        semantics = encode_labels(batch["label"].to(self.device), self.config.label_nc,
                                  self.config.contain_dontcare_label,
                                  edges.to(self.device) if edges is not None else None)
        image = batch["image"].to(self.device)
        if self.options.channels_last:
            semantics = semantics.contiguous(memory_format=torch.channels_last)
            image = image.contiguous(memory_format=torch.channels_last)
        return semantics, image

    def _discriminate(self, semantics, fake, real):
        """D on fake and real in one pass (instance norm keeps samples independent)."""
        both = torch.cat([torch.cat([semantics, fake], 1), torch.cat([semantics, real], 1)], 0)
        preds = self._D(both)
        n = fake.shape[0]
        return [[f[:n] for f in scale] for scale in preds], [[f[n:] for f in scale] for scale in preds]

    def _check_finite(self, losses: dict[str, torch.Tensor], total: torch.Tensor) -> None:
        finite = torch.isfinite(total.detach()).float().reshape(1)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # every rank stops together
        if finite.item() < 1:
            bad = [k for k, v in losses.items() if not torch.isfinite(v.detach()).all()]
            detail = ", ".join(f"{k}={losses[k].item()}" for k in bad) or "on another process"
            raise NonFiniteLossError(f"non-finite loss at step {self.step + 1}: {detail}")

    # ------------------------------------------------------------------ steps
    def generator_step(self, batch: dict) -> tuple[dict[str, float], torch.Tensor]:
        semantics, real = self._prepare(batch)
        self.opt_G.zero_grad(set_to_none=True)
        with self._d_no_sync():  # D's gradients here are thrown away: no need to all-reduce them
            with self._autocast():
                fake, mu, logvar = self._G(semantics, real if self.config.use_vae else None)
                pred_fake, pred_real = self._discriminate(semantics, fake, real)
                losses = {"G_GAN": hinge_g_loss(pred_fake)}
                if self.options.lambda_feat > 0:
                    losses["G_GAN_Feat"] = feature_matching_loss(pred_fake, pred_real, self.options.lambda_feat)
                if self.vgg_loss is not None:
                    losses["G_VGG"] = self.vgg_loss(fake.float(), real.float()) * self.options.lambda_vgg
                if mu is not None:
                    losses["KLD"] = kl_loss(mu.float(), logvar.float()) * self.options.lambda_kld
            total = sum(v.float() for v in losses.values())
            self._check_finite(losses, total)
            self.scaler_G.scale(total).backward()
        self.scaler_G.step(self.opt_G)
        self.scaler_G.update()
        return {k: v.item() for k, v in losses.items()}, fake.detach()

    def discriminator_step(self, batch: dict, fake: torch.Tensor) -> dict[str, float]:
        semantics, real = self._prepare(batch)
        self.opt_D.zero_grad(set_to_none=True)
        with self._autocast():
            pred_fake, pred_real = self._discriminate(semantics, fake.detach(), real)
            losses = {"D_Fake": hinge_d_loss(pred_fake, real=False), "D_real": hinge_d_loss(pred_real, real=True)}
        total = sum(v.float() for v in losses.values())
        self._check_finite(losses, total)
        self.scaler_D.scale(total).backward()
        self.scaler_D.step(self.opt_D)
        self.scaler_D.update()
        return {k: v.item() for k, v in losses.items()}

    def train_step(self, batch: dict) -> dict[str, float]:
        g_losses, fake = self.generator_step(batch)
        d_losses = self.discriminator_step(batch, fake)
        self._update_ema()
        self.step += 1
        self._apply_lr_schedule()
        losses = {**g_losses, **d_losses, "lr_G": self.opt_G.param_groups[0]["lr"], "lr_D": self.opt_D.param_groups[0]["lr"]}
        for hook in self.hooks:
            hook(self.step, losses)
        return losses

    # ------------------------------------------------------------------ schedule and EMA
    def lr_factor(self, step: int) -> float:
        start, total = self.options.decay_start_step, self.options.total_steps
        if start is None or step < start or total <= start:
            return 1.0
        return max(0.0, 1.0 - (step - start) / (total - start))

    def _apply_lr_schedule(self) -> None:
        factor = self.lr_factor(self.step)
        for group in self.opt_G.param_groups:
            group["lr"] = self.base_lr["G"] * factor
        for group in self.opt_D.param_groups:
            group["lr"] = self.base_lr["D"] * factor

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        decay = self.options.ema_decay
        live = dict(self.generator.named_parameters())
        for name, p in self.ema.named_parameters():
            p.lerp_(live[name].detach().to(p.dtype), 1.0 - decay)
        live_buffers = dict(self.generator.named_buffers())
        for name, b in self.ema.named_buffers():
            b.copy_(live_buffers[name])

    # ------------------------------------------------------------------ state
    def inference_generator(self) -> tuple[nn.Module, nn.Module | None]:
        """(G, E) for evaluation and export: the EMA weights when on, in eval mode, unwrapped."""
        source = self.ema if self.ema is not None else self.generator
        # A fresh module loaded from the state dict: deepcopy fails on spectral-norm modules that
        # have run a forward pass (their computed weight is not a graph leaf). SyncBatchNorm and
        # BatchNorm2d share their state dict, so this also gives a model that runs anywhere.
        model = GeneratorModel(self.config).to(self.device)
        model.load_state_dict(source.state_dict())
        model.eval()
        return model.netG, model.netE

    def state_dict(self) -> dict:
        state = {
            "G": self.generator.netG.state_dict(),
            "E": self.generator.netE.state_dict() if self.generator.netE is not None else None,
            "D": self.discriminator.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "scaler_G": self.scaler_G.state_dict(),
            "scaler_D": self.scaler_D.state_dict(),
            "step": self.step,
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.generator.netG.load_state_dict(state["G"])
        if self.generator.netE is not None:
            self.generator.netE.load_state_dict(state["E"])
        self.discriminator.load_state_dict(state["D"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.scaler_G.load_state_dict(state["scaler_G"])
        self.scaler_D.load_state_dict(state["scaler_D"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        self._apply_lr_schedule()
