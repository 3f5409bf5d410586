"""Checks of the GPU paths of training and evaluation, one markdown table row per check.

Runs with torch, torchvision and numpy only (no MLflow, pydantic or albumentations: a CUDA machine
image may lack them): it drives ``gaugan/`` and the evaluation numerics directly.

On a CUDA machine (the default) it checks:
- ``precision_auto``: native vs emulated bf16, the choice made for training and synthesis;
- ``train_auto_precision``: two training steps in that precision, finite losses;
- ``fp16_skipped_step``: a step the GradScaler skips changes no weight, EMA, learning rate or count;
- ``syncs_per_step``: host-device syncs of unread and read steps (``torch.cuda.set_sync_debug_mode``
  and the tensor methods that wait for the device), at most one per read step;
- ``resume_placement``: a checkpoint loads to the CPU and lands on the trainer's device;
- ``determinism``: two runs from one seed with ``deterministic`` on (bit-identical or how close);
- ``ddp_gloo_2ranks``: two ranks on one GPU over gloo with CUDA tensors: DDP, SyncBatchNorm, and
  buffers identical on both ranks without DDP's buffer broadcast;
- ``nccl_1rank``: a process group over NCCL with ``device_id`` and a timeout, one DDP step;
- ``eval_features_fp32``: FID features on GPU in fp32 with TF32 off against the CPU's, and the
  real-feature cache key telling them apart;
- ``uint8_batch``: uint8 images/edges converted on the device equal the float path.

``--cpu``: the reduced mode, on CPU (gloo, no SyncBatchNorm; the CUDA-only rows say ``skip``),
so the script itself is known to work. Usage: ``python -m bench.gpu_paths_check [--cpu]
[--only NAME,...] [--rows-only]``; the exit status is 1 when a check fails.

The helpers below (weights compared, the GradScalers forced, a checkpoint's tensors, optimizer state
placement, host syncs counted, a sample made float and uint8) are the ones ``tests/test_gpu_paths.py``
uses for the same paths on CPU: a check is written once.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gaugan.config import GauGANConfig
from gaugan.numerics import auto_precision, autocast_dtype, native_bf16, set_deterministic
from gaugan.trainer import GauGANTrainer, TrainOptions

# the tensor methods that wait for the device (on CUDA: a host-device sync each)
SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
OVERFLOW_SCALE = 3.0e38  # a GradScaler scale at which every gradient overflows: the scaler reports inf


def tiny_config(**kw) -> GauGANConfig:
    base = dict(label_nc=5, ngf=8, ndf=8, nef=8, z_dim=8, spade_hidden=16, n_layers_D=2, crop_size=64)
    return GauGANConfig(**{**base, "use_vae": True, "use_instance": True, **kw})


def make_batch(cfg: GauGANConfig, device: torch.device, b: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, cfg.label_nc, (b, 64, 64), generator=g)
    batch = {
        "label": label,
        "image": torch.rand(b, 3, 64, 64, generator=g) * 2 - 1,
        "edge": (torch.rand(b, 1, 64, 64, generator=g) > 0.9).float(),
    }
    return {k: v.to(device) for k, v in batch.items()}


def options(**kw) -> TrainOptions:
    return TrainOptions(**{"lambda_vgg": 0.0, "ema_decay": 0.999, **kw})


def weights(trainer: GauGANTrainer) -> dict[str, torch.Tensor]:
    named = list(trainer.generator.named_parameters(prefix="G")) + list(
        trainer.discriminator.named_parameters(prefix="D")
    )
    return {k: v.detach().clone() for k, v in named}


# ------------------------------------------------------------------------------------ helpers, shared with the tests
def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """The same names and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def at_scale(trainer: GauGANTrainer, scale: float) -> None:
    """Both GradScalers (G and D) at ``scale`` (:data:`OVERFLOW_SCALE`: the next step is skipped)."""
    for scaler in (trainer.scaler_G, trainer.scaler_D):
        scaler.load_state_dict({**scaler.state_dict(), "scale": scale})


