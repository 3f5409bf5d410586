"""The GPU paths checked on CPU: precision choice, skipped fp16 steps, gated updates without host
syncs, resume placement, determinism switches, process-group set-up, uint8 batches.

The helpers are bench.gpu_paths_check's, which checks the same paths on a GPU (run from the
repository root, as ``python -m pytest`` does: ``bench`` is not an installed package)."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
import torch
from conftest import random_batch, tiny_config, train_options, trainer_weights

import gaugan.numerics as numerics
from bench.gpu_paths_check import (
    OVERFLOW_SCALE,
    SyncCounter,
    at_scale,
    float_and_uint8,
    network_inputs,
    optimizer_state_placed,
    same,
    state_tensors,
    uint8_sample,
)
from gaugan.config import GauGANConfig
from gaugan.trainer import MAX_SKIPPED_IN_A_ROW, GauGANTrainer, NonFiniteLossError


def tiny(**kw) -> GauGANConfig:
    return tiny_config(**{"label_nc": 5, **kw})


# ------------------------------------------------------------------------------------ precision
@pytest.mark.parametrize(("native", "emulated", "expected"), [(True, True, "bf16"), (False, True, "fp16")])
def test_auto_precision_tells_native_from_emulated_bf16(monkeypatch, native, emulated, expected):
    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return emulated if including_emulation else native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    from pipeline.training.settings import resolve_precision

    cuda = torch.device("cuda", 0)
    assert numerics.auto_precision(cuda) == expected == resolve_precision("auto", cuda)
    assert numerics.autocast_dtype(cuda) == {"bf16": torch.bfloat16, "fp16": torch.float16}[expected]
    assert numerics.auto_precision("cpu") == "fp32" and numerics.autocast_dtype("cpu") is None


def test_the_synthesizer_and_the_eval_record_use_the_same_choice(monkeypatch):
    import gaugan.synthesizer as synthesizer
    from pipeline.evaluation.inputs import precision_record

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    assert synthesizer.autocast_dtype is numerics.autocast_dtype
    record = precision_record(torch.device("cuda", 0))
    assert record["generator"] == "fp16-autocast" and record["device"] == "cuda:0"


# ------------------------------------------------------------------------------------ skipped steps
def test_a_step_the_fp16_scaler_skips_is_skipped_everywhere_and_the_run_goes_on():
    cfg = tiny(use_vae=True)
    torch.manual_seed(0)
    trainer = GauGANTrainer(cfg, train_options(precision="fp16", ema_decay=0.9, total_steps=10, decay_start_step=0))
    at_scale(trainer, 1024.0)
    assert trainer.train_step(random_batch(cfg, seed=0))["skipped_steps"] == 0.0
    before = trainer_weights(trainer)
    ema_before = {k: v.clone() for k, v in trainer.ema.state_dict().items()}
    adam_steps = [s["step"].clone() for s in trainer.opt_G.state.values()]
    lr_before = float(trainer.opt_G.param_groups[0]["lr"])
    at_scale(trainer, OVERFLOW_SCALE)
    losses = trainer.train_step(random_batch(cfg, seed=1))  # no NonFiniteLossError: fp16 skips and goes on
    assert all(math.isfinite(losses[k]) for k in ("G_GAN", "D_real"))  # finite losses, inf gradients
    assert losses["skipped_steps"] == 1.0 and trainer.step == 2
    assert same(before, trainer_weights(trainer))  # no G or D update
    assert all(torch.equal(v, trainer.ema.state_dict()[k]) for k, v in ema_before.items())  # no EMA update
    assert [s["step"] for s in trainer.opt_G.state.values()] == adam_steps  # Adam's count kept
    assert losses["lr_G"] == pytest.approx(lr_before) and float(trainer.opt_G.param_groups[0]["lr"]) == lr_before
    assert trainer.state_dict()["counters"]["applied"] == 1
    assert trainer.scaler_G.get_scale() == pytest.approx(1.5e38)  # the scaler backed off
    # the next step at a sane scale is applied, and the schedule moves on from the applied count
    at_scale(trainer, 1024.0)
    losses = trainer.train_step(random_batch(cfg, seed=2))
    assert not same(before, trainer_weights(trainer)) and losses["skipped_steps"] == 1.0
    assert losses["lr_G"] == pytest.approx(1e-4 * (1 - 2 / 10))


def test_fp16_stops_after_too_many_skipped_steps_in_a_row():
    cfg = tiny()
    torch.manual_seed(0)
    trainer = GauGANTrainer(cfg, train_options(precision="fp16"))
    trainer._counters.load_state_dict({"in_a_row": MAX_SKIPPED_IN_A_ROW - 1, "skipped": MAX_SKIPPED_IN_A_ROW - 1})
    at_scale(trainer, OVERFLOW_SCALE)
    with pytest.raises(NonFiniteLossError, match=f"{MAX_SKIPPED_IN_A_ROW} fp16 steps in a row"):
        trainer.train_step(random_batch(cfg))


def test_unread_fp32_steps_stop_updating_at_the_first_non_finite_loss():
    """Without a sync per step, a NaN is found at the next read step; nothing after it was applied."""
    cfg = tiny(use_vae=True)
    torch.manual_seed(0)
    trainer = GauGANTrainer(cfg, train_options(ema_decay=0.9))
    trainer.train_step(random_batch(cfg, seed=0), read=False)
    good, ema_good = trainer_weights(trainer), {k: v.clone() for k, v in trainer.ema.state_dict().items()}
    bad = random_batch(cfg, seed=1)
    bad["image"][0, 0, 3, 3] = float("nan")
    out = trainer.train_step(bad, read=False)
    assert all(torch.is_tensor(v) and v.dim() == 0 for v in out.values())  # unread: device tensors
    trainer.train_step(random_batch(cfg, seed=2), read=False)  # finite, but after the NaN: not applied
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 2 \(found at step 4\)"):
        trainer.train_step(random_batch(cfg, seed=3))
    assert same(good, trainer_weights(trainer))
    assert all(torch.equal(v, trainer.ema.state_dict()[k]) for k, v in ema_good.items())
    assert trainer.state_dict()["counters"] == {"applied": 1, "skipped": 3, "in_a_row": 0, "first_bad": -1}
    assert math.isfinite(trainer.train_step(random_batch(cfg, seed=4))["G_GAN"])  # reported: training may go on
    assert not same(good, trainer_weights(trainer))


# ------------------------------------------------------------------------------------ host syncs
@pytest.fixture
def sync_counter():
    """The names of the tensor methods that wait for the device (on CUDA: a host-device sync), as called."""
    with SyncCounter() as counter:
        yield counter.calls


@pytest.mark.parametrize(
    "options",
    [
        {"ema_decay": 0.9, "total_steps": 6, "decay_start_step": 1},
        {"d_fake": "regenerate", "accumulation": 2},
        {"precision": "fp16"},
    ],
    ids=["fp32-ema-decay", "regenerate-accumulation", "fp16"],
)
def test_an_unread_step_waits_for_nothing_and_a_read_step_once(sync_counter, options):
    cfg = tiny(use_vae=True, use_instance=True)
    torch.manual_seed(0)
    trainer = GauGANTrainer(cfg, train_options(**options))
    trainer.train_step(random_batch(cfg, seed=0))  # first-step set-up (optimizer state) out of the count
    per_step = []
    for s in range(1, 4):
        sync_counter.clear()
        trainer.train_step(random_batch(cfg, seed=s), read=s == 3)
        per_step.append(list(sync_counter))
    assert per_step == [[], [], ["tolist"]]


def test_the_training_loop_reads_once_per_logged_step(sync_counter, monkeypatch):
    from pipeline.distributed import DistContext
    from pipeline.training.loop import TrainingLoop

    cfg = tiny()
    torch.manual_seed(0)
    trainer = GauGANTrainer(cfg, train_options())
    t = {"max_steps": 5, "log_every": 2, "checkpoint_every": 100, "sample_every": 100, "batch_size": 2}
    settings = type("S", (), t)()
    loop = TrainingLoop(trainer, DistContext(1, 2, 1, torch.device("cpu"), None), settings, 0, None, None, None, "")
    reads = []
    original = trainer._read
    monkeypatch.setattr(trainer, "_read", lambda losses: reads.append(trainer.step + 1) or original(losses))
    monkeypatch.setattr(loop, "checkpoint", lambda step: None)
    sync_counter.clear()
    loop.run([random_batch(cfg, seed=s) for s in range(5)], 0)
    assert reads == [2, 4, 5]
    assert sync_counter.count("tolist") == 3 and len(sync_counter) <= 3 + 1  # + the first step's set-up


def test_encode_labels_checks_off_the_hot_path_only_when_asked():
    from gaugan.encoding import encode_labels
    from gaugan.errors import InputError

    label = torch.tensor([[[0, 1], [255, 6]]])
    with pytest.raises(InputError, match="label value 6"):
        encode_labels(label, 5, True)
    ok = torch.tensor([[[0, 1], [255, 4]]])
    assert torch.equal(encode_labels(ok, 5, True, check=False), encode_labels(ok, 5, True))


# ------------------------------------------------------------------------------------ resume placement
def test_resume_loads_to_cpu_then_places_on_the_trainer_device(tmp_path, monkeypatch):
    import pipeline.training.checkpoints as checkpoints
    from pipeline.distributed import DistContext
    from pipeline.training.session import restore

    cfg = tiny()
    torch.manual_seed(0)
    source = GauGANTrainer(cfg, train_options(total_steps=4, decay_start_step=0))
    source.train_step(random_batch(cfg))
    store = checkpoints.CheckpointStore(tmp_path)
    store.save({"fingerprint": "f", "step": 1, "mlflow_run_id": None, "trainer": source.state_dict()}, [])

    # a checkpoint written on GPU 3 by rank 0: torch.load must move it to the CPU, never to a GPU
    seen = {}
    real_load = torch.load

    def load(path, map_location=None, **kw):
        seen["map_location"] = map_location
        return real_load(path, map_location={"cuda:3": "cpu"} if map_location is None else map_location, **kw)

    monkeypatch.setattr(checkpoints.torch, "load", load)
    state = store.load("f")
    assert seen["map_location"] == "cpu"
    tensors = list(state_tensors(state))
    assert tensors and all(t.device.type == "cpu" for t in tensors)

    # another rank gets the state broadcast (not from its disk) and places it itself
    import pipeline.distributed as distributed

    def broadcast(holder, src, device=None):
        assert holder == [None] and src == 0
        holder[0] = state

    monkeypatch.setattr(distributed.dist, "broadcast_object_list", broadcast)
    monkeypatch.setattr(store, "load", lambda fp: pytest.fail("only rank 0 reads the checkpoint"))
    torch.manual_seed(1)
    target = GauGANTrainer(cfg, train_options(total_steps=4, decay_start_step=0))
    monkeypatch.setattr(target, "distribute", lambda **kw: None)
    step, _ = restore(target, store, "f", DistContext(1, 2, 1, torch.device("cpu"), "gloo"), "auto")
    assert step == 1 and same(trainer_weights(source), trainer_weights(target))
    for opt in (target.opt_G, target.opt_D):
        lr = opt.param_groups[0]["lr"]
        assert torch.is_tensor(lr) and lr.device == target.device
    assert optimizer_state_placed(target)
    assert target.state_dict()["counters"]["applied"] == 1


def test_a_checkpoint_without_counters_resumes_with_its_step():
    cfg = tiny()
    torch.manual_seed(0)
    trainer = GauGANTrainer(cfg, train_options(total_steps=4, decay_start_step=0))
    trainer.train_step(random_batch(cfg))
    state = trainer.state_dict()
    del state["counters"]
    state["opt_G"]["param_groups"][0]["lr"] = 0.5  # an older file: numbers, not tensors
    other = GauGANTrainer(cfg, train_options(total_steps=4, decay_start_step=0))
    other.load_state_dict(state)
    assert other.state_dict()["counters"]["applied"] == 1
    assert float(other.opt_G.param_groups[0]["lr"]) == pytest.approx(1e-4 * 3 / 4)


# ------------------------------------------------------------------------------------ determinism, process group
def test_deterministic_switches():
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    saved_algos = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        numerics.set_deterministic(False)
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        assert not torch.are_deterministic_algorithms_enabled()
        numerics.set_deterministic(True)
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert not torch.utils.deterministic.fill_uninitialized_memory  # no memset per allocation
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
        torch.use_deterministic_algorithms(saved_algos[0], warn_only=saved_algos[1])


@pytest.mark.parametrize("cuda", [False, True])
def test_process_group_gets_the_timeout_and_nccl_the_device(monkeypatch, cuda):
    import pipeline.distributed as distributed

    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: seen.update(kw))
    if cuda:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: seen.setdefault("set_device", d))
    ctx = distributed.init_distributed("auto", timeout_s=123)
    assert seen["timeout"] == timedelta(seconds=123)
    assert seen["backend"] == ("nccl" if cuda else "gloo") == ctx.backend
    assert seen["device_id"] == (torch.device("cuda", 1) if cuda else None)


def test_ddp_does_not_broadcast_buffers(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        trainer = GauGANTrainer(tiny(), train_options(), "cpu")
        trainer.distribute()
        assert trainer._G.broadcast_buffers is False and trainer._D.broadcast_buffers is False
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------ uint8 batches
def test_uint8_batches_train_exactly_as_float_ones():
    from gaugan.transforms import Geometry

    geometry = Geometry(load_size=36, crop_size=32, aspect_ratio=1.0, flip=True, preprocess_mode="resize_and_crop")
    as_float, as_uint8 = float_and_uint8(uint8_sample(40, 48), geometry)
    assert as_uint8["image"].dtype == torch.uint8 and as_uint8["edge"].dtype == torch.uint8
    cfg = tiny(use_instance=True, crop_size=32)
    trainer = GauGANTrainer(cfg, train_options())
    for a, b in zip(network_inputs(trainer, as_float), network_inputs(trainer, as_uint8), strict=True):
        assert torch.equal(a, b)


def test_loader_workers_limit_opencv_threads(monkeypatch):
    import sys
    import types

    from pipeline.training.loader import limit_worker_threads

    fake = types.SimpleNamespace(threads=None)
    fake.setNumThreads = lambda n: setattr(fake, "threads", n)
    monkeypatch.setitem(sys.modules, "cv2", fake)
    threads = torch.get_num_threads()
    try:
        limit_worker_threads(0)
        assert fake.threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------ evaluation
def test_real_feature_cache_key_holds_device_and_arithmetic(monkeypatch):
    import types

    from pipeline.evaluation.features import FeatureBackbone, build_backbone

    cpu = build_backbone("tiny", tiny_dim=16)
    assert cpu.key.endswith("-cpu-fp32")
    fake_gpu = types.SimpleNamespace(parameters=lambda: iter([types.SimpleNamespace(device=torch.device("cuda", 0))]))
    gpu = FeatureBackbone(fake_gpu, dict(cpu.info))  # type: ignore[arg-type]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    from pipeline.evaluation.inputs import full_float32

    with full_float32():  # as the evaluate stage takes the key
        assert gpu.key.endswith("-cuda-NVIDIA_H200-fp32") and gpu.key != cpu.key
    saved = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True
        assert gpu.key.endswith("-cuda-NVIDIA_H200-tf32")
    finally:
        torch.backends.cudnn.allow_tf32 = saved


# ------------------------------------------------------------------------------------ the GPU check script
def test_gpu_paths_check_runs_with_torch_and_numpy_only():
    """python -m bench.gpu_paths_check on a machine without the pipeline's extras (reduced CPU mode, a few rows)."""
    import subprocess
    import sys
    from pathlib import Path

    checks = ["precision_auto", "resume_placement", "uint8_batch", "nccl_1rank"]
    code = (
        "import runpy, sys\n"
        "for m in ('pydantic', 'mlflow', 'albumentations', 'yaml', 'typer', 'prefect', 'dvc'):\n"
        "    sys.modules[m] = None\n"
        f"sys.argv = ['gpu_paths_check', '--cpu', '--rows-only', '--only', '{','.join(checks)}']\n"
        "runpy.run_module('bench.gpu_paths_check', run_name='__main__', alter_sys=True)\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert [r[0][2:] for r in rows] == checks
    assert [r[1] for r in rows] == ["ok", "ok", "ok", "skip"]
