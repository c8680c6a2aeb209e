"""Feature caches side by side with diffusers' on the same SD3 transformer.

    python benchmarks/caches.py [--layers 8] [--steps 28] [--repeats 3]

One random SD3 transformer (diffusers' ``SD3Transformer2DModel``: 256 image tokens from 4x32x32
latents, 77 text tokens, width 384) and the same weights imported into anydit. Each
implementation samples 28 Euler steps of the flow (uniform grid, batch 2) without a cache and
with each of its caches at several settings: diffusers' ``FirstBlockCache`` and
``TaylorSeerCache`` hooks (``diffusers.hooks``), anydit's ``first_block``, ``taylor``,
``taylor_attention`` (diffusers' way: attention outputs forecast, the rest computed) and
``region`` (``SampleConfig.cache``) and ``kv_reuse`` (the given text tokens' keys and values
computed once: an approximation on SD3, whose text tokens read the image ones). Error:
relative L2 distance of the final latents to the same implementation's uncached output.
Speed-up: its uncached time / its cached time, median of ``--repeats`` runs, each in this one
process (so both see the same machine). The summary: at each error level, the best speed-up
each implementation reaches without exceeding it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

FIRST_BLOCK = (0.02, 0.05, 0.1, 0.2, 0.4)
TAYLOR = ((2, 1), (3, 1), (4, 1), (5, 1), (6, 1), (3, 2), (5, 2))  # (interval, order)
REGION = ((0.75, 2), (0.5, 4), (0.5, 8))  # (ratio, dense interval)
LEVELS = (0.0003, 0.001, 0.003, 0.01, 0.03)


def diffusers_run(model, latents, text, pooled, steps: int, cache=None):
    """Euler from sigma 1 to 0 with diffusers' model (it predicts noise - data)."""
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    registry = HookRegistry.check_if_exists_or_initialize(model)
    registry.reset_stateful_hooks()
    x = latents.clone()
    sigmas = torch.linspace(1, 0, steps + 1)
    with torch.no_grad():
        for i in range(steps):
            _set_cache_context(model, CacheContext("cond", step_index=i, sigma=float(sigmas[i])))
            t = (sigmas[i] * 1000).expand(x.shape[0])
            out = model(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled,
                        timestep=t).sample  # fmt: skip
            x = x + (sigmas[i + 1] - sigmas[i]) * out
    _set_cache_context(model, None)
    return x


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/caches.json")
    args = ap.parse_args()

    import diffusers
    from diffusers.hooks import (
        FirstBlockCacheConfig,
        TaylorSeerCacheConfig,
        apply_first_block_cache,
        apply_taylorseer_cache,
    )

    import anydit

    config = dict(
        sample_size=32, patch_size=2, in_channels=4, num_layers=args.layers,
        attention_head_dim=64, num_attention_heads=6, joint_attention_dim=256,
        caption_projection_dim=384, pooled_projection_dim=64, out_channels=4,
        pos_embed_max_size=32, qk_norm="rms_norm",
    )  # fmt: skip
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 32, 32, generator=g)
    text, pooled = torch.randn(2, 77, 256, generator=g), torch.randn(2, 64, generator=g)
    rows, failures = [], {}

    def record(impl: str, setting: str, out, seconds: float, ref, base: float) -> None:
        err = float((out - ref).norm() / ref.norm())
        rows.append({"impl": impl, "setting": setting, "error": err, "seconds": seconds,
                     "speedup": base / seconds})  # fmt: skip
        print(f"{impl:9s} {setting:28s} error {err:.4f}  {seconds:.3f} s  x{base / seconds:.2f}")

    def theirs(cache=None, kind=None):
        model = diffusers.SD3Transformer2DModel(**config).eval()
        model.load_state_dict(base_model.state_dict())
        if kind == "first_block":
            apply_first_block_cache(model, cache)
        elif kind == "taylor":
            apply_taylorseer_cache(model, cache)
        return model

    base_model = diffusers.SD3Transformer2DModel(**config).eval()
    ours = anydit.import_diffusers(base_model, "sd3", height=32, width=32, text_tokens=77)
    task = {"image": "generate", "text": text, "pooled": pooled}
    plain = anydit.SampleConfig(steps=args.steps, shift=1.0)

    def our_run(**cache):
        return anydit.sample(ours, task, n=2, seed=0, config=plain, **cache)["image"]

    ref, base = timed(lambda: our_run(), args.repeats)
    record("anydit", "none", ref, base, ref, base)
    ours_settings = [(f"first_block {t}", {"cache": "first_block", "cache_threshold": t})
                     for t in FIRST_BLOCK]  # fmt: skip
    ours_settings += [
        (f"taylor {i} order {o}", {"cache": "taylor", "cache_interval": i, "cache_order": o})
        for i, o in TAYLOR
    ]
    ours_settings += [
        (
            f"taylor_attention {i} order {o}",
            {"cache": "taylor_attention", "cache_interval": i, "cache_order": o},
        )
        for i, o in TAYLOR
    ]
    ours_settings += [("kv reuse (the text)", {"kv_reuse": True})]
    for reuse in (False, True):
        ours_settings += [
            (
                f"region {r} every {i}" + (", kv reuse" if reuse else ""),
                {"cache": "region", "cache_ratio": r, "cache_interval": i, "kv_reuse": reuse},
            )
            for r, i in REGION
        ]
    for name, kw in ours_settings:
        out, s = timed(lambda kw=kw: our_run(**kw), args.repeats)
        record("anydit", name, out, s, ref, base)

    def their_run(model):
        return diffusers_run(model, latents, text, pooled, args.steps)

    plain_theirs = theirs()
    ref_d, base_d = timed(lambda: their_run(plain_theirs), args.repeats)
    record("diffusers", "none", ref_d, base_d, ref_d, base_d)
    their_settings = [
        (f"FirstBlockCache {t}", FirstBlockCacheConfig(threshold=t), "first_block")
        for t in FIRST_BLOCK
    ]
    their_settings += [
        (
            f"TaylorSeer {i} order {o}",
            TaylorSeerCacheConfig(
                cache_interval=i,
                max_order=o,
                disable_cache_before_step=o + 1,
                taylor_factors_dtype=torch.float32,
            ),
            "taylor",
        )
        for i, o in TAYLOR
    ]
    for name, cache, kind in their_settings:
        model = theirs(cache, kind)
        try:
            out, s = timed(lambda m=model: their_run(m), args.repeats)
        except Exception as err:  # noqa: BLE001 - a peer's failure is a result to report
            failures[name] = f"{type(err).__name__}: {err}"
            print(f"diffusers {name:28s} does not run: {failures[name]}")
            continue
        record("diffusers", name, out, s, ref_d, base_d)

    summary = {}
    for level in LEVELS:
        best = {}
        for impl in ("anydit", "diffusers"):
            ok = [r for r in rows if r["impl"] == impl and r["error"] <= level]
            top = max(ok, key=lambda r: r["speedup"])  # "none" (1x, error 0) is always there
            best[impl] = {
                "speedup": top["speedup"],
                "setting": top["setting"],
                "error": top["error"],
            }
        summary[str(level)] = best
    result = {"rows": rows, "best_at_error": summary, "failures": failures, "config": config}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(
        "\n| error at most | anydit: best speed-up (setting) | diffusers: best speed-up (setting) |"
    )
    print("|---:|---|---|")
    for level, best in summary.items():
        a, d = best["anydit"], best["diffusers"]
        print(f"| {float(level):.2%} | {a['speedup']:.2f}x ({a['setting']}) | "
              f"{d['speedup']:.2f}x ({d['setting']}) |")  # fmt: skip
    print(f"\nuncached 28-step time: anydit {base:.3f} s, diffusers {base_d:.3f} s")


if __name__ == "__main__":
    main()