def state_tensors(obj) -> Iterator[torch.Tensor]:
    """Every tensor in a (checkpoint) state: nested dicts, lists and tuples."""
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from state_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from state_tensors(v)


def optimizer_state_placed(trainer: GauGANTrainer) -> bool:
    """Every optimizer state tensor of G and D (Adam's moments and step) on its parameter's device."""
    return all(
        v.device == p.device
        for opt in (trainer.opt_G, trainer.opt_D)
        for g in opt.param_groups
        for p in g["params"]
        for v in opt.state[p].values()
    )


_INHERITED = object()  # a method torch.Tensor takes from its C base class: deleted again on exit


class SyncCounter:
    """Counts the calls of :data:`SYNC_METHODS` (``calls``: their names) while entered, and (CUDA)
    the sync-debug warnings of :meth:`step`."""

    def __init__(self, cuda: bool = False):
        self.calls: list[str] = []
        self.cuda = cuda
        self._saved: dict[str, object] = {}

    def __enter__(self) -> SyncCounter:
        for name in SYNC_METHODS:
            self._saved[name] = torch.Tensor.__dict__.get(name, _INHERITED)
            original = getattr(torch.Tensor, name)

            def counted(t, *args, _name=name, _original=original, **kwargs):
                self.calls.append(_name)
                return _original(t, *args, **kwargs)

            setattr(torch.Tensor, name, counted)
        return self

    def __exit__(self, *exc) -> None:
        for name, saved in self._saved.items():
            if saved is _INHERITED:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, saved)

    def step(self, fn: Callable[[], object]) -> tuple[int, int]:
        """(tensor-method calls, CUDA sync warnings) while ``fn`` runs."""
        self.calls.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if self.cuda:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                if self.cuda:
                    torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
        return len(self.calls), len(syncs)


def uint8_sample(height: int, width: int) -> dict:
    """A random sample (5 classes, 3 instances) as a dataset reads it: uint8 image and label maps."""
    rng = np.random.default_rng(0)
    return {
        "id": "a",
        "image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        "label": rng.integers(0, 5, (height, width), dtype=np.uint8),
        "instance": rng.integers(0, 3, (height, width), dtype=np.int32),
    }


def float_and_uint8(sample: dict, geometry) -> tuple[dict, dict]:
    """``sample`` through the training transform (same seed) as float tensors and as uint8 ones."""
    from gaugan.transforms import PairTransform

    return PairTransform(geometry, True)(sample, seed=3), PairTransform(geometry, True, uint8=True)(sample, seed=3)


def network_inputs(trainer: GauGANTrainer, sample: dict) -> tuple[torch.Tensor, ...]:
    """What the trainer feeds its networks for a batch of one transformed ``sample``, on its device."""
    return trainer._prepare({k: v.unsqueeze(0).to(trainer.device) for k, v in sample.items() if k != "id"})


# ------------------------------------------------------------------------------------ checks
def check_precision_auto(device: torch.device) -> tuple[bool | None, str]:
    choice = auto_precision(device)
    if device.type != "cuda":
        return choice == "fp32" and autocast_dtype(device) is None, f"cpu -> {choice}"
    cap = torch.cuda.get_device_capability(device)
    expected = "bf16" if cap >= (8, 0) else "fp16"
    emulated = torch.cuda.is_bf16_supported()
    detail = (
        f"{torch.cuda.get_device_name(device)} sm_{cap[0]}{cap[1]}: native bf16 {native_bf16(device)}, "
        f"bf16 incl. emulation {emulated} -> {choice}"
    )
    return choice == expected, detail


def check_train_auto_precision(device: torch.device) -> tuple[bool | None, str]:
    precision = auto_precision(device)
    cfg = tiny_config()
    torch.manual_seed(0)
    trainer = GauGANTrainer(cfg, options(precision=precision, channels_last=device.type == "cuda"), device)
    losses = [trainer.train_step(make_batch(cfg, device, seed=s)) for s in range(2)]
    finite = all(math.isfinite(v) for step in losses for v in step.values())
    shown = ", ".join(f"{k} {v:.3f}" for k, v in losses[-1].items() if k in ("G_GAN", "D_real", "D_Fake"))
    return finite, f"{precision}: {shown}; skipped {losses[-1]['skipped_steps']:.0f}"


