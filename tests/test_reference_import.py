"""``import-reference`` on checkpoint folders written the reference's way: ``latest_net_G.pth`` (and
``latest_net_E.pth``) as plain state dicts in the pre-1.6 torch format the published files use, and an
``opt.txt`` in its options format, made from this project's identical-architecture networks at the
reference settings (narrow where the shapes allow). Then synthesis from the file and from the
registered version, and the refusals: a file of another setting, a truncated file, D given as G."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from gaugan.config import GauGANConfig, reference_setting
from gaugan.discriminator import MultiscaleDiscriminator
from gaugan.encoder import ConvEncoder
from gaugan.generator import SPADEGenerator
from gaugan.synthesizer import Synthesizer
from pipeline.cli import app
from pipeline.datasets.class_tables import builtin_table
from pipeline.errors import ReferenceImportError
from pipeline.parents.reference_import import import_reference, read_opt_txt

NAME = "gaugan-coco-reference"
DATASET_MODES = {"coco-stuff": "coco", "ade20k": "ade20k", "cityscapes": "cityscapes"}
REFERENCE_LABEL_NC = {"coco-stuff": 182, "ade20k": 150, "cityscapes": 35}


def narrow(setting: str, use_vae: bool = False) -> GauGANConfig:
    """The reference setting with narrow networks (the widths are read off the shapes on import)."""
    return replace(reference_setting(setting, use_vae=use_vae), ngf=4, ndf=4, nef=4, z_dim=8, spade_hidden=8)


def write_opt_txt(path: Path, setting: str, config: GauGANConfig, **changes) -> None:
    """An options file as the reference writes it: sorted ``{:>25}: {:<30}`` lines, ``[default: X]`` when changed."""
    options = {
        "aspect_ratio": (config.aspect_ratio, 1.0),
        "batchSize": (1, 1),
        "checkpoints_dir": ("./checkpoints", "./checkpoints"),
        "contain_dontcare_label": (setting != "cityscapes", False),
        "crop_size": (config.crop_size, 256),
        "dataroot": (f"./datasets/{setting}/", "./datasets/cityscapes/"),
        "dataset_mode": (DATASET_MODES[setting], "coco"),
        "gpu_ids": ("0", "0"),
        "init_type": ("xavier", "xavier"),
        "isTrain": (True, True),
        "label_nc": (REFERENCE_LABEL_NC[setting], 182),
        "load_size": (286 if setting != "cityscapes" else 512, 1024),
        "model": ("pix2pix", "pix2pix"),
        "name": (f"{DATASET_MODES[setting]}_pretrained", "label2coco"),
        "ngf": (config.ngf, 64),
        "no_instance": (not config.use_instance, False),
        "norm_G": (config.norm_G, "spectralinstance"),
        "num_upsampling_layers": (config.num_upsampling_layers, "normal"),
        "use_vae": (config.use_vae, False),
        "which_epoch": ("latest", "latest"),
        "z_dim": (config.z_dim, 256),
    }
    options.update({k: (v, options.get(k, (None, None))[1]) for k, v in changes.items()})
    lines = ["----------------- Options ---------------"]
    for key in sorted(options, key=str.lower):
        value, default = options[key]
        comment = f"\t[default: {default}]" if value != default else ""
        lines.append(f"{key:>25}: {value!s:<30}{comment}")
    lines.append("----------------- End -------------------")
    path.write_text("\n".join(lines) + "\n")


def reference_folder(folder: Path, config: GauGANConfig, setting: str, seed: int = 0, opt: bool = True) -> dict:
    """latest_net_G.pth (+ E, + D) and opt.txt as the reference saves them; returns the networks."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    nets = {"G": SPADEGenerator(config), "D": MultiscaleDiscriminator(config)}
    if config.use_vae:
        nets["E"] = ConvEncoder(config)
    for module in nets["G"].modules():  # trained-looking batch statistics, so they matter
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    for key, net in nets.items():
        torch.save(net.state_dict(), folder / f"latest_net_{key}.pth", _use_new_zipfile_serialization=False)
    if opt:
        write_opt_txt(folder / "opt.txt", setting, config)
    (folder / "opt.pkl").write_bytes(b"\x80\x04 never unpickled")
    return {k: v.eval() for k, v in nets.items()}


