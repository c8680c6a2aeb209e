"""Write tiny diffusers model folders with random weights, to try the import / extend /
export commands without downloading a real model:

    python scripts/tiny_diffusers.py OUT      # OUT/transformer (SD3.5-shaped), OUT/vae,
                                              # OUT/data: a paired image/audio/text manifest

The transformer has diffusers' own SD3.5 test configuration (2 blocks, width 32, QK norm,
one dual-attention block); the autoencoder downsamples by 2 into 4 latent channels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write transformer/, vae/ and data/ into")
    parser.add_argument("--samples", type=int, default=32, help="samples in data/")
    args = parser.parse_args()
    from diffusers import AutoencoderKL, SD3Transformer2DModel

    out = Path(args.out)
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=1,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
        pos_embed_max_size=96,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    with torch.no_grad():  # diffusers zero-initialises the outputs: give them values
        for p in transformer.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=0.02)
    transformer.save_pretrained(out / "transformer")
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        scaling_factor=1.5,
        shift_factor=0.1,
    )
    vae.save_pretrained(out / "vae")
    write_data(out / "data", args.samples)
    print(f"wrote {out / 'transformer'}, {out / 'vae'} and {out / 'data' / 'manifest.jsonl'}")


def write_data(folder: Path, n: int) -> None:
    """n samples: a 32 x 32 PNG, a one-second WAV tone, text-encoder outputs (16, 32) and a
    pooled embedding (64,) as .npy files (what a real pipeline's encoders would produce),
    each pair sharing a random "class" so the modalities are related."""
    import json
    import wave

    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        k = int(rng.integers(0, 4))
        img = np.zeros((32, 32, 3), dtype=np.uint8)
        img[8 * k : 8 * k + 8] = 255  # a bright band whose row is the class
        Image.fromarray(img).save(folder / f"{i}.png")
        t = np.arange(16_000) / 16_000
        tone = (0.5 * np.sin(2 * np.pi * 220 * (k + 1) * t) * 32767).astype(np.int16)
        with wave.open(str(folder / f"{i}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16_000)
            w.writeframes(tone.tobytes())
        np.save(folder / f"text_{i}.npy", (rng.standard_normal((16, 32)) + k).astype(np.float32))
        np.save(folder / f"pooled_{i}.npy", (rng.standard_normal(64) + k).astype(np.float32))
        rows.append(
            {"image": f"{i}.png", "audio": f"{i}.wav", "text": f"text_{i}.npy",
             "pooled": f"pooled_{i}.npy"}
        )  # fmt: skip
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
