"""A diffusers autoencoder as an image modality's codec: latents in, pixels out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import anydit
from anydit.cli import main
from anydit.config import ConfigError, DataConfig, ModalityConfig
from anydit.data.sources import build_dataset
from anydit.modalities.image import read_image
from anydit.modalities.outputs import write_outputs
from anydit.modalities.vae import LatentCodec

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    """A tiny AutoencoderKL (downsampling 2, 4 latent channels) with SD3-like normalisation."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        scaling_factor=1.5,
        shift_factor=0.1,
    )
    folder = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(folder)
    return folder


def _mods(folder):
    return [
        ModalityConfig("image", "image", (4, 8, 8), codec="vae", codec_path=str(folder)),
        ModalityConfig("caption", "text", (16,)),
    ]


def _pngs(tmp_path, n=3):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png"
        )
        rows.append({"image": f"{i}.png", "caption": f"picture {i}"})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def test_codec_uses_the_autoencoders_scaling_and_shift(vae_folder):
    codec = LatentCodec(vae_folder)
    assert (codec.scale, codec.shift, codec.factor, codec.channels) == (1.5, 0.1, 2, 4)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = codec.encode(x)
    with torch.no_grad():
        raw = codec.vae.encode(x).latent_dist.mode()
    assert z.shape == (2, 4, 8, 8) and torch.allclose(z, (raw - 0.1) * 1.5)
    with torch.no_grad():
        ref = codec.vae.decode(z / 1.5 + 0.1).sample.clamp(-1, 1)
    assert torch.allclose(codec.decode(z), ref)
    with pytest.raises(ValueError, match="8 channels but the autoencoder .* makes 4-channel"):
        codec.pixel_shape((8, 4, 4), "image")


def test_manifest_images_become_latents_and_samples_become_pictures(vae_folder, tmp_path):
    manifest = _pngs(tmp_path)
    mods = _mods(vae_folder)
    ds = build_dataset(DataConfig(source="manifest", path=str(manifest)), "train", mods)
    item = ds[1]
    codec = LatentCodec(vae_folder)
    expected = codec.encode(read_image(tmp_path / "1.png", (3, 16, 16))[None])[0]
    assert item["image"].shape == (4, 8, 8) and torch.allclose(item["image"], expected, atol=1e-6)
    model = anydit.MMDiT(mods, anydit.preset("debug"))
    written = write_outputs(tmp_path / "out", model.modalities, {"image": torch.randn(2, 4, 8, 8)})
    with Image.open(written["image"][0]) as img:
        assert img.size[0] % 16 == 0 and img.mode == "RGB"  # decoded: 16 pixels, upscaled
    with pytest.raises(ConfigError, match="codec_path: expected the autoencoder folder"):
        ModalityConfig("im", "image", (4, 8, 8), codec="vae")


def test_data_encode_precomputes_latents_once(vae_folder, tmp_path):
    manifest = _pngs(tmp_path, n=4)
    tree = {
        "modalities": [
            {"name": "image", "kind": "image", "shape": [4, 8, 8], "codec": "vae",
             "codec_path": str(vae_folder)},
            {"name": "caption", "kind": "text", "shape": [16]},
        ],
        "data": {"source": "manifest", "path": str(manifest)},
    }  # fmt: skip
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(tree))
    assert main(["data", "encode", str(cfg_path), "--out", str(tmp_path / "enc")]) == 0
    mods = _mods(vae_folder)
    cached = build_dataset(DataConfig(source="arrays", path=str(tmp_path / "enc")), "train", mods)
    direct = build_dataset(DataConfig(source="manifest", path=str(manifest)), "train", mods)
    assert len(cached) == 4
    for i in range(4):
        assert torch.allclose(cached[i]["image"], direct[i]["image"])
        assert cached[i]["caption"] == direct[i]["caption"] == f"picture {i}"
