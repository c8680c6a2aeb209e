"""Build ``src/anydit/data/assets/digits_words.json``: a word-level ``tokenizers`` tokenizer for
the digits captions (the demo's text modality, ``tokenizer: digits-words``).

One id per word of the caption templates (digit names, numerals and the template words), plus
``[PAD]`` and ``[UNK]``; words are split on whitespace and punctuation and joined back with
spaces. A caption is at most 6 words ("a picture of the digit 7"), against 24 bytes with the
byte tokenizer, so the text stream has a quarter of the tokens and a caption is spelled right
whenever its words are chosen right. Deterministic: the vocabulary is sorted.

Usage: ``python scripts/build_digits_tokenizer.py --out src/anydit/data/assets/digits_words.json``
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from anydit.data.digits import DIGIT_NAMES, caption_templates, format_caption

SPECIAL = ("[PAD]", "[UNK]")


def build() -> Tokenizer:
    """The tokenizer over every word of every caption the templates can make."""
    split = pre_tokenizers.Whitespace()
    words = set()
    for template in caption_templates():
        for label in range(len(DIGIT_NAMES)):
            caption = format_caption(template, label)
            words.update(w for w, _ in split.pre_tokenize_str(caption))
    vocab = {w: i for i, w in enumerate([*SPECIAL, *sorted(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = split
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out
    tok = build()
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out), pretty=True)
    longest = max(
        len(tok.encode(format_caption(t, k)).ids)
        for t in caption_templates()
        for k in range(len(DIGIT_NAMES))
    )
    print(f"wrote {out}: {tok.get_vocab_size()} ids, longest caption {longest} tokens")


if __name__ == "__main__":
    main()