def check_fp16_skipped_step(device: torch.device) -> tuple[bool | None, str]:
    cfg = tiny_config()
    torch.manual_seed(0)
    trainer = GauGANTrainer(cfg, options(precision="fp16", total_steps=10, decay_start_step=0), device)
    at_scale(trainer, 1024.0)
    first = trainer.train_step(make_batch(cfg, device, seed=0))
    before, ema = weights(trainer), {k: v.clone() for k, v in trainer.ema.state_dict().items()}
    at_scale(trainer, OVERFLOW_SCALE)
    skipped = trainer.train_step(make_batch(cfg, device, seed=1))
    kept = same(before, weights(trainer)) and all(torch.equal(v, trainer.ema.state_dict()[k]) for k, v in ema.items())
    lr_kept = skipped["lr_G"] == first["lr_G"]
    counted = skipped["skipped_steps"] - first["skipped_steps"] == 1 and trainer.step == 2
    backed_off = trainer.scaler_G.get_scale() < OVERFLOW_SCALE
    at_scale(trainer, 1024.0)
    trainer.train_step(make_batch(cfg, device, seed=2))
    applied = not same(before, weights(trainer))
    ok = kept and lr_kept and counted and backed_off and applied
    detail = (
        f"weights+EMA kept {kept}, lr kept {lr_kept}, counted as skipped {counted}, scale backed off {backed_off}, "
        f"next step applied {applied}"
    )
    return ok, detail


def check_syncs_per_step(device: torch.device) -> tuple[bool | None, str]:
    parts, ok = [], True
    for precision in dict.fromkeys(("fp32", auto_precision(device), "fp16")):
        cfg = tiny_config()
        torch.manual_seed(0)
        trainer = GauGANTrainer(cfg, options(precision=precision, total_steps=8, decay_start_step=1), device)
        batches = [make_batch(cfg, device, seed=s) for s in range(4)]
        trainer.train_step(batches[0])  # lazy optimizer and scaler state: out of the count
        with SyncCounter(device.type == "cuda") as counter:
            unread = [counter.step(lambda b=b, t=trainer: t.train_step(b, read=False)) for b in batches[1:3]]
            read = counter.step(lambda b=batches[3], t=trainer: t.train_step(b))
        ok = ok and all(u == (0, 0) for u in unread) and read[0] <= 1 and read[1] <= 1
        parts.append(f"{precision}: unread {unread}, read {read}")
    return ok, "(method calls, CUDA sync warnings) per step; " + "; ".join(parts)


def check_resume_placement(device: torch.device) -> tuple[bool | None, str]:
    from pipeline.training.checkpoints import CheckpointStore

    cfg = tiny_config()
    torch.manual_seed(0)
    source = GauGANTrainer(cfg, options(), device)
    source.train_step(make_batch(cfg, device))
    with tempfile.TemporaryDirectory() as tmp:
        store = CheckpointStore(Path(tmp))
        store.save({"fingerprint": "f", "step": 1, "trainer": source.state_dict()}, [])
        allocated = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        state = store.load("f")
        grew = (torch.cuda.memory_allocated(device) - allocated) if device.type == "cuda" else 0
    assert state is not None
    on_cpu = all(t.device.type == "cpu" for t in state_tensors(state))
    torch.manual_seed(1)
    target = GauGANTrainer(cfg, options(), device)
    target.load_state_dict(state["trainer"])
    placed = optimizer_state_placed(target)
    lr_placed = all(
        torch.as_tensor(o.param_groups[0]["lr"]).device == target.device for o in (target.opt_G, target.opt_D)
    )
    equal = same(weights(source), weights(target))
    ok = on_cpu and grew == 0 and placed and lr_placed and equal
    return ok, f"loaded on CPU {on_cpu} (GPU memory +{grew} B), optimizer state on {device} {placed}, lr {lr_placed}"


