"""Judges of digit-strings clips: right on real test clips, wrong where audio and video part."""

import numpy as np
import pytest
import torch

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


def test_sync_refuses_mismatched_clocks(clips):
    video, audio, _, hop = clips
    with pytest.raises(ValueError, match="does not span"):
        sync(video, audio[:, :-4], hop)
    with pytest.raises(ValueError, match="does not span"):
        sync(video, torch.cat([audio, audio], 1), hop)
