"""``anydit distill-encoder``: train a small new text encoder to reproduce a teacher's
conditioning (X2I): the features a ``codec: encoder`` modality reads (the teacher's last K
hidden states, (L, K * D) a text), so a model trained with the teacher takes the student in its
place, unchanged. The student (``encoders.StudentEncoder``) reads the teacher's
token ids; its folder (weights as safetensors, config, the teacher's tokenizer) is a
``codec_path`` like the teacher's."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor

from anydit.encoders import StudentEncoder, TextEncoder
from anydit.train.distill import cosine_factor
from anydit.train.optim import make_optimizer


def feature_error(student: Tensor, teacher: Tensor, mask: Tensor) -> dict[str, float]:
    """Over the unpadded tokens: relative L2 error ||s - t|| / ||t|| and mean cosine."""
    keep = mask.bool()
    s, t = student[keep], teacher[keep]  # (tokens, C)
    rel = float((s - t).norm() / t.norm().clamp(min=1e-12))
    cos = float(torch.nn.functional.cosine_similarity(s, t, dim=-1).mean())
    return {"relative_error": rel, "cosine": cos}


def distill_encoder(
    teacher_folder: str | Path,
    texts: list[str],
    out: str | Path,
    length: int,
    layers: int = 1,
    val_texts: list[str] | None = None,
    width: int = 128,
    depth: int = 2,
    steps: int | None = None,
    minutes: float | None = None,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    log=print,
) -> dict:
    """Distil the teacher's features of ``texts`` (padded or cut to ``length`` tokens, its last
    ``layers`` hidden states) into a student of ``depth`` layers of ``width``, for ``steps``
    or ``minutes``: AdamW with cosine decay to 0, mean squared error on the unpadded tokens.
    Writes the student's folder ``out`` and returns its errors on ``texts`` and
    ``val_texts`` (``feature_error``) with the step count."""
    if steps is None and minutes is None:
        raise ValueError("distill-encoder: give steps or minutes")
    if not texts:
        raise ValueError("distill-encoder: no texts to distil on")
    if length < 1 or layers < 1:
        raise ValueError(f"distill-encoder: length and layers must be >= 1, got {length}, {layers}")
    teacher = TextEncoder(teacher_folder, layers)
    ids, mask = teacher.tokenize(texts, length)
    target = teacher.encode(texts, length)  # (N, L, C)
    torch.manual_seed(seed)
    vocab = max(len(teacher.tokenizer), int(ids.max()) + 1)
    student = StudentEncoder(vocab, length, teacher.width, width, depth)
    optimizer = make_optimizer(list(student.parameters()), lr)
    gen = torch.Generator().manual_seed(seed)
    start, done_steps = time.perf_counter(), 0

    def done() -> float:
        by_time = 0.0 if minutes is None else (time.perf_counter() - start) / (60 * minutes)
        by_steps = 0.0 if steps is None else done_steps / steps
        return max(by_time, by_steps)

    student.train()
    while done() < 1.0:
        pick = torch.randint(len(texts), (min(batch_size, len(texts)),), generator=gen)
        m = mask[pick]
        err = (student(ids[pick], m) - target[pick]).pow(2).mean(-1)  # (b, L)
        loss = (err * m).sum() / m.sum().clamp(min=1)
        for group in optimizer.param_groups:
            group["lr"] = lr * cosine_factor(done())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        done_steps += 1
        if log and done_steps % 100 == 0:
            log(f"distill-encoder: step {done_steps}, loss {loss.item():.5f}")
    student.eval()
    out = Path(out)
    student.save(out)
    teacher.tokenizer.save_pretrained(str(out))
    result = {"steps": done_steps, "seconds": time.perf_counter() - start}
    with torch.no_grad():
        result["train"] = feature_error(student(ids, mask), target, mask)
        if val_texts:
            v_ids, v_mask = teacher.tokenize(val_texts, length)
            got = student(v_ids, v_mask)
            result["val"] = feature_error(got, teacher.encode(val_texts, length), v_mask)
    return result
