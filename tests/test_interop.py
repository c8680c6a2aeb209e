"""Import/export of diffusers' SD3 and Flux transformers: exact parity and clear refusals.

diffusers is a test-only dependency; the configurations are diffusers' own test ones.
"""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from anydit.interop.diffusers import (  # noqa: E402
    export_diffusers,
    import_diffusers,
    save_diffusers,
)
from anydit.interop.weights import WeightsError  # noqa: E402

SD3_TINY = {
    "sample_size": 32,
    "patch_size": 1,
    "in_channels": 4,
    "num_layers": 4,
    "attention_head_dim": 8,
    "num_attention_heads": 4,
    "caption_projection_dim": 32,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 64,
    "out_channels": 4,
    "pos_embed_max_size": 96,
    "dual_attention_layers": (),
    "qk_norm": None,
}
SD35_TINY = {**SD3_TINY, "dual_attention_layers": (0,), "qk_norm": "rms_norm"}
FLUX_TINY = {
    "patch_size": 1,
    "in_channels": 4,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "axes_dims_rope": [4, 4, 8],
}


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """diffusers zero-initialises some layers (adaLN, outputs); parity on zeros proves little,
    so every parameter gets random values: matrices N(0, 1/fan_in) (a trained network's
    scale), biases N(0, 0.1), norm weights 1 + N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            else:
                p.copy_(0.1 * noise + (1.0 if "norm" in name else 0.0))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _sd3(config: dict, seed: int = 0):
    m = diffusers.SD3Transformer2DModel(**config).eval()
    _randomize(m, seed)
    return m


def _flux(config: dict, seed: int = 0):
    m = diffusers.FluxTransformer2DModel(**config).eval()
    _randomize(m, seed)
    return m


def _ours_sd3(model, latents, text, pooled, t):
    img = model.modalities["image"]
    b = latents.shape[0]
    tokens = {"image": img.tokenize(latents), "text": text, "pooled": pooled[:, None]}
    one = torch.ones(b, dtype=latents.dtype)
    times = {"image": t, "text": one, "pooled": one}
    with torch.no_grad():
        return img.detokenize(model(tokens, times)["image"])


@pytest.mark.parametrize("config", [SD3_TINY, SD35_TINY], ids=["sd3", "sd3.5"])
@pytest.mark.parametrize("size,batch", [((32, 32), 2), ((16, 24), 1), ((8, 8), 3)])
def test_sd3_matches_diffusers(config, size, batch):
    theirs = _sd3(config)
    ours = import_diffusers(theirs, "sd3", height=size[0], width=size[1], text_tokens=154)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, 4, *size, generator=g)
    text = torch.randn(batch, 154, 32, generator=g)
    pooled = torch.randn(batch, 64, generator=g)
    for t in (torch.tensor([0.1, 0.5, 0.93])[:batch], torch.rand(batch, generator=g)):
        with torch.no_grad():
            ref = theirs(
                hidden_states=latents,
                encoder_hidden_states=text,
                pooled_projections=pooled,
                timestep=1000 * (1 - t),
            ).sample
        got = _ours_sd3(ours, latents, text, pooled, t)
        assert _rel(got, -ref) < 1e-4, _rel(got, -ref)


def _pack(latents):
    """The Flux pipeline's packing of 2 x 2 latent patches (FluxPipeline._pack_latents; the
    pipeline class itself needs transformers): tokens row-major, features (c, p, q)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def _ids(h: int, w: int, text: int):
    img = torch.zeros(h // 2, w // 2, 3)
    img[..., 1] = torch.arange(h // 2)[:, None]
    img[..., 2] = torch.arange(w // 2)[None, :]
    return img.reshape(-1, 3), torch.zeros(text, 3)


@pytest.mark.parametrize("guidance", [False, True], ids=["schnell", "dev"])
@pytest.mark.parametrize("size,batch", [((8, 8), 2), ((4, 12), 1)])
def test_flux_matches_diffusers(guidance, size, batch):
    theirs = _flux({**FLUX_TINY, "guidance_embeds": guidance})
    ours = import_diffusers(theirs, "flux", height=size[0], width=size[1], text_tokens=24)
    g = torch.Generator().manual_seed(2)
    latents = torch.randn(batch, 1, *size, generator=g)
    text = torch.randn(batch, 24, 32, generator=g)
    pooled = torch.randn(batch, 32, generator=g)
    scale = torch.full((batch,), 3.5)
    img_ids, txt_ids = _ids(*size, 24)
    img = ours.modalities["image"]
    for t in (torch.tensor([0.05, 0.7])[:batch], torch.rand(batch, generator=g)):
        with torch.no_grad():
            ref = theirs(
                hidden_states=_pack(latents),
                encoder_hidden_states=text,
                pooled_projections=pooled,
                timestep=1 - t,
                img_ids=img_ids,
                txt_ids=txt_ids,
                guidance=scale if guidance else None,
            ).sample
        tokens = {"image": img.tokenize(latents), "text": text, "pooled": pooled[:, None]}
        times = {k: torch.ones(batch) for k in ours.names}
        times["image"] = t
        if guidance:
            tokens["guidance"] = scale[:, None, None]
        with torch.no_grad():
            got = _pack(img.detokenize(ours(tokens, times)["image"]))
        assert _rel(got, -ref) < 1e-4, _rel(got, -ref)


@pytest.mark.parametrize(
    "family,build,config",
    [("sd3", _sd3, SD35_TINY), ("flux", _flux, {**FLUX_TINY, "guidance_embeds": True})],
)
def test_export_import_is_identity(family, build, config, tmp_path):
    theirs = build(config)
    ours = import_diffusers(theirs, family, text_tokens=24)  # SD3: at its sample_size
    cfg, state = export_diffusers(ours, family)
    ref = theirs.state_dict()
    assert set(state) == set(ref)
    for k, v in ref.items():
        assert torch.equal(state[k], v), k
    for k, v in config.items():
        want = list(v) if isinstance(v, tuple | list) else v
        got = list(cfg[k]) if isinstance(cfg[k], tuple | list) else cfg[k]
        assert got == want, k
    # and through a folder diffusers itself can load
    save_diffusers(ours, tmp_path / "out", family)
    cls = type(theirs)
    back = cls.from_pretrained(tmp_path / "out").eval()
    for k, v in ref.items():
        assert torch.equal(back.state_dict()[k], v), k


def test_import_from_folder_equals_import_from_model(tmp_path):
    theirs = _sd3(SD35_TINY)
    theirs.save_pretrained(tmp_path / "sd35")
    a = import_diffusers(theirs, "sd3", height=8, width=8, text_tokens=10)
    b = import_diffusers(tmp_path / "sd35", "sd3", height=8, width=8, text_tokens=10)
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v), k


def _save(tmp_path, config, state, name="m"):
    from anydit.interop.weights import write_folder

    return write_folder(tmp_path / name, {"_class_name": "SD3Transformer2DModel", **config}, state)


def test_bad_folders_are_refused_with_the_keys_named(tmp_path):
    theirs = _sd3(SD3_TINY)
    state = dict(theirs.state_dict())
    config = json.loads(json.dumps(SD3_TINY))

    missing = {k: v for k, v in state.items() if k != "context_embedder.weight"}
    with pytest.raises(WeightsError, match=r"1 missing key\(s\): context_embedder.weight"):
        import_diffusers(_save(tmp_path, config, missing, "a"), "sd3")

    extra = {**state, "foo.weight": torch.zeros(2)}
    with pytest.raises(WeightsError, match=r"1 unexpected key\(s\): foo.weight"):
        import_diffusers(_save(tmp_path, config, extra, "b"), "sd3")

    bad = {**state, "proj_out.weight": torch.zeros(5, 32)}
    with pytest.raises(WeightsError, match=r"proj_out.weight: expected \(4, 32\), found \(5, 32\)"):
        import_diffusers(_save(tmp_path, config, bad, "c"), "sd3")

    # a config that does not match its weights (3 blocks declared, 4 stored)
    with pytest.raises(
        WeightsError, match=r"do not match the config.*unexpected.*transformer_blocks.3"
    ):
        import_diffusers(_save(tmp_path, {**config, "num_layers": 3}, state, "d"), "sd3")

    with pytest.raises(WeightsError, match=r"bogus.*not understood"):
        import_diffusers(_save(tmp_path, {**config, "bogus": 1}, state, "e"), "sd3")

    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "config.json").write_text("{}")
    (tmp_path / "f" / "diffusion_pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(WeightsError, match=r"no diffusion_pytorch_model.safetensors.*\.bin"):
        import_diffusers(tmp_path / "f", "sd3")

    with pytest.raises(WeightsError, match="expected FluxTransformer2DModel"):
        import_diffusers(_save(tmp_path, config, state, "g"), "flux")


def test_sharded_folder_is_read_whole(tmp_path):
    theirs = _flux({**FLUX_TINY, "guidance_embeds": True})
    theirs.save_pretrained(tmp_path / "flux", max_shard_size="20KB")
    assert (tmp_path / "flux" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    a = import_diffusers(theirs, "flux", height=4, width=4, text_tokens=3)
    b = import_diffusers(tmp_path / "flux", "flux", height=4, width=4, text_tokens=3)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_flux_without_single_blocks_is_refused():
    with pytest.raises(WeightsError, match="num_single_layers must be >= 1"):
        import_diffusers(_flux({**FLUX_TINY, "num_single_layers": 0}), "flux", text_tokens=3)
