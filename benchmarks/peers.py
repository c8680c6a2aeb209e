"""Training step against peers: anydit vs diffusers' SD3 transformer vs lucidrains' ``mmdit``.

    python benchmarks/peers.py                       # step + memory, tiny and modest configs
    python benchmarks/peers.py --sections scaling    # step time vs tokens and vs depth
    python benchmarks/peers.py --configs modest --steps 8 --out benchmarks/peers.json

Every model is built at the same width, depth, heads and token counts: an image stream of
4-channel 2x2-patched latents and a 77-token text stream of continuous embeddings (the
condition), QK RMSNorm on. One step is forward + backward + AdamW of the image output's MSE.
Each measurement runs in its own process (so peak memory is that step's own: the rise of the
resident set's high-water mark, reset just before the measured step, over its size before it,
with glibc's mmap threshold fixed so freed tensors leave the resident set).

Reported: samples/s and tokens/s (median step), model FLOPs per step (linears counted by
``torch.utils.flop_counter`` in forward and backward, attention added as 3 x 4 b h N^2 e since
the counter does not see the CPU flash kernel), achieved GFLOP/s and its share of this machine's
matmul peak measured in the same run (a 2048^3 matmul, fp32 and bf16). Ratios are against
diffusers in the same run. ``anydit`` is the any-to-any model (the text stream has an output
too); ``anydit-sd3`` is diffusers' own SD3 network imported into anydit (``import_diffusers``):
the same computation as ``diffusers``, so its ratio is the implementations' alone. ``mmdit``
is blocks only (no patch embedding, no final layer, no time embedding: the caller passes the
conditioning vector), so its step does a little less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from common import vm  # benchmarks/common.py (scripts run from their folder)

CONFIGS = {
    # the size of the unit tests' models
    "tiny": {"depth": 2, "heads": 2, "head_dim": 16, "side": 8, "text": 16, "batch": 8},
    # the modest config: 8 layers, 6 heads x 64, 256 image + 77 text tokens, batch 8
    "modest": {"depth": 8, "heads": 6, "head_dim": 64, "side": 32, "text": 77, "batch": 8},
}
IMPLS = ("anydit", "anydit-sd3", "diffusers", "mmdit")
CHANNELS, PATCH = 4, 2


def _build(impl: str, c: dict, checkpointing: bool):
    """(model, make_inputs(generator) -> kwargs, output(model, kwargs) -> image prediction)."""
    import torch

    width = c["heads"] * c["head_dim"]
    b, side, text = c["batch"], c["side"], c["text"]
    n_img = (side // PATCH) ** 2
    if impl == "anydit":
        import anydit
        from anydit.config import ModalityConfig, ModelConfig

        mods = [
            ModalityConfig("image", "image", (CHANNELS, side, side), patch=PATCH),
            ModalityConfig("text", "sequence", (text, width)),
        ]
        cfg = ModelConfig(
            width=width,
            depth=c["depth"],
            heads=c["heads"],
            head_dim=c["head_dim"],
            checkpointing=checkpointing,
        )
        model = anydit.MMDiT(mods, cfg)
        inputs, output = _anydit_io(model, b)

    elif impl == "anydit-sd3":  # diffusers' network imported: the same computation, our code
        import anydit

        model = anydit.import_diffusers(_sd3(c), "sd3", height=side, width=side, text_tokens=text)
        model.cfg.checkpointing = checkpointing
        inputs, output = _anydit_io(model, b)

    elif impl == "diffusers":
        model = _sd3(c)
        if checkpointing:
            model.enable_gradient_checkpointing()

        def inputs(g):
            return {
                "hidden_states": torch.randn(b, CHANNELS, side, side, generator=g),
                "encoder_hidden_states": torch.randn(b, text, width, generator=g),
                "pooled_projections": torch.randn(b, width, generator=g),
                "timestep": torch.rand(b, generator=g) * 1000,
            }

        def output(m, kw):
            return m(**kw).sample

    elif impl == "mmdit":
        if checkpointing:
            raise ValueError("mmdit has no activation checkpointing option")
        from mmdit import MMDiT

        model = MMDiT(
            depth=c["depth"],
            dim_image=width,
            dim_text=width,
            dim_cond=width,
            dim_head=c["head_dim"],
            heads=c["heads"],
            qk_rmsnorm=True,
            flash_attn=True,
            num_residual_streams=1,
        )

        def inputs(g):
            return {
                "text_tokens": torch.randn(b, text, width, generator=g),
                "image_tokens": torch.randn(b, n_img, width, generator=g),
                "time_cond": torch.randn(b, width, generator=g),
            }

        def output(m, kw):
            return m(**kw)[1]

    else:
        raise ValueError(f"unknown implementation {impl!r}; expected one of {IMPLS}")
    return model, inputs, output


def _anydit_io(model, b: int):
    """(inputs(generator), output(model, kwargs)) for an anydit model: a random latent image
    being generated (t ~ U(0, 1)), every other modality given (t = 1) with random values."""
    import torch

    def inputs(g):
        tokens, times = {}, {}
        for name, m in model.modalities.items():
            tokens[name] = m.tokenize(torch.randn(b, *m.shape, generator=g))
            times[name] = torch.rand(b, generator=g) if name == "image" else torch.ones(b)
        return {"tokens": tokens, "times": times}

    def output(m, kw):
        return m(kw["tokens"], kw["times"])["image"]

    return inputs, output


def _sd3(c: dict):
    """diffusers' SD3 transformer at config ``c`` (QK RMSNorm on)."""
    from diffusers import SD3Transformer2DModel

    width = c["heads"] * c["head_dim"]
    return SD3Transformer2DModel(
        sample_size=c["side"],
        patch_size=PATCH,
        in_channels=CHANNELS,
        num_layers=c["depth"],
        attention_head_dim=c["head_dim"],
        num_attention_heads=c["heads"],
        joint_attention_dim=width,
        caption_projection_dim=width,
        pooled_projection_dim=width,
        out_channels=CHANNELS,
        pos_embed_max_size=c["side"] // PATCH,
        qk_norm="rms_norm",
    )


