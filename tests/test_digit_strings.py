"""The built-in digit-strings dataset: timing of audio and video agrees, the clock lines them up."""

import numpy as np
import pytest
import torch

import anydit
from anydit.cli import main
from anydit.data.digit_strings import (
    DigitStringsDataset,
    StringsLayout,
    digit_strings_modalities,
    voiced_span,
)
from anydit.data.digits import DIGIT_NAMES, _audio_npz, audio_split, load_digit_images


@pytest.fixture(scope="module")
def data():
    return DigitStringsDataset("train", seed=3, size=64)


def test_items_are_a_function_of_seed_epoch_and_index(data):
    a, b = data[5], DigitStringsDataset("train", seed=3, size=64)[5]
    assert all(torch.equal(a[k], b[k]) for k in ("video", "audio")) and a["text"] == b["text"]
    data.set_epoch(1)
    c = data[5]
    data.set_epoch(0)
    assert not torch.equal(a["audio"], c["audio"])


def test_audio_and_video_segments_agree(data):
    lay = data.layout
    for i in range(len(data)):
        item, segments = data[i], data.segments(i)
        digits = [s.digit for s in segments]
        assert len(digits) in lay.lengths
        assert item["text"] == " ".join(DIGIT_NAMES[d] for d in digits)
        assert item["digits"] == " ".join(map(str, digits))
        voiced = item["audio"].max(-1).values > -1  # (L,)
        inside = torch.zeros_like(voiced)
        for k, s in enumerate(segments):
            inside[s.start : s.end] = True
            assert voiced[s.start] and voiced[s.end - 1]  # the word's ends are voiced
            if k:
                assert s.start > segments[k - 1].end  # a pause between words
                assert s.first == segments[k - 1].last  # one digit follows the other
            # the digit appears within one video frame of its spoken onset
            assert abs(s.first * lay.hop - s.start) < lay.hop
            assert s.last > s.first
        assert not (voiced & ~inside).any()  # silence outside the words
        shown = item["video"].flatten(1).max(1).values > -1  # (T,)
        on = torch.zeros_like(shown)
        for s in segments:
            on[s.first : s.last] = True
        assert torch.equal(shown, on)  # blank exactly where no digit is on screen


def test_frames_are_moving_real_digits_of_the_split():
    test = DigitStringsDataset("test", size=16)
    images, _ = load_digit_images("test")
    real = {bytes(img.numpy().tobytes()) for img in images}
    moved = 0
    for i in range(len(test)):
        item, segments = test[i], test.segments(i)
        for s in segments:
            frames = item["video"][s.first : s.last]
            centred = [f for f in frames if bytes(f.numpy().tobytes()) in real]
            moved += len(frames) - len(centred)
    assert moved > 0  # offsets move the digits
    voices = {v for v, _, _ in test.speakers}
    data = _audio_npz()
    assert voices <= set(data["voice"][audio_split(data["voice"]) == "test"])


def test_the_clock_puts_a_video_frame_and_its_audio_at_one_time():
    lay = StringsLayout()
    mods = anydit.MMDiT(digit_strings_modalities(lay), anydit.preset("debug")).modalities
    video, audio = mods["video"].positions(), mods["audio"].positions()  # (n, 3)
    per_frame = video.shape[0] // lay.video_frames
    for j in (0, 3, lay.video_frames - 1):
        t_video = video[j * per_frame, 0]
        token = j * lay.hop // 4  # the audio token starting with video frame j (4 frames each)
        assert t_video == audio[token, 0]


def test_voiced_span_and_bad_layouts():
    mel = np.full((10, 4), -1.0)
    mel[3:6, 1] = 0.5
    assert voiced_span(mel) == (3, 6) and voiced_span(np.full((5, 4), -1.0)) == (0, 0)
    with pytest.raises(ValueError, match="multiple of hop"):
        StringsLayout(audio_frames=100, hop=8)
    with pytest.raises(ValueError, match="need up to"):
        DigitStringsDataset("train", layout=StringsLayout(audio_frames=32, hop=8))


def test_a_run_trains_on_digit_strings(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "data: {source: digit-strings}\nmodel: {preset: debug}\n"
        "train: {steps: 2, batch_size: 4, checkpoint_every: 2, tensorboard: false}\n"
    )
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    model = anydit.load_model(tmp_path / "run" / "model.safetensors")
    assert sorted(model.modalities) == ["audio", "digits", "text", "video"]


def test_streams_on_one_clock_must_last_as_long():
    video, audio, *rest = digit_strings_modalities()
    short = anydit.ModalityConfig(**{**video.__dict__, "shape": (15, 1, 8, 8)})
    with pytest.raises(ValueError, match="sharing clock 'av' must last as long: 'audio' 128, "):
        anydit.MMDiT([short, audio, *rest], anydit.preset("debug"))
    slow = anydit.ModalityConfig(**{**audio.__dict__, "rate": 0.5})
    with pytest.raises(ValueError, match="'video' 128 units"):
        anydit.MMDiT([video, slow, *rest], anydit.preset("debug"))


