"""Judges of digit-strings clips: right on real test clips, wrong where audio and video part."""

import numpy as np
import pytest
import torch
from conftest import randomize

from anydit.data.digit_strings import DigitStringsDataset
from anydit.eval.strings import (
    heard_in,
    real_clips,
    runs,
    seen_in,
    segment_accuracy,
    sync,
    word_onset,
)


@pytest.fixture(scope="module")
def clips():
    data = DigitStringsDataset("test", size=60)
    return (*real_clips(data, 60), data.layout.hop)


def test_runs_and_onsets():
    assert runs(np.array([-1, 3, 3, 5, -1, -1, 5])) == [(3, 1, 3), (5, 3, 4), (5, 6, 7)]
    voiced = np.array([0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1], dtype=bool)
    assert word_onset(voiced, 3, 6) == 2  # back to the start of the word said there
    assert word_onset(voiced, 4, 11) == 7  # a word ending just after: the next one
    assert word_onset(voiced, 5, 7) is None


def test_real_clips_are_in_sync(clips):
    video, audio, _, hop = clips
    report = sync(video, audio, hop)
    assert report.segments >= 180
    assert report.sync >= 0.9
    assert report.onset_error < 1.0


def test_audio_of_other_clips_is_out_of_sync(clips):
    video, audio, _, hop = clips
    report = sync(video, audio.roll(1, 0), hop)  # each clip with its neighbour's audio
    assert report.sync < 0.3


def test_segments_are_read_from_real_clips(clips):
    video, audio, segments, _ = clips
    want = [[s.digit for s in row] for row in segments]
    seen = seen_in(video, [[(s.first, s.last) for s in row] for row in segments])
    heard = heard_in(audio, [[(s.start, s.end) for s in row] for row in segments])
    assert segment_accuracy(seen, want) >= 0.95
    assert segment_accuracy(heard, want) >= 0.9
    assert segment_accuracy(seen, [[(d + 1) % 10 for d in row] for row in want]) < 0.1


def test_words_are_read_through_noise_and_murmur(clips):
    """Generated speech is not clean: silence carries small noise in every band and a word's
    edges murmur. Real clips so spoiled are still read (the loudest-band voicing and onset-
    aligned windows of the first judges read 26% of words at noise 0.15)."""
    from anydit.eval.strings import heard_during

    video, audio, segments, hop = clips
    want = [[s.digit for s in row] for row in segments]
    spans = [[(s.first * hop, s.last * hop) for s in row] for row in segments]
    g = torch.Generator().manual_seed(0)
    noisy = audio + 0.15 * torch.randn(audio.shape, generator=g)
    assert segment_accuracy(heard_during(noisy, spans), want) >= 0.95
    assert sync(video, noisy, hop).sync >= 0.9
    murmur = audio.clone()  # quiet sound in the 3 frames before a clip's first word
    for i, row in enumerate(segments):
        murmur[i, max(row[0].start - 3, 0) : row[0].start] = -0.7
    first = [r[:1] for r in heard_during(murmur, spans)]
    assert segment_accuracy(first, [w[:1] for w in want]) >= 0.95


def test_sync_refuses_mismatched_clocks(clips):
    video, audio, _, hop = clips
    with pytest.raises(ValueError, match="does not span"):
        sync(video, audio[:, :-4], hop)
    with pytest.raises(ValueError, match="does not span"):
        sync(video, torch.cat([audio, audio], 1), hop)