def label_maps(tmp_path: Path, rng: np.random.Generator, nc: int, size: int = 64) -> tuple[Path, Path]:
    label = np.zeros((size, size), np.uint8)
    for _ in range(6):
        y, x = rng.integers(0, size - 16, 2)
        label[y : y + 16, x : x + 20] = rng.integers(0, nc)
    label[:3] = 255
    inst = (np.arange(size * size).reshape(size, size) // 700).astype(np.uint8)
    Image.fromarray(label).save(tmp_path / "label.png")
    Image.fromarray(inst).save(tmp_path / "inst.png")
    return tmp_path / "label.png", tmp_path / "inst.png"


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    config = narrow("coco-stuff")
    nets = reference_folder(root / "coco_pretrained", config, "coco-stuff")
    return root, config, nets


def test_opt_txt_is_read_in_the_reference_format(coco):
    root, config, _ = coco
    options = read_opt_txt(root / "coco_pretrained/opt.txt")
    assert options["dataset_mode"] == "coco" and options["ngf"] == "4" and options["label_nc"] == "182"
    assert options["contain_dontcare_label"] == "True" and options["norm_G"] == "spectralspadesyncbatch3x3"
    assert options["which_epoch"] == "latest" and "\t" not in options["ngf"]


def test_import_register_and_synthesize_give_the_reference_networks_pixels(coco, tmp_path, monkeypatch):
    import mlflow

    root, config, nets = coco
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    runner = CliRunner()
    args = ["import-reference", "--setting", "coco-stuff", "--checkpoint", str(root / "coco_pretrained")]
    result = runner.invoke(app, [*args, "--out", "models/coco.pt", "--register", NAME])
    assert result.exit_code == 0, result.output
    assert "184 label channels, instance edges" in result.output and f"registered {NAME} version 1" in result.output

    synth = Synthesizer.from_checkpoint(tmp_path / "models/coco.pt", device="cpu")
    assert synth.config.semantic_nc == 184 and synth.config.ngf == 4 and synth.config.use_instance
    assert synth.classes == builtin_table("coco-stuff")
    reference = root / "coco_pretrained/latest_net_G.pth"
    assert synth.meta["reference"]["generator_sha256"] == hashlib.sha256(reference.read_bytes()).hexdigest()
    assert synth.meta["reference"]["options"]["dataset_mode"] == "coco"

    label, inst = label_maps(tmp_path, np.random.default_rng(0), 182)
    original = Synthesizer(nets["G"], None, synth.config, synth.classes, "cpu")  # the reference's network
    labels, instances = np.array(Image.open(label))[None], np.array(Image.open(inst))[None]

    for model, out in (("models/coco.pt", "a.png"), (f"models:/{NAME}/1", "b.png")):
        done = runner.invoke(
            app, ["synthesize", "--model", model, "--label", str(label), "--instance", str(inst), "--out", out]
        )
        assert done.exit_code == 0, done.output
    a, b = np.array(Image.open("a.png")), np.array(Image.open("b.png"))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, original.synthesize(labels, instances)[0])

    client = mlflow.MlflowClient(uri)
    version = client.get_model_version(NAME, "1")
    assert version.tags["source"] == "reference" and version.tags["reference_setting"] == "coco-stuff"
    assert version.tags["reference_generator_sha256"] == synth.meta["reference"]["generator_sha256"]
    assert version.tags["reference_options"] == "opt.txt" and version.tags["dataset"] == "coco-stuff"
    assert set(client.get_registered_model(NAME).aliases) == {"challenger"}  # not evaluated: no champion
    run = client.get_run(synth.meta["run_id"])
    assert run.data.params["reference.setting"] == "coco-stuff" and run.info.status == "FINISHED"
    assert "reference/opt.txt" in {a.path for a in client.list_artifacts(run.info.run_id, "reference")}


def test_a_multimodal_ade20k_model_with_its_encoder(tmp_path, real_fixtures):
    from conftest import ingest_dataset

    config = narrow("ade20k", use_vae=True)
    nets = reference_folder(tmp_path / "ade20k_vae", config, "ade20k", seed=3)
    summary = import_reference("ade20k", tmp_path / "ade20k_vae", tmp_path / "ade.pt")
    assert summary["encoder"] and summary["semantic_nc"] == 151 and summary["config"]["use_vae"]
    synth = Synthesizer.from_checkpoint(tmp_path / "ade.pt", device="cpu")
    assert synth.classes == builtin_table("ade20k") and synth.config.z_dim == 8 and synth.config.nef == 4
    for mine, theirs in ((synth.netG, nets["G"]), (synth.netE, nets["E"])):  # the weights, exactly
        ours = mine.state_dict()
        assert ours.keys() == theirs.state_dict().keys()
        assert all(torch.equal(ours[k], v) for k, v in theirs.state_dict().items())
    # ADE20K data prepared here goes through the imported ADE20K generator
    src = tmp_path / "ade"
    (src / "images").mkdir(parents=True)
    (src / "images/validation").symlink_to(real_fixtures / "ade20k/sceneparsing/ADEChallengeData2016/images/validation")
    (src / "annotations").mkdir()
    (src / "annotations/validation").symlink_to(
        real_fixtures / "ade20k/sceneparsing/ADEChallengeData2016/annotations/validation"
    )
    ingest_dataset("ade20k", src, tmp_path / "prepared", classes="ade20k")
    from gaugan.data import PreparedDataset

    label = PreparedDataset(tmp_path / "prepared", "val", load_instances=False)[0]["label"][None]
    style = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    image = synth.synthesize(label, style_images=style, seed=5)
    assert image.shape == (1, *label.shape[1:], 3) and image.std() > 0


