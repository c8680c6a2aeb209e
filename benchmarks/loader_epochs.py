"""What DataLoader workers cost at each epoch's start: many short epochs read with workers that
start again every epoch (a reader per epoch, as the training loop did) against one set of
workers reading on from one epoch into the next (one ``EpochReader`` told the next epochs'
rows, as the loop does now). No model: the loader alone,
so the difference is what a fast accelerator step would wait for.

    python benchmarks/loader_epochs.py [--source digit-strings] [--epochs 6] [--workers 2]

The built-in ``digit-strings`` epoch is 1,337 clips (10 batches of 128): its workers started
again every 10 steps. Reports samples/s and the median wait for an epoch's first batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def read(reader_for_epoch, epochs: int, rows_of, ahead: bool) -> dict:
    """Samples/s over ``epochs`` and the median wait for each epoch's first batch (``ahead``:
    the reader is told the next epochs' rows, as the training loop's is)."""
    first, count = [], 0
    start = time.perf_counter()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        reader = reader_for_epoch(epoch)
        batches = reader(epoch, rows_of(epoch), 0, rows_of if ahead else None)
        for k, (batch, _) in enumerate(batches):
            if k == 0:
                first.append(time.perf_counter() - t0)
            count += next(iter(batch.values())).shape[0]
    return {
        "samples_per_s": count / (time.perf_counter() - start),
        "first_batch_s": statistics.median(first),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default="digit-strings")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--out", default="benchmarks/loader_epochs.json")
    args = ap.parse_args()

    from anydit.data.sources import EpochReader, batch_order, build_dataset, make_collate
    from anydit.demo import demo_config
    from anydit.demo_strings import strings_config
    from anydit.modalities import build_modalities

    cfg = strings_config([]) if args.source == "digit-strings" else demo_config([])
    dataset = build_dataset(cfg.data, "train", cfg.modalities)
    collate = make_collate(build_modalities(cfg.modalities))

    def rows_of(epoch: int):
        return batch_order(len(dataset), args.batch, 0, epoch)

    one = EpochReader(dataset, collate, args.workers)
    rows = {
        "a reader per epoch (workers start each epoch)": read(
            lambda _: EpochReader(dataset, collate, args.workers), args.epochs, rows_of, False
        ),
        "one reader, reading on across epochs": read(lambda _: one, args.epochs, rows_of, True),
    }
    for name, r in rows.items():
        print(f"{name}: {r['samples_per_s']:.0f} samples/s, first batch {r['first_batch_s']:.3f} s")
    result = {"source": args.source, "epochs": args.epochs, "workers": args.workers, "rows": rows}
    result["batches_per_epoch"] = len(rows_of(0))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
