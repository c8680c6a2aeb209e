"""Pretrained-encoder conditioning on the digits, measured: caption -> image with the
captions read by (a) the model's own learned text stream, (b) a frozen encoder's last layer,
(c) the encoder's last four hidden states pooled by learned weights through a two-layer
connector; then (d) the encoder in (c) swapped for a small student distilled from it
(``anydit distill-encoder``) with the model unchanged.

    python benchmarks/encoders.py --steps 600 --out benchmarks/encoders.json

No model can be downloaded here, so the "pretrained" encoder is a T5 encoder (4 layers, width
64) with random weights and a word-level tokenizer of the captions' words, written to a local
folder like any Hugging Face checkpoint: what is measured is the plumbing (features read,
pooled, connected, cached, distilled and swapped), not what a trained T5 knows. Each variant
trains the same steps from the same seed on the digits' images and captions (two processes),
and is judged on the 360 held-out digits: each image generated from its own caption (16 Euler
steps, guidance 2 on the caption), read by the image judge. The student is distilled on the
captions of 9 of the 12 templates and its error reported on the other 3.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

WIDTH, LAYERS, LENGTH = 64, 4, 8


def make_teacher(folder: Path) -> Path:
    """A random T5 encoder and a word-level tokenizer of the digits' captions, saved."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    from anydit.data.digits import caption_templates, format_caption

    words = ["[PAD]", "[UNK]", "</s>"]
    for template in caption_templates():
        for d in range(10):
            for w in format_caption(template, d).split():
                if w not in words:
                    words.append(w)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="</s>"
    )
    torch.manual_seed(0)
    cfg = transformers.T5Config(
        vocab_size=len(words), d_model=WIDTH, d_kv=16, d_ff=4 * WIDTH, num_layers=LAYERS,
        num_heads=4,
    )  # fmt: skip
    transformers.T5EncoderModel(cfg).save_pretrained(str(folder))
    fast.save_pretrained(str(folder))
    return folder


def variant_tree(kind: str, teacher: Path, steps: int) -> dict:
    image = {"name": "image", "kind": "image", "shape": [1, 8, 8], "patch": 4}
    image |= {"p_given": 0.0, "p_drop": 0.0}
    if kind == "learned":
        text = {"name": "text", "kind": "text", "shape": [6], "tokenizer": "digits-words"}
        text |= {"p_given": 0.8, "p_drop": 0.2}
    else:
        layers = 1 if kind == "last" else LAYERS
        text = {
            "name": "text", "kind": "sequence", "shape": [LENGTH, WIDTH * layers],
            "codec": "encoder", "codec_path": str(teacher), "generate": False, "p_drop": 0.2,
            "codec_args": {} if layers == 1 else {"layers": layers, "connector": 2},
        }  # fmt: skip
    return {
        "data": {"source": "digits"},
        "modalities": [image, text],
        "model": {"preset": "small", "width": 128, "depth": 4, "heads": 2, "head_dim": 64},
        "train": {
            "steps": steps, "batch_size": 256, "lr": 1e-3, "warmup": 100, "schedule": "cosine",
            "ema": 0.995, "log_every": 50, "checkpoint_every": steps, "sample_every": 0,
            "tensorboard": False,
        },
    }  # fmt: skip


def caption_to_image(model, n: int | None = None) -> float:
    """Judge accuracy of images made from the held-out digits' own captions."""
    from anydit.config import SampleConfig
    from anydit.data.digits import DigitsDataset
    from anydit.eval.judges import get_judges
    from anydit.sampling import sample

    data = DigitsDataset("test")
    n = len(data) if n is None else n
    captions = [data[i]["text"] for i in range(n)]
    config = SampleConfig(steps=16, guidance=2.0, guidance_interval=(0.3, 1.0))
    got = sample(model, {"image": "generate", "text": captions}, n=n, config=config, seed=1)
    judge = get_judges()[0]
    return float((judge.predict(got["image"]) == data.labels[:n].numpy()).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=600, help="training steps per variant")
    ap.add_argument("--distill-minutes", type=float, default=1.0)
    ap.add_argument("--n", type=int, help="held-out digits judged (default: all 360)")
    ap.add_argument("--work", default="runs/encoders", help="folder for models and encoders")
    ap.add_argument("--out", default="benchmarks/encoders.json")
    args = ap.parse_args()

    import anydit
    from anydit.data.digits import caption_templates, format_caption
    from anydit.run_config import config_from_tree
    from anydit.train.distributed import run_local
    from anydit.train.encoder import distill_encoder
    from anydit.train.loop import train

    work = Path(args.work)
    teacher = make_teacher(work / "teacher")
    result: dict = {"steps": args.steps, "teacher": f"T5 encoder, {LAYERS} layers, width {WIDTH}"}
    models = {}
    for kind in ("learned", "last", "pooled"):
        cfg = config_from_tree(variant_tree(kind, teacher, args.steps))
        out = work / kind
        t = time.perf_counter()
        run_local(train, (cfg, out, False, False), 2)
        trained = time.perf_counter() - t
        models[kind] = anydit.load_model(out / "model.safetensors").eval()
        acc = caption_to_image(models[kind], args.n)
        result[kind] = {"accuracy": acc, "train_seconds": trained}
        if kind == "pooled":
            w = models[kind].embed["text"].layer_weights.tolist()
            result[kind]["layer_weights"] = w
        print(kind, json.dumps(result[kind]), flush=True)
    texts = [format_caption(t, d) for t in caption_templates()[:9] for d in range(10)]
    val = [format_caption(t, d) for t in caption_templates()[9:] for d in range(10)]
    report = distill_encoder(
        teacher, texts, work / "student", LENGTH, LAYERS, val, minutes=args.distill_minutes
    )
    model = models["pooled"]
    model.modalities["text"].cfg.codec_path = str(work / "student")
    report["accuracy"] = caption_to_image(model, args.n)
    result["student"] = report
    print("student", json.dumps(report), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
