"""Pretrained text encoders as given streams (``codec: encoder``): tiny random ``transformers``
models built here (T5 encoder, CLIP text, a decoder LLM; no downloads), layer pooling and the
connector, texts read wherever values are read, ``data encode``, ``distill-encoder``, refusals."""

import json

import pytest
import torch

import anydit
from anydit.cli import main
from anydit.errors import ConfigError

transformers = pytest.importorskip("transformers")

WORDS = ["[PAD]", "[UNK]", "</s>", "a", "photo", "of", "the", "digit", "drawn", "/"]
WORDS += ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="</s>"
    )


def make_encoder(folder, family="t5"):
    torch.manual_seed(0)
    v = len(WORDS)
    if family == "t5":
        cfg = transformers.T5Config(
            vocab_size=v, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_heads=4
        )
        model = transformers.T5EncoderModel(cfg)
    elif family == "clip":
        cfg = transformers.CLIPTextConfig(
            vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=2,
        )  # fmt: skip
        model = transformers.CLIPTextModel(cfg)
    else:
        cfg = transformers.LlamaConfig(
            vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        )  # fmt: skip
        model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(str(folder))
    tokenizer().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    return make_encoder(tmp_path_factory.mktemp("t5"), "t5")


def caption(folder, layers=1, connector=1, length=8):
    args = {"layers": layers} if layers != 1 else {}
    if connector != 1:
        args["connector"] = connector
    return anydit.ModalityConfig(
        "caption", "sequence", (length, 32 * layers), codec="encoder", codec_path=str(folder),
        codec_args=args, generate=False,
    )  # fmt: skip