def test_every_task_runs_on_a_small_model_and_bad_models_are_named():
    import anydit
    from anydit.data.digit_strings import digit_strings_modalities
    from anydit.eval.strings_tasks import STRING_TASKS, evaluate_strings

    torch.manual_seed(0)
    mods = digit_strings_modalities()
    model = anydit.MMDiT(mods, anydit.preset("debug", per_token_time=True)).eval()
    got: dict = {}
    scores = evaluate_strings(model, n=3, config=anydit.SampleConfig(steps=2), samples=got)
    assert set(scores) >= {"joint_sync", "video_to_audio", "audio_to_video", "prediction_seam"}
    assert all(0 <= v <= 1 for k, v in scores.items() if not k.endswith(("onset_error", "rtf")))
    # streaming: 4 windows of audio and video, its sampling time over the seconds made
    assert got["streaming"]["audio"].shape[1] == 4 * mods[1].shape[0]
    assert got["streaming"]["video"].shape[1] == 4 * mods[0].shape[0]
    assert scores["streaming_rtf"] > 0 and "streaming_sync" in scores
    flat = anydit.MMDiT(mods, anydit.preset("debug"))
    with pytest.raises(ValueError, match="per_token_time"):
        evaluate_strings(flat, n=2, tasks=("prediction",))
    assert set(evaluate_strings(flat, n=2, config=anydit.SampleConfig(steps=1),
                                tasks=("audio_to_video",))) == {"audio_to_video"}  # fmt: skip
    with pytest.raises(ValueError, match="unknown"):
        evaluate_strings(model, n=2, tasks=("dance",))
    odd = [anydit.ModalityConfig("video", "video", (5, 1, 8, 8), patch=4), *mods[1:]]
    with pytest.raises(ValueError, match="clocks do not match"):
        evaluate_strings(anydit.MMDiT(odd, anydit.preset("debug")), n=2)
    assert len(STRING_TASKS) == 8


def test_words_are_heard_during_shown_spans_and_order_is_scored_by_subsequence(clips):
    from anydit.eval.strings import heard_during
    from anydit.eval.strings_tasks import _in_order

    video, audio, segments, hop = clips
    want = [[s.digit for s in row] for row in segments]
    spans = [[(s.first * hop, s.last * hop) for s in row] for row in segments]
    assert segment_accuracy(heard_during(audio, spans), want) >= 0.97  # real dubbing
    assert _in_order([3, 1, 4], [3, 1, 4]) == 1.0
    assert _in_order([3, 9, 1, 4], [3, 1, 4]) == 0.75  # a word split in two costs one place
    assert _in_order([1, 4], [3, 1, 4]) == pytest.approx(2 / 3)
    assert _in_order([4, 1, 3], [3, 1, 4]) == pytest.approx(1 / 3)
    # 16 random readings contain most 3-digit strings in order; they must not score so
    rng = np.random.default_rng(0)
    noise = [_in_order(list(rng.integers(0, 10, 16)), [3, 1, 4]) for _ in range(200)]
    assert np.mean(noise) < 0.2


def test_streams_a_task_does_not_name_are_dropped_or_generated():
    import anydit
    from anydit.data.digit_strings import digit_strings_modalities
    from anydit.eval.strings_tasks import evaluate_strings

    torch.manual_seed(0)
    model = anydit.MMDiT(digit_strings_modalities(), anydit.preset("debug")).eval()
    made = {}
    for unnamed in ("drop", "generate"):
        got: dict = {}
        evaluate_strings(
            model, n=2, config=anydit.SampleConfig(steps=1), tasks=("video_to_audio",),
            samples=got, unnamed=unnamed,
        )  # fmt: skip
        made[unnamed] = set(got["video_to_audio"])
    assert made["drop"] == {"video", "audio"}
    assert made["generate"] == {"video", "audio", "text", "digits"}
    with pytest.raises(ValueError, match="unnamed must be"):
        evaluate_strings(model, n=2, tasks=("joint",), unnamed="keep")


def test_isolation_moves_the_two_stream_tasks_and_leaves_the_others():
    """``config.isolation`` reaches joint, caption -> AV and streaming (two generated token
    streams); dubbing and prediction (one) sample as without it instead of failing."""
    import anydit
    from anydit.data.digit_strings import digit_strings_modalities
    from anydit.eval.strings_tasks import evaluate_strings

    torch.manual_seed(0)
    model = anydit.MMDiT(digit_strings_modalities(), anydit.preset("debug", per_token_time=True))
    randomize(model.eval(), std=0.2)
    tasks = ("joint", "video_to_audio", "prediction", "streaming")
    made = {}
    for iso in (1.0, 3.0):
        got: dict = {}
        config = anydit.SampleConfig(steps=2, guidance=2.0, isolation=iso)
        evaluate_strings(model, n=2, config=config, tasks=tasks, samples=got)
        made[iso] = got
    for task in ("video_to_audio", "prediction"):
        assert all(torch.equal(made[1.0][task][k], made[3.0][task][k]) for k in made[1.0][task])
    for task in ("joint", "streaming"):
        assert not torch.allclose(made[1.0][task]["audio"], made[3.0][task]["audio"])