def check_determinism(device: torch.device) -> tuple[bool | None, str]:
    def run() -> dict:
        cfg = tiny_config()
        torch.manual_seed(0)
        trainer = GauGANTrainer(cfg, options(precision=auto_precision(device)), device)
        for s in range(3):
            torch.manual_seed(100 + s)
            trainer.train_step(make_batch(cfg, device, seed=s), read=s == 2)
        return weights(trainer)

    set_deterministic(True)
    try:
        a, b = run(), run()
    finally:
        set_deterministic(False)
    benchmark = torch.backends.cudnn.benchmark
    bitwise = same(a, b)
    diff = 0.0 if bitwise else max_diff(a, b)
    ok = bitwise if device.type != "cuda" else diff < 1e-3
    return (
        ok and benchmark,
        f"deterministic on: bit-identical {bitwise} (max abs diff {diff:.2e}); off: benchmark {benchmark}",
    )


def _ddp_worker(rank: int, world: int, kind: str, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    device = torch.device("cuda", 0) if kind == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=300)
    )
    try:
        cfg = tiny_config()
        torch.manual_seed(0)
        trainer = GauGANTrainer(cfg, options(precision=auto_precision(device)), device)
        trainer.distribute(device_ids=[0] if device.type == "cuda" else None)
        for s in range(3):
            torch.manual_seed(1000 * s + rank)  # each rank its own noise, as in the training loop
            trainer.train_step(make_batch(cfg, device, seed=world * s + rank), read=s == 2)
        sync_bn = sum(type(m).__name__ == "SyncBatchNorm" for m in trainer.generator.modules())
        buffers = {f"G.{k}": v.cpu() for k, v in trainer.generator.named_buffers()}
        buffers.update({f"D.{k}": v.cpu() for k, v in trainer.discriminator.named_buffers()})
        out = {
            "weights": {k: v.cpu() for k, v in weights(trainer).items()},
            "buffers": buffers,
            "sync_bn": sync_bn,
            "broadcast": bool(trainer._G.broadcast_buffers),
        }
        torch.save(out, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def check_ddp_gloo_2ranks(device: torch.device) -> tuple[bool | None, str]:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ddp_worker, args=(2, device.type, f"{tmp}/init", tmp), nprocs=2, join=True)
        r0, r1 = (torch.load(f"{tmp}/rank{r}.pt", weights_only=True) for r in (0, 1))
    same_weights = same(r0["weights"], r1["weights"])
    # spectral norm's u/v: identical by construction; BatchNorm statistics only with SyncBatchNorm
    names = [k for k in r0["buffers"] if device.type == "cuda" or "running" not in k and "num_batches" not in k]
    differ = [k for k in names if not torch.equal(r0["buffers"][k], r1["buffers"][k])]
    ok = same_weights and not differ and not r0["broadcast"] and (device.type != "cuda" or r0["sync_bn"] > 0)
    detail = (
        f"{device.type} tensors: weights identical {same_weights}, {len(names) - len(differ)}/{len(names)} buffers "
        f"identical without broadcast{' (differ: ' + ', '.join(differ[:3]) + ')' if differ else ''}, "
        f"SyncBatchNorm layers in G {r0['sync_bn']}"
    )
    return ok, detail


def check_nccl_1rank(device: torch.device) -> tuple[bool | None, str]:
    if device.type != "cuda" or not dist.is_nccl_available():
        return None, "needs CUDA and NCCL"
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(
            "nccl",
            init_method=f"file://{tmp}/init",
            rank=0,
            world_size=1,
            timeout=timedelta(seconds=120),
            device_id=device,
        )
        try:
            cfg = tiny_config()
            torch.manual_seed(0)
            trainer = GauGANTrainer(cfg, options(precision=auto_precision(device)), device)
            trainer.distribute(device_ids=[device.index])
            losses = [trainer.train_step(make_batch(cfg, device, seed=s), read=s == 1) for s in range(2)]
            dist.barrier()
        finally:
            dist.destroy_process_group()
    finite = all(math.isfinite(v) for v in losses[-1].values())
    return finite, f"device_id {device}, 2 DDP steps, losses finite {finite}"