@pytest.mark.parametrize("family", ["t5", "clip", "llama"])
def test_each_family_gives_its_last_layers_zeros_at_padding(tmp_path, family):
    from anydit.encoders import TextEncoder

    folder = make_encoder(tmp_path / family, family)
    enc = TextEncoder(folder, layers=2)
    x = enc.encode(["a photo of the digit seven", "two"], 8)
    assert x.shape == (2, 8, 64) and enc.width == 64 and enc.depth == 3
    ids, mask = enc.tokenize(["two"], 8)
    assert mask.sum() == 1 and x[1, 1:].abs().sum() == 0 and x[1, 0].abs().sum() > 0
    # the kept layers are the model's own last hidden states
    model = transformers.AutoModel.from_pretrained(str(folder)) if family == "t5" else None
    if model is not None:
        ids, mask = enc.tokenize(["a photo of the digit seven"], 8)
        out = model.get_encoder()(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        want = torch.cat(out.hidden_states[-2:], -1) * mask[..., None]
        torch.testing.assert_close(x[:1], want)


def test_texts_become_features_wherever_values_are_read(t5):
    mod = [caption(t5), anydit.ModalityConfig("v", "vector", (2,))]
    model = anydit.MMDiT(mod, anydit.preset("debug")).eval()
    m = model.modalities["caption"]
    one = m.prepare("a photo of the digit seven", 3)
    assert one.shape == (3, 8, 32) and torch.equal(one[0], one[2])
    batch = m.prepare(["seven", "a / b two"])  # '/' is text, not a path
    assert batch.shape == (2, 8, 32) and not torch.equal(batch[0], batch[1])
    torch.testing.assert_close(m.read_value("seven"), batch[0])
    assert torch.equal(m.collate(["seven", "a / b two"]), batch)  # built-in datasets' strings
    assert not m.names_file("photo.png") and m.names_file("features.npy")
    with torch.no_grad():  # a trained model's weights: outputs that read the condition
        for p in model.parameters():
            p.normal_(0, 0.2)
    out = anydit.sample(model, {"v": "generate", "caption": "seven"}, n=2, steps=2, seed=0)
    other = anydit.sample(model, {"v": "generate", "caption": "two"}, n=2, steps=2, seed=0)
    assert out["v"].shape == (2, 2) and not torch.equal(out["v"], other["v"])


def test_layer_pooling_and_connector_are_learned_parts_of_the_model(t5):
    from anydit.model.embeddings import EncoderConnector

    v = anydit.ModalityConfig("v", "vector", (2,))
    model = anydit.MMDiT([caption(t5, layers=3, connector=2), v], anydit.preset("debug"))
    emb = model.embed["caption"]
    assert isinstance(emb, EncoderConnector) and emb.layers == 3 and emb.dim == 32
    torch.testing.assert_close(emb.layer_weights, torch.full((3,), 1 / 3))  # equal at start
    assert len([mod for mod in emb.connector if isinstance(mod, torch.nn.Linear)]) == 2
    x = torch.randn(2, 8, 96)
    # pooling is the weighted sum of the layers' features
    with torch.no_grad():
        emb.layer_logits.copy_(torch.tensor([0.0, 100.0, 0.0]))
    torch.testing.assert_close(emb(x), emb.connector(x[..., 32:64]), atol=1e-5, rtol=1e-5)
    names = [n for n, _ in model.named_parameters() if "layer_logits" in n]
    assert names == ["embed.caption.layer_logits"]
    plain = anydit.MMDiT([caption(t5), v], anydit.preset("debug"))
    assert isinstance(plain.embed["caption"].connector[0], torch.nn.Linear)


def test_bad_encoder_configs_and_folders_are_refused(t5, tmp_path):
    with pytest.raises(ConfigError, match="generate: expected false for codec 'encoder'"):
        anydit.ModalityConfig(
            "c", "sequence", (8, 32), codec="encoder", codec_path=str(t5), generate=True
        )
    with pytest.raises(ConfigError, match="codec_path: expected a transformers folder"):
        anydit.ModalityConfig("c", "sequence", (8, 32), codec="encoder", generate=False)
    with pytest.raises(ConfigError, match="codec_args: expected integers >= 1 for some of"):
        anydit.ModalityConfig(
            "c", "sequence", (8, 32), codec="encoder", codec_path="x", generate=False,
            codec_args={"layers": 0},
        )  # fmt: skip
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((t5 / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not read")
    v = anydit.ModalityConfig("v", "vector", (2,))
    model = anydit.MMDiT([caption(pickled), v], anydit.preset("debug"))
    with pytest.raises(ValueError, match=r"pickled weights are never read\), found"):
        model.modalities["caption"].prepare("seven")
    wide = anydit.MMDiT([caption(t5, layers=2), v], anydit.preset("debug"))
    wide.modalities["caption"].cfg.codec_args = {"layers": 1}  # 64 channels, 32 given
    with pytest.raises(ValueError, match="shape has 64 channels but the encoder in"):
        wide.modalities["caption"].prepare("seven")


def test_a_run_trains_on_encoded_captions_and_data_encode_stores_features(t5, tmp_path):
    manifest = tmp_path / "train.jsonl"
    rows = [{"caption": f"the digit {w}", "v": [float(i), 1.0]} for i, w in enumerate(WORDS[10:])]
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = tmp_path / "run.yaml"
    cap = {**caption(t5, layers=2).__dict__, "shape": [8, 64]}
    cap["codec_args"] = {"layers": 2}
    tree = {
        "modalities": [cap, {"name": "v", "kind": "vector", "shape": [2]}],
        "data": {"source": "manifest", "path": str(manifest)},
        "model": {"preset": "debug"},
        "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 2, "tensorboard": False},
    }
    cfg.write_text(json.dumps(tree))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert main(["data", "encode", str(cfg), "--out", str(tmp_path / "arrays")]) == 0
    import numpy as np

    stored = np.load(tmp_path / "arrays" / "caption.npy")
    model = anydit.load_model(tmp_path / "run" / "model.safetensors")
    want = model.modalities["caption"].prepare(["the digit zero"])[0]
    assert stored.shape == (10, 8, 64)
    torch.testing.assert_close(torch.from_numpy(stored[0]), want)
    code = main(
        ["sample", "--checkpoint", str(tmp_path / "run"), "--generate", "v", "--given",
         "caption=the digit seven", "-n", "2", "--steps", "2", "--out", str(tmp_path / "s")]
    )  # fmt: skip
    assert code == 0


def test_distill_encoder_reproduces_the_teachers_features(t5, tmp_path):
    from anydit.encoders import TextEncoder

    texts = [f"a photo of the digit {w}" for w in WORDS[10:]] + WORDS[10:]
    (tmp_path / "texts.txt").write_text("\n".join(texts))
    (tmp_path / "val.txt").write_text("the digit seven\nthe digit two")
    out = tmp_path / "student"
    args = ["distill-encoder", str(t5), "--texts", str(tmp_path / "texts.txt"), "--val-texts"]
    args += [str(tmp_path / "val.txt"), "--length", "8", "--layers", "2", "--steps", "300"]
    args += ["--width", "64", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "distill.json").read_text())
    assert report["steps"] == 300 and report["train"]["relative_error"] < 0.3
    assert report["val"]["cosine"] > 0.7 and report["val"]["relative_error"] < 0.8  # unseen
    student, teacher = TextEncoder(out, 2), TextEncoder(t5, 2)
    assert student.width == teacher.width == 64 and student.student is not None
    text = ["a photo of the digit seven"]
    s, t = student.encode(text, 8), teacher.encode(text, 8)
    assert (s - t).norm() / t.norm() < 0.3
    assert s[0, 6:].abs().sum() == 0 and t[0, 6:].abs().sum() == 0  # zeros at padding
    # a model built on the teacher takes the student in its place
    cap = caption(out, layers=2)
    cap.shape = (8, 64)
    model = anydit.MMDiT([cap, anydit.ModalityConfig("v", "vector", (2,))], anydit.preset("debug"))
    got = anydit.sample(model, {"v": "generate", "caption": "seven"}, n=1, steps=2, seed=0)
    assert got["v"].shape == (1, 2)