def test_a_clip_is_written_as_a_gif_at_its_frame_rate_and_a_wav(tmp_path):
    from PIL import Image

    from anydit.data.digits import mel_params
    from anydit.eval.clips import write_clip

    item = DigitStringsDataset("test", size=2)[0]
    cell = write_clip(tmp_path, "clip0", item["video"], 5.0, item["audio"], mel_params())
    with Image.open(tmp_path / "clip0.gif") as gif:
        durations = []
        for k in range(gif.n_frames):
            gif.seek(k)
            durations.append(gif.info["duration"])
        assert sum(durations) == 16 * 200 and gif.size == (128, 128)  # 5 frames a second
    assert (tmp_path / "clip0.wav").stat().st_size > 44
    assert 'src="clip0.gif"' in cell and 'src="clip0.wav"' in cell


def test_the_digit_strings_demo_trains_judges_and_writes_a_gallery(tmp_path, capsys):
    import json

    from anydit.demo_strings import run_strings_demo

    small = ["model.preset=debug", "model.width=32", "model.depth=1", "model.heads=2"]
    small += ["model.head_dim=16", "train.steps=2", "train.batch_size=8"]
    small += ["train.tensorboard=false"]
    metrics = run_strings_demo(
        tmp_path / "d", overrides=small, processes=1, clips=2, progress=False
    )
    assert {"joint_sync", "audio_to_video", "continuation_seam"} <= set(metrics)
    saved = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert saved["train_steps"] == 2 and saved["joint_sync"] == metrics["joint_sync"]
    page = (tmp_path / "d" / "gallery" / "index.html").read_text()
    assert "joint_0.gif" in page and "video_to_audio_0.wav" in page
    assert (tmp_path / "d" / "gallery" / "prediction_1.gif").is_file()
    assert main(["demo", "digit-strings", "--guidance", "2", "--out", str(tmp_path / "e")]) == 2
    assert "--guidance and --guidance-interval are the digits demo's" in capsys.readouterr().err


def test_data_strings_lengths_and_the_run_s_shapes_set_the_training_clips():
    from anydit.data.digit_strings import layout_for
    from anydit.data.sources import build_dataset

    mods = digit_strings_modalities(StringsLayout(audio_frames=64, hop=8))  # 8 frames, 0.8 s
    cfg = anydit.DataConfig(source="digit-strings", strings_lengths=(1,))
    data = build_dataset(cfg, "train", mods)
    assert data.layout == StringsLayout(audio_frames=64, hop=8, lengths=(1,))
    item = data[0]
    assert item["video"].shape[0] == 8 and item["audio"].shape[0] == 64
    assert all(len(data.segments(i)) == 1 for i in range(8))  # one digit a clip
    assert len(build_dataset(anydit.DataConfig(source="digit-strings"), "train").segments(0)) >= 3
    with pytest.raises(ValueError, match="data.strings_lengths: expected integers >= 1"):
        anydit.DataConfig(source="digit-strings", strings_lengths=(0,))
    with pytest.raises(ValueError, match="data.strings_lengths: expected empty unless"):
        anydit.DataConfig(source="digits", strings_lengths=(1,))
    odd = [anydit.ModalityConfig(**{**m.__dict__, "shape": (7, 1, 8, 8)}) if m.name == "video"
           else m for m in mods]  # fmt: skip
    with pytest.raises(ValueError, match="clocks do not match"):
        layout_for(odd)


def test_data_strings_clips_sets_the_training_epoch_and_leaves_the_test_split():
    from anydit.data.sources import build_dataset

    default = build_dataset(anydit.DataConfig(source="digit-strings"), "train")
    more = anydit.DataConfig(source="digit-strings", strings_clips=5000)
    train, test = build_dataset(more, "train"), build_dataset(more, "test")
    assert len(default) == len(default.labels) and len(train) == 5000 > len(default)
    assert len(test) == len(build_dataset(anydit.DataConfig(source="digit-strings"), "test"))
    again = build_dataset(more, "train")[4999]["audio"]  # drawn from (seed, epoch, index)
    assert torch.equal(train[4999]["audio"], again)
    train.set_epoch(1)
    assert not torch.equal(train[4999]["audio"], again)
    with pytest.raises(IndexError):
        default[len(default)]
    with pytest.raises(ValueError, match="data.strings_clips: expected an integer >= 0"):
        anydit.DataConfig(source="digit-strings", strings_clips=-1)
    with pytest.raises(ValueError, match="data.strings_clips: expected 0 unless"):
        anydit.DataConfig(source="digits", strings_clips=100)


def test_one_digit_clips_train_judge_and_skip_the_completions(tmp_path):
    from anydit.demo_strings import run_strings_demo
    from anydit.eval.strings_tasks import COMPLETIONS, evaluate_strings

    small = ["model.preset=debug", "model.width=32", "model.depth=1", "model.heads=2"]
    small += ["model.head_dim=16", "train.steps=1", "train.batch_size=4"]
    small += ["train.tensorboard=false", "data.strings_lengths=[1]"]
    small += ["modalities.audio.shape=[32,32]", "modalities.video.shape=[4,1,8,8]"]
    metrics = run_strings_demo(
        tmp_path / "d", overrides=small, processes=1, clips=2, progress=False
    )
    assert "joint_sync" in metrics and "caption_to_audio" in metrics
    assert not {k for k in metrics if k.split("_seam")[0] in COMPLETIONS}
    model = anydit.load_model(tmp_path / "d" / "model.safetensors")
    assert model.modalities["audio"].shape[0] == 32
    with pytest.raises(ValueError, match="need clips of 2 or more digits \\(lengths \\(1,\\)\\)"):
        evaluate_strings(model, 2, lengths=(1,), tasks=("prediction",))