def check_eval_features_fp32(device: torch.device) -> tuple[bool | None, str]:
    from pipeline.evaluation.feature_stats import frechet_distance
    from pipeline.evaluation.features import build_backbone

    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (64, 3, 64, 64), dtype=np.uint8))
    cpu = build_backbone("tiny", tiny_dim=64)
    ref = cpu.extract(images, "cpu")
    if device.type != "cuda":
        return None, f"key {cpu.key.rsplit('-', 2)[-2:]}; the GPU comparison needs CUDA"
    gpu = build_backbone("tiny", tiny_dim=64)
    gpu.module.to(device)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        fp32, key = gpu.extract(images, device), gpu.key
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        tf32 = gpu.extract(images, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    rel = float((fp32 - ref).abs().max() / ref.abs().max())
    rel_tf32 = float((tf32 - ref).abs().max() / ref.abs().max())
    fid = frechet_distance(ref, fp32)
    ok = rel < 1e-4 and key != cpu.key and fp32.dtype == torch.float32
    detail = (
        f"fp32 vs CPU max rel diff {rel:.1e} (TF32 on: {rel_tf32:.1e}), FID(CPU, GPU) {fid:.2e}; "
        f"keys differ {key != cpu.key}"
    )
    return ok, detail


def check_uint8_batch(device: torch.device) -> tuple[bool | None, str]:
    from gaugan.transforms import Geometry

    geometry = Geometry(load_size=72, crop_size=64, aspect_ratio=1.0, flip=True, preprocess_mode="resize_and_crop")
    as_float, as_uint8 = float_and_uint8(uint8_sample(72, 80), geometry)
    trainer = GauGANTrainer(tiny_config(), options(), device)
    a, b = network_inputs(trainer, as_float), network_inputs(trainer, as_uint8)
    equal = all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    sent = sum(v.numel() * v.element_size() for k, v in as_uint8.items() if k != "id")
    sent_float = sum(v.numel() * v.element_size() for k, v in as_float.items() if k != "id")
    return equal, f"same network inputs {equal}; {sent} bytes per sample instead of {sent_float}"


CHECKS: dict[str, Callable[[torch.device], tuple[bool | None, str]]] = {
    "precision_auto": check_precision_auto,
    "train_auto_precision": check_train_auto_precision,
    "fp16_skipped_step": check_fp16_skipped_step,
    "syncs_per_step": check_syncs_per_step,
    "resume_placement": check_resume_placement,
    "determinism": check_determinism,
    "ddp_gloo_2ranks": check_ddp_gloo_2ranks,
    "nccl_1rank": check_nccl_1rank,
    "eval_features_fp32": check_eval_features_fp32,
    "uint8_batch": check_uint8_batch,
}


def row(name: str, result: str, detail: str) -> str:
    return f"| {name} | {result} | {detail.replace('|', '/')} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the reduced mode on CPU (CUDA-only checks: skip)")
    parser.add_argument("--only", default="", help="comma-separated check names")
    parser.add_argument("--rows-only", action="store_true", help="no table header")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_paths_check: no CUDA device visible; run with --cpu for the reduced mode", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.cpu else torch.device("cuda", 0)
    names = [n for n in args.only.split(",") if n] or list(CHECKS)
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        print(f"gpu_paths_check: unknown checks {unknown}; known: {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts: determinism check
    if not args.rows_only:
        print(f"| check ({device}, torch {torch.__version__}) | result | detail |")
        print("|---|---|---|")
    failed = False
    for name in names:
        try:
            ok, detail = CHECKS[name](device)
        except Exception as err:  # noqa: BLE001 - a failing check is a FAIL row, the others still run
            ok, detail = False, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            traceback.print_exc(file=sys.stderr)
        result = "skip" if ok is None else ("ok" if ok else "FAIL")
        failed = failed or result == "FAIL"
        print(row(name, result, detail), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
