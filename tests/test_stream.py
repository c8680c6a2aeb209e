"""Streaming: clips longer than the window, chunk by chunk, the context held exactly."""

import pytest
import torch
from conftest import randomize

import anydit
from anydit.sampling import Generate
from anydit.sampling.stream import stream


@pytest.fixture(scope="module")
def model():
    mods = [
        anydit.ModalityConfig("video", "video", (4, 1, 4, 4), patch=2, clock="c"),
        anydit.ModalityConfig("audio", "sequence", (8, 4), patch=2, clock="c"),
        anydit.ModalityConfig("label", "label", num_classes=3),
    ]
    m = anydit.MMDiT(mods, anydit.preset("debug", per_token_time=True))
    randomize(m, std=0.2)
    return m.eval()


def test_a_stream_is_windows_long_and_each_chunk_continues_the_last(model):
    task = {"video": "generate", "audio": "generate", "label": 1}
    out = stream(model, task, windows=2.5, advance=0.5, n=2, steps=3)
    assert out["video"].shape == (2, 10, 1, 4, 4) and out["audio"].shape == (2, 20, 4)
    first = anydit.sample(model, task, n=2, steps=3)
    assert torch.equal(out["video"][:, :4], first["video"])  # the first window, whole
    # the second window: the last half of the first held, the rest generated from it
    mask = torch.zeros(2, 4, 1, 4, 4, dtype=torch.bool)
    mask[:, :2] = True
    amask = torch.zeros(2, 8, 4, dtype=torch.bool)
    amask[:, :4] = True
    known_v = torch.where(mask, torch.cat([first["video"][:, 2:], first["video"][:, :2]], 1), 0)
    known_a = torch.where(amask, torch.cat([first["audio"][:, 4:], first["audio"][:, :4]], 1), 0)
    second = anydit.sample(
        model,
        {"video": Generate(known=known_v, mask=mask), "audio": Generate(known=known_a, mask=amask),
         "label": 1},
        n=2, steps=3, seed=1,
    )  # fmt: skip
    torch.testing.assert_close(out["video"][:, 4:6], second["video"][:, 2:])
    torch.testing.assert_close(out["audio"][:, 8:12], second["audio"][:, 4:])
    assert torch.equal(out["label"], first["label"])


def test_bad_streams_are_refused_by_name(model):
    task = {"video": "generate", "audio": "generate"}
    with pytest.raises(ValueError, match="whole number of its tokens"):
        stream(model, task, windows=2, advance=0.3, steps=1)  # 1.2 video frames
    with pytest.raises(ValueError, match=r"\['label'\] are generated but not on the clock"):
        stream(model, {**task, "label": "generate"}, windows=2, steps=1)
    with pytest.raises(ValueError, match=r"\['video'\] are on clock 'c' but given"):
        stream(model, {"video": torch.zeros(4, 1, 4, 4), "audio": "generate"}, windows=2)
    with pytest.raises(ValueError, match="expected advance in"):
        stream(model, task, windows=0.5, steps=1)
    flat = anydit.MMDiT(list(model.modality_configs), anydit.preset("debug"))
    with pytest.raises(ValueError, match="per_token_time"):
        stream(flat, task, windows=2, steps=1)
