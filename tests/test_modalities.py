import pytest
import torch

from anydit.config import ModalityConfig
from anydit.modalities import build_modalities, build_modality

CASES = [
    ModalityConfig("img", "image", (3, 8, 12), patch=4),
    ModalityConfig("vid", "video", (4, 2, 8, 8), patch=4, patch_t=2),
    ModalityConfig("seq", "sequence", (12, 3), patch=3),
    ModalityConfig("vec", "vector", (5,)),
    ModalityConfig("lab", "label", num_classes=7),
    ModalityConfig("txt", "text", (10,)),
]
TOKENS = {"img": (6, 48), "vid": (8, 64), "seq": (4, 9), "vec": (1, 5), "lab": (1,), "txt": (10,)}


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: c.kind)
def test_token_round_trip(cfg):
    m = build_modality(cfg)
    g = torch.Generator().manual_seed(0)
    if m.discrete:
        x = torch.randint(0, m.token_dim, (3, *cfg.shape), generator=g)
    else:
        x = torch.randn(3, *cfg.shape, generator=g, dtype=torch.float64)
    tok = m.tokenize(x)
    assert tuple(tok.shape[1:]) == TOKENS[cfg.name]
    assert torch.equal(m.detokenize(tok), x)
    assert m.positions().shape == (m.num_tokens, 3)


def test_image_patches_are_spatial_blocks():
    m = build_modality(ModalityConfig("img", "image", (1, 4, 4), patch=2))
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    tok = m.tokenize(x)
    assert tok[0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]  # top-left 2x2 block
    assert tok[0, 1].tolist() == [2.0, 3.0, 6.0, 7.0]
    assert m.positions()[:, 1:].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]


def test_positions_per_kind():
    mods = build_modalities(CASES)
    assert mods["vec"].positions().abs().sum() == 0 and mods["lab"].positions().abs().sum() == 0
    vid = mods["vid"].positions()
    assert vid[:, 0].max() == 1 and vid[:, 1].max() == 1  # 2 time tokens, 2 rows
    assert mods["seq"].positions()[:, 0].tolist() == [0, 1, 2, 3]
    assert mods["img"].positions()[:, 0].abs().sum() == 0


def test_shared_clock_aligns_time():
    video = ModalityConfig("video", "video", (4, 1, 4, 4), patch=2, clock="av", rate=2.0)
    audio = ModalityConfig("audio", "sequence", (16, 2), patch=2, clock="av", rate=4.0)
    mods = build_modalities([video, audio])
    # audio: 4 tokens per unit, video 2: video frame k sits where audio token 2k sits.
    assert mods["audio"].positions()[:, 0].tolist() == list(range(8))
    assert sorted(set(mods["video"].positions()[:, 0].tolist())) == [0.0, 2.0, 4.0, 6.0]
    alone = build_modalities([ModalityConfig("video", "video", (4, 1, 4, 4), patch=2, rate=2.0)])
    assert sorted(set(alone["video"].positions()[:, 0].tolist())) == [0.0, 1.0, 2.0, 3.0]


def test_text_bytes_round_trip_and_padding():
    m = build_modality(ModalityConfig("t", "text", (16,)))
    ids = m.encode(["héllo", "a seven", ""])
    assert ids.shape == (3, 16) and (ids[2] == m.pad_id).all()
    assert m.decode(ids) == ["héllo", "a seven", ""]
    with pytest.raises(
        ValueError, match=r"modality 't': sample 1 has 20 tokens, more than the maximum length 16"
    ):
        m.encode(["ok", "x" * 20])


def test_text_tokenizers_json(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"[PAD]": 0, "[UNK]": 1, "a": 2, "seven": 3, "the": 4, "digit": 5}
    tok = tokenizers.Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    path = tmp_path / "tok.json"
    tok.save(str(path))
    m = build_modality(ModalityConfig("t", "text", (6,), tokenizer=str(path)))
    assert m.token_dim == 6 and m.pad_id == 0
    ids = m.encode(["the digit seven"])
    assert ids[0].tolist() == [4, 5, 3, 0, 0, 0]
    assert m.decode(ids) == ["the digit seven"]
    with pytest.raises(FileNotFoundError, match="tokenizer file .*missing.json does not exist"):
        build_modality(ModalityConfig("t", "text", (6,), tokenizer=str(tmp_path / "missing.json")))


def test_label_names_and_errors():
    m = build_modality(ModalityConfig("k", "label", classes=("cat", "dog", "cow")))
    assert m.prepare("dog", n=2).tolist() == [1, 1]
    assert m.prepare(["cow", "cat"]).tolist() == [2, 0]
    assert m.decode(torch.tensor([2, 0])) == ["cow", "cat"]
    with pytest.raises(
        ValueError, match=r"unknown label 'horse'; expected one of \['cat', 'dog', 'cow'\]"
    ):
        m.prepare("horse")
    with pytest.raises(ValueError, match=r"expected class ids in \[0, 3\), got \[5\]"):
        m.prepare(torch.tensor([0, 5]))