def test_a_cityscapes_generator_without_options_file(tmp_path):
    config = narrow("cityscapes")
    reference_folder(tmp_path / "cityscapes_pretrained", config, "cityscapes", opt=False)
    summary = import_reference("cityscapes", tmp_path / "cityscapes_pretrained/latest_net_G.pth", tmp_path / "c.pt")
    cfg = summary["config"]
    assert summary["semantic_nc"] == 36 and cfg["label_nc"] == 35 and not cfg["contain_dontcare_label"]
    assert (cfg["crop_size"], cfg["aspect_ratio"]) == (512, 2.0)
    assert cfg["num_upsampling_layers"] == reference_setting("cityscapes").num_upsampling_layers
    assert summary["reference"]["opt_txt"] is None


def test_refusals_name_the_problem(coco, tmp_path):
    root, config, _ = coco
    out = tmp_path / "refused.pt"
    # a file of another setting: an ADE20K generator (151 channels) given as coco-stuff
    reference_folder(tmp_path / "ade", narrow("ade20k"), "ade20k")
    with pytest.raises(ReferenceImportError) as err:
        import_reference("coco-stuff", tmp_path / "ade", out)
    message = str(err.value)
    assert "takes 151 label channels but the coco-stuff setting takes 183" in message
    assert "151 is what a ade20k generator takes" in message
    assert "opt.txt dataset_mode is 'ade20k', the coco-stuff setting and the weights say 'coco'" in message
    assert "opt.txt label_nc is '150'" in message
    # an options file that disagrees with the weights and the setting: each mismatch named
    bad = tmp_path / "bad_opt"
    bad.mkdir()
    (bad / "latest_net_G.pth").symlink_to(root / "coco_pretrained/latest_net_G.pth")
    write_opt_txt(bad / "opt.txt", "coco-stuff", config, ngf=64, num_upsampling_layers="more")
    with pytest.raises(ReferenceImportError, match=r"opt.txt ngf is '64'.*\n.*opt.txt num_upsampling_layers is 'more'"):
        import_reference("coco-stuff", bad, out)
    # a truncated file
    cut = tmp_path / "cut"
    cut.mkdir()
    data = (root / "coco_pretrained/latest_net_G.pth").read_bytes()
    (cut / "latest_net_G.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ReferenceImportError, match=r"latest_net_G.pth: cannot read the generator checkpoint, truncated"
    ):
        import_reference("coco-stuff", cut, out)
    # the discriminator given as the generator
    result = CliRunner().invoke(
        app,
        [
            "import-reference",
            "--setting",
            "coco-stuff",
            "--checkpoint",
            str(root / "coco_pretrained/latest_net_D.pth"),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 1
    assert "latest_net_D.pth: this is a discriminator (latest_net_D.pth), not a generator" in result.output
    assert not out.exists()


def test_any_crop_size_imports_the_options_that_do_not_change_the_weights_come_from_opt_txt(coco, tmp_path):
    """An official-format folder trained at crop 64 (load 72, fixed preprocessing): the weights say
    nothing about the crop, so it imports, with opt.txt's crop and aspect ratio, and the same pixels."""
    root, config, nets = coco
    small = tmp_path / "coco_64"
    small.mkdir()
    (small / "latest_net_G.pth").symlink_to(root / "coco_pretrained/latest_net_G.pth")
    write_opt_txt(
        small / "opt.txt", "coco-stuff", config, crop_size=64, load_size=72, aspect_ratio=2.0, preprocess_mode="fixed"
    )
    summary = import_reference("coco-stuff", small, tmp_path / "c64.pt")
    assert (summary["config"]["crop_size"], summary["config"]["aspect_ratio"]) == (64, 2.0)
    synth = Synthesizer.from_checkpoint(tmp_path / "c64.pt", device="cpu")
    assert synth.training_size == (32, 64)
    ours, theirs = synth.netG.state_dict(), nets["G"].state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], v) for k, v in theirs.items())