def _attention_flops(c: dict) -> float:
    """Model FLOPs of joint attention in one step: 3 x (QK^T + AV) = 3 x 4 b h N^2 e."""
    n = (c["side"] // PATCH) ** 2 + c["text"]
    return 3 * 4 * c["batch"] * c["heads"] * n * n * c["head_dim"] * c["depth"]


def _compile_blocks(impl: str, model) -> None:
    """torch.compile each transformer block (anydit's ``train.compile`` does the same)."""
    if impl.startswith("anydit"):
        blocks = [*model.blocks, *model.single_blocks]
    elif impl == "diffusers":
        blocks = list(model.transformer_blocks)
    else:
        blocks = list(model.blocks)
    for block in blocks:
        block.compile()


def worker(
    impl: str,
    c: dict,
    precision: str,
    checkpointing: bool,
    steps: int,
    prof: bool,
    compiled: bool = False,
):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model, inputs, output = _build(impl, c, checkpointing)
    if compiled:
        _compile_blocks(impl, model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    kw = inputs(g)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        with autocast:
            pred = output(model, kw)
        loss = (pred.float() - 1.0).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: allocator, AdamW state (and compilation)
    step()
    before = vm("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set
    step()
    peak = vm("VmHWM") - before
    if compiled:  # the counter cannot see inside compiled graphs: count on an eager twin
        torch.manual_seed(0)
        twin, twin_inputs, twin_output = _build(impl, c, checkpointing)
        twin_kw = twin_inputs(torch.Generator().manual_seed(0))
        with FlopCounterMode(display=False) as counter, autocast:
            twin_output(twin, twin_kw).float().pow(2).mean().backward()
    else:
        with FlopCounterMode(display=False) as counter:
            step()
    flops = counter.get_total_flops() + _attention_flops(c)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    median = sorted(times)[len(times) // 2] if times else float("nan")
    row = {
        "impl": impl + (" (compiled)" if compiled else ""),
        "precision": precision,
        "checkpointing": checkpointing,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "step_s": median,
        "samples_per_s": c["batch"] / median,
        "tokens_per_s": c["batch"] * ((c["side"] // PATCH) ** 2 + c["text"]) / median,
        "gflop_per_step": flops / 1e9,
        "gflops": flops / 1e9 / median,
        "peak_step_mem_mb": peak,
    }
    if prof:
        from torch.profiler import profile

        with profile() as p:
            step()
        events = p.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        attn = sum(e.self_cpu_time_total for e in events if "attention" in e.key.lower())
        row["attention_share"] = attn / total
    return row


def peak_worker(precision: str) -> dict:
    """Best-of-5 GFLOP/s of a 2048 x 2048 x 2048 matmul: the machine's practical peak."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return {"precision": precision, "peak_gflops": 2 * 2048**3 / best / 1e9}


def _run(args: list[str], memory: bool = False) -> dict | None:
    cmd = [sys.executable, __file__, *args]
    env = dict(os.environ)
    if memory:
        # A fixed mmap threshold turns off glibc's adaptive one, so every large tensor is mapped
        # on allocation and unmapped on free: the resident set then follows the live tensors and
        # its high-water mark over one step is that step's peak. It also slows every step (an
        # mmap per tensor), so memory is measured in a process of its own, not timed.
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  skipped {' '.join(args)}: {last}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure(impl, cfg, precision, ckpt, steps, prof=False, compiled=False) -> dict | None:
    """Speed in one process (default allocator), peak memory in another."""
    spec = json.dumps(
        {"impl": impl, "cfg": cfg, "precision": precision, "ckpt": ckpt, "compiled": compiled}
    )
    row = _run(["--worker", spec, "--steps", str(steps)] + (["--profile"] if prof else []))
    mem = _run(["--worker", spec, "--steps", "0"], memory=True)
    if row and mem:
        row["peak_step_mem_mb"] = mem["peak_step_mem_mb"]
    return row


def section_step(
    configs: list[str], steps: int, peaks: dict, compiled: bool, impls=IMPLS
) -> list[dict]:
    rows = []
    for name in configs:
        c = CONFIGS[name]
        for precision in ("fp32", "bf16"):
            for ckpt in (False, True):
                for impl in impls:
                    if impl == "mmdit" and ckpt:
                        continue
                    r = _measure(impl, c, precision, ckpt, steps)
                    if r:
                        r.update(config=name, peak_share=r["gflops"] / peaks[precision])
                        rows.append(r)
            if compiled and name == "modest":  # torch.compile per block, no checkpointing
                for impl in ("anydit", "diffusers"):
                    r = _measure(impl, c, precision, False, steps, compiled=True)
                    if r:
                        r.update(config=name, peak_share=r["gflops"] / peaks[precision])
                        rows.append(r)
    print("\n## Training step (forward + backward + AdamW)\n")
    print(
        "| config | precision | act. ckpt | impl | params | samples/s | tokens/s | GFLOP/step "
        "| GFLOP/s | % of matmul peak | vs diffusers | peak step MiB | mem vs diffusers |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ref = next(
            (
                x
                for x in rows
                if x["impl"] == "diffusers"  # compiled rows too are compared with eager diffusers
                and (x["config"], x["precision"], x["checkpointing"])
                == (r["config"], r["precision"], r["checkpointing"])
            ),
            None,
        )
        speed = f"{r['samples_per_s'] / ref['samples_per_s']:.2f}x" if ref else "n/a"
        mem = f"{r['peak_step_mem_mb'] / ref['peak_step_mem_mb']:.2f}x" if ref else "n/a"
        print(
            f"| {r['config']} | {r['precision']} | {'yes' if r['checkpointing'] else 'no'} | "
            f"{r['impl']} | {r['params_m']:.2f}M | {r['samples_per_s']:.1f} | "
            f"{r['tokens_per_s']:.0f} | {r['gflop_per_step']:.2f} | {r['gflops']:.0f} | "
            f"{100 * r['peak_share']:.0f}% | {speed} | {r['peak_step_mem_mb']:.0f} | {mem} |"
        )
    return rows


def section_scaling(steps: int, peaks: dict) -> list[dict]:
    base = CONFIGS["modest"]
    rows = []
    for side in (16, 32, 64, 128):  # 64, 256, 1024, 4096 image tokens (+ 77 text), batch 1
        c = dict(base, side=side, batch=1)
        for impl in ("anydit", "diffusers"):
            r = _measure(impl, c, "fp32", False, steps, prof=True)
            if r:
                r.update(axis="tokens", value=(side // PATCH) ** 2, config=c)
                rows.append(r)
    for depth in (2, 4, 8, 16):
        c = dict(base, depth=depth)
        for impl in ("anydit", "diffusers"):
            r = _measure(impl, c, "fp32", False, steps, prof=True)
            if r:
                r.update(axis="depth", value=depth, config=c)
                rows.append(r)
    print("\n## Scaling (fp32; tokens: batch 1, depth 8; depth: batch 8, 256 + 77 tokens)\n")
    print("| axis | value | impl | step (s) | GFLOP/s | attention share of time | vs diffusers |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        ref = next(
            (
                x
                for x in rows
                if x["impl"] == "diffusers" and (x["axis"], x["value"]) == (r["axis"], r["value"])
            ),
            None,
        )
        speed = f"{ref['step_s'] / r['step_s']:.2f}x" if ref else "n/a"
        print(
            f"| {r['axis']} | {r['value']} | {r['impl']} | {r['step_s']:.3f} | "
            f"{r['gflops']:.0f} | {100 * r['attention_share']:.0f}% | {speed} |"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="tiny,modest", help="comma-separated: tiny, modest")
    ap.add_argument("--sections", default="step", help="comma-separated: step, scaling")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    ap.add_argument(
        "--compile", action="store_true", help="add modest rows with torch.compile per block"
    )
    ap.add_argument("--impls", default=",".join(IMPLS), help="comma-separated: " + ", ".join(IMPLS))
    ap.add_argument("--out", default="benchmarks/peers.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--peak", help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        s = json.loads(args.worker)
        row = worker(
            s["impl"],
            s["cfg"],
            s["precision"],
            s["ckpt"],
            args.steps,
            args.profile,
            s.get("compiled", False),
        )
        print(json.dumps(row))
        return
    if args.peak:
        print(json.dumps(peak_worker(args.peak)))
        return
    import torch

    peaks = {p: _run(["--peak", p])["peak_gflops"] for p in ("fp32", "bf16")}
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}; matmul peak fp32 {peaks['fp32']:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16']:.0f} GFLOP/s"
    )
    result = {"torch": torch.__version__, "peak_gflops": peaks}
    sections = args.sections.split(",")
    if "step" in sections:
        result["step"] = section_step(
            args.configs.split(","), args.steps, peaks, args.compile, args.impls.split(",")
        )
    if "scaling" in sections:
        result["scaling"] = section_scaling(args.steps, peaks)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