def test_prepare_checks_shape_and_dtype():
    m = build_modality(ModalityConfig("img", "image", (1, 4, 4), patch=2))
    assert m.prepare(torch.zeros(1, 4, 4), n=3).shape == (3, 1, 4, 4)
    with pytest.raises(
        ValueError, match=r"modality 'img' \(image\): expected shape \(1, 4, 4\).*got \(1, 4, 5\)"
    ):
        m.prepare(torch.zeros(1, 4, 5))
    with pytest.raises(ValueError, match=r"with n = 3, got \(2, 1, 4, 4\)"):
        m.prepare(torch.zeros(2, 1, 4, 4), n=3)
    with pytest.raises(
        ValueError, match="modality 'img': expected a float tensor, got dtype torch.bool"
    ):
        m.prepare(torch.zeros(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN or inf"):
        m.prepare(torch.full((1, 4, 4), float("nan")))


def test_token_mask_needs_every_element_known():
    m = build_modality(ModalityConfig("img", "image", (1, 4, 4), patch=2))
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 0, 0] = False  # one pixel of the first patch unknown
    assert m.token_mask(mask)[0].tolist() == [False, True, True, True]


def test_video_tokens_are_blocks_of_frames_and_pixels():
    """An arange video (4, 1, 4, 4), patch 2 x patch_t 2: token 0 holds frames 0-1 x the
    top-left 2 x 2 pixels, token 4 frames 2-3 there; positions (time, row, column)."""
    m = build_modality(ModalityConfig("v", "video", (4, 1, 4, 4), patch=2, patch_t=2))
    tok = m.tokenize(torch.arange(64.0).reshape(1, 4, 1, 4, 4))  # (1, 8, 8)
    assert tok[0, 0].tolist() == [0, 1, 4, 5, 16, 17, 20, 21]
    assert tok[0, 4].tolist() == [32, 33, 36, 37, 48, 49, 52, 53]
    assert m.positions()[4].tolist() == [1.0, 0.0, 0.0] and m.positions()[3].tolist() == [0, 1, 1]


def test_a_video_shifts_its_times_by_the_root_of_its_token_frames():
    from anydit.config import FlowConfig
    from anydit.flow.objective import make_inputs

    def video(**kw):
        return ModalityConfig("v", "video", (4, 1, 8, 8), patch=4, **kw)

    assert build_modality(video()).time_shift == 2.0
    assert build_modality(video(patch_t=2)).time_shift == pytest.approx(2**0.5)
    assert build_modality(video(shift=1.0)).time_shift == 1.0
    assert build_modality(ModalityConfig("i", "image", (1, 8, 8))).time_shift == 1.0
    clips = {"v": torch.zeros(64, 4, 1, 8, 8)}

    def times(**kw):
        mods = build_modalities([video(**kw)])
        gen = torch.Generator().manual_seed(0)
        return make_inputs(mods, clips, FlowConfig(), generator=gen).times["v"]

    # training: the default draws what an explicit shift of 2 draws, nearer noise than 1
    assert torch.equal(times(), times(shift=2.0))
    assert times().median() < times(shift=1.0).median()
    # sampling: the default grid is the grid of shift 2
    import anydit

    torch.manual_seed(0)
    model = anydit.MMDiT([video()], anydit.preset("debug"))
    torch.nn.init.normal_(model.final["v"].proj.weight)  # a field that is not zero

    def draw(**kw):
        return anydit.sample(model, {"v": "generate"}, n=2, steps=4, **kw)["v"]

    assert torch.equal(draw(), draw(shift=2.0)) and not torch.equal(draw(), draw(shift=1.0))


def test_a_video_weighs_its_loss_by_its_token_frames():
    import anydit

    def video(**kw):
        return ModalityConfig("v", "video", (4, 1, 8, 8), patch=4, **kw)

    assert build_modality(video()).loss_weight == 4.0
    assert build_modality(video(patch_t=2)).loss_weight == 2.0
    assert build_modality(video(loss_weight=1.0)).loss_weight == 1.0
    assert build_modality(ModalityConfig("i", "image", (1, 8, 8))).loss_weight == 1.0
    label = ModalityConfig("k", "label", num_classes=3)
    model = anydit.MMDiT([video(), label], anydit.preset("debug"))
    torch.nn.init.normal_(model.final["v"].proj.weight)
    batch = {"v": torch.rand(8, 4, 1, 8, 8) * 2 - 1, "k": torch.randint(3, (8,))}
    loss = anydit.training_loss(model, batch, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss.total, 4.0 * loss.parts["v"] + loss.parts["k"])
