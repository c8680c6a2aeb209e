import re

import pytest
import torch
from conftest import four_modalities, random_batch, randomize

import anydit
from anydit.config import Config, SampleConfig
from anydit.errors import ConfigError


@pytest.fixture
def model():
    mods, cfg = four_modalities(per_token_time=True)
    m = anydit.MMDiT(mods, cfg)
    randomize(m, std=0.2)
    return m


def test_same_seed_same_samples_different_seed_differs(model):
    task = {"image": "generate", "text": "generate", "label": 4}
    a = anydit.sample(model, task, n=3, steps=4, seed=7)
    b = anydit.sample(model, task, n=3, steps=4, seed=7)
    c = anydit.sample(model, task, n=3, steps=4, seed=8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["image"], c["image"])


def test_returns_generated_and_given_unchanged(model):
    audio = torch.randn(3, 16, 4)
    text = ["one", "two", "three"]
    out = anydit.sample(model, {"image": "generate", "audio": audio, "text": text}, n=3, steps=3)
    assert set(out) == {"image", "audio", "text"}
    assert torch.equal(out["audio"], audio)
    assert model.modalities["text"].decode(out["text"]) == text
    assert out["image"].shape == (3, 1, 8, 8) and torch.isfinite(out["image"]).all()


def test_one_given_value_is_broadcast(model):
    out = anydit.sample(model, {"label": "generate", "image": torch.zeros(1, 8, 8)}, n=5, steps=2)
    assert out["label"].shape == (5,) and ((out["label"] >= 0) & (out["label"] < 10)).all()
    assert torch.equal(out["image"], torch.zeros(5, 1, 8, 8))


@pytest.mark.parametrize("solver", ["euler", "heun", "midpoint"])
def test_solvers_run_and_differ(model, solver):
    out = anydit.sample(
        model, {"audio": "generate", "label": 1}, n=2, steps=3, solver=solver, seed=1
    )
    ref = anydit.sample(
        model, {"audio": "generate", "label": 1}, n=2, steps=3, solver="euler", seed=1
    )
    assert torch.isfinite(out["audio"]).all()
    assert torch.equal(out["audio"], ref["audio"]) == (solver == "euler")


def test_inpainting_keeps_known_elements(model):
    known = torch.randn(2, 1, 8, 8)
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    mask[:, :, :4] = True  # top half known: continue the bottom half
    img = model.modalities["image"]
    seen, forward = [], model.forward
    model.forward = lambda tokens, times: seen.append((tokens, times)) or forward(tokens, times)
    out = anydit.sample(
        model, {"image": anydit.generate(known=known, mask=mask), "label": 2}, n=2, steps=4
    )
    del model.forward
    tk = img.token_mask(mask)  # (2, 16): the known tokens
    for tokens, times in seen:  # the network sees the known pixels, at t = 1, every step
        assert torch.equal(tokens["image"][tk], img.tokenize(known)[tk])
        assert (times["image"][tk] == 1).all() and (times["image"][~tk] < 1).all()
    assert len(seen) == 4
    assert torch.equal(out["image"][mask], known[mask])
    assert not torch.allclose(out["image"][~mask], known[~mask])
    text_known = model.modalities["text"].encode(["abc"] * 2)
    text_mask = torch.zeros(2, 12, dtype=torch.bool)
    text_mask[:, :2] = True
    out = anydit.sample(
        model, {"text": anydit.generate(known=text_known, mask=text_mask)}, n=2, steps=4
    )
    assert torch.equal(out["text"][:, :2], text_known[:, :2])


def test_masks_need_per_token_model():
    mods, cfg = four_modalities()
    plain = anydit.MMDiT(mods, cfg)
    with pytest.raises(
        ValueError, match="per-token mask, which needs a model built with per_token_time"
    ):
        anydit.sample(
            plain,
            {
                "image": anydit.generate(
                    known=torch.zeros(1, 8, 8), mask=torch.ones(1, 8, 8, dtype=torch.bool)
                )
            },
        )


def test_guidance(model):
    task = {"image": "generate", "label": 3, "audio": torch.randn(16, 4)}
    plain = anydit.sample(model, task, n=2, steps=3, seed=0)
    one = anydit.sample(model, task, n=2, steps=3, seed=0, guidance=1.0)
    strong = anydit.sample(model, task, n=2, steps=3, seed=0, guidance=3.0)
    per = anydit.sample(model, task, n=2, steps=3, seed=0, guidance={"label": 3.0})
    both = anydit.sample(model, task, n=2, steps=3, seed=0, guidance={"label": 3.0, "audio": 1.0})
    assert torch.equal(plain["image"], one["image"])
    assert not torch.allclose(plain["image"], strong["image"])
    assert not torch.allclose(strong["image"], per["image"])  # per-modality differs from joint
    torch.testing.assert_close(per["image"], both["image"])  # w = 1 adds no branch
    with pytest.raises(ValueError, match=r"guidance names \['text'\], which are not given"):
        anydit.sample(model, task, guidance={"text": 2.0})


def _spied_model():
    """A random four-modality model whose forward records (tokens, times, outputs)."""
    mods, cfg = four_modalities()
    model = anydit.MMDiT(mods, cfg)
    randomize(model, std=0.2)
    calls = []
    forward = model.forward

    def spy(tokens, times):
        out = forward(tokens, times)
        calls.append((tokens, times, out))
        return out

    model.forward = spy
    return model, calls


def test_guidance_closed_form():
    """With one given modality, w = 3 equals 3 v_cond - 2 v_uncond, computed by hand."""
    model, calls = _spied_model()
    got = anydit.sample(model, {"audio": "generate", "label": 5}, n=2, steps=1, guidance=3.0)
    ((tokens, times, out),) = calls
    assert tokens["audio"].shape[0] == 4  # conditional and unconditional in one batch
    assert times["label"].tolist() == [1, 1, 0, 0]
    assert (tokens["label"][2:] == model.modalities["label"].mask_id).all()
    assert (tokens["label"][:2] == 5).all()
    # both branches see the same state at the same time
    assert torch.equal(tokens["audio"][2:], tokens["audio"][:2])
    assert times["audio"].tolist() == [0, 0, 0, 0]
    # one Euler step from t = 0 to 1 with the guided velocity 3 v_cond - 2 v_uncond
    v = 3 * out["audio"][:2].double() - 2 * out["audio"][2:].double()
    want = model.modalities["audio"].detokenize(tokens["audio"][:2].double() + v)
    torch.testing.assert_close(got["audio"].double(), want, rtol=1e-6, atol=1e-6)
    unguided = anydit.sample(model, {"audio": "generate", "label": 5}, n=2, steps=1)
    assert not torch.allclose(unguided["audio"], got["audio"])


def test_joint_guidance_closed_form():
    """Nothing given, two generated: each is guided by the other, v = 3 v_joint - 2 v_alone."""
    model, calls = _spied_model()
    task = {"image": "generate", "audio": "generate", "label": "drop", "text": "drop"}
    got = anydit.sample(model, task, n=2, steps=2, guidance=3.0)
    (tokens, times, out) = calls[1]  # the evaluation at t = 0.5
    # branches (sorted by name): joint, audio alone (image dropped: t = 0), image alone
    assert tokens["image"].shape[0] == 6
    assert times["image"].tolist() == [0.5, 0.5, 0, 0, 0.5, 0.5]
    assert times["audio"].tolist() == [0.5, 0.5, 0.5, 0.5, 0, 0]
    assert torch.equal(tokens["audio"][2:4], tokens["audio"][:2])  # same state, other dropped
    assert torch.equal(tokens["image"][4:6], tokens["image"][:2])
    img, aud = model.modalities["image"], model.modalities["audio"]
    v_img = 3 * out["image"][:2] - 2 * out["image"][4:6]
    v_aud = 3 * out["audio"][:2] - 2 * out["audio"][2:4]
    want_img = img.detokenize(tokens["image"][:2] + 0.5 * v_img)
    torch.testing.assert_close(got["image"], want_img)
    torch.testing.assert_close(got["audio"], aud.detokenize(tokens["audio"][:2] + 0.5 * v_aud))
    plain = anydit.sample(model, task, n=2, steps=2)
    assert not torch.allclose(plain["image"], got["image"])


def test_guidance_interval(model):
    task = {"image": "generate", "label": 3}
    plain = anydit.sample(model, task, n=2, steps=2, seed=0)
    always = anydit.sample(model, task, n=2, steps=2, seed=0, guidance=3.0)
    # evaluations happen at t = 0 and 0.5: (0.9, 1) guides none of them, (0.4, 1) the second
    never = anydit.sample(
        model, task, n=2, steps=2, seed=0, guidance=3.0, guidance_interval=(0.9, 1)
    )
    late = anydit.sample(
        model, task, n=2, steps=2, seed=0, guidance=3.0, guidance_interval=(0.4, 1)
    )
    torch.testing.assert_close(never["image"], plain["image"])
    assert not torch.allclose(late["image"], plain["image"])
    assert not torch.allclose(late["image"], always["image"])
    with pytest.raises(
        ValueError, match="sample.guidance_interval: expected two times low <= high in"
    ):
        anydit.sample(model, task, guidance=2.0, guidance_interval=(0.5, 0.2))
    with pytest.raises(ValueError, match="sample.guidance_interval"):
        anydit.SampleConfig(guidance_interval=(0.0, 2.0))


def test_asynchronous_steps_count_evaluations(model):
    calls = []
    forward = model.forward

    def spy(tokens, times):
        calls.append({k: v.float().mean().item() for k, v in times.items()})
        return forward(tokens, times)

    model.forward = spy
    anydit.sample(
        model, {"image": anydit.generate(steps=6), "audio": anydit.generate(steps=2)}, steps=3
    )
    assert len(calls) == 6
    assert len({round(c["audio"], 6) for c in calls}) == 2  # audio moved twice, at its own pace
    assert {round(c["label"], 6) for c in calls} == {0.0}  # unnamed modalities are dropped


@pytest.mark.parametrize(
    ("task", "match"),
    [
        (
            {"depth": "generate"},
            r"task names unknown modalities \['depth'\]; "
            r"expected some of \['audio', 'image', 'label', 'text'\]",
        ),
        (
            {"image": "generate", "audio": torch.zeros(16, 5)},
            r"modality 'audio' \(sequence\): expected shape \(16, 4\)",
        ),
        (
            {"image": "generate", "label": 2.5},
            r"modality 'label': expected integer ids, got dtype torch.float32",
        ),
        (
            {"image": "generate", "label": 12},
            r"modality 'label': expected class ids in \[0, 10\), got \[12\]",
        ),
        (
            {"image": "generate", "text": "x" * 40},
            r"modality 'text': sample 0 has 40 tokens, more than the maximum length 12",
        ),
        ({"label": 3}, "task generates nothing"),
        ({"image": anydit.generate(steps=0)}, r"modality 'image': expected steps >= 1, got 0"),
    ],
)
def test_bad_tasks_are_named(model, task, match):
    with pytest.raises(ValueError, match=match):
        anydit.sample(model, task, n=2, steps=2)


def test_bad_call_arguments(model):
    with pytest.raises(ValueError, match=re.escape("sample.solver: expected euler|heun|midpoint")):
        anydit.sample(model, {"image": "generate"}, solver="rk4")
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        anydit.sample(model, {"image": "generate"}, n=0)


def test_bf16_sampling_close(model):
    a = anydit.sample(model, {"audio": "generate", "label": 1}, n=2, steps=3, seed=3)
    b = anydit.sample(
        model, {"audio": "generate", "label": 1}, n=2, steps=3, seed=3, precision="bf16"
    )
    assert (a["audio"] - b["audio"]).abs().max() < 0.1 * a["audio"].abs().max()
    assert not torch.equal(a["audio"], b["audio"])  # bf16 really ran


def test_unmasking_option(model):
    task = {"text": "generate", "label": 2}
    a = anydit.sample(model, task, n=4, steps=4, seed=0, unmasking="random")
    b = anydit.sample(model, task, n=4, steps=4, seed=0, unmasking="confidence")
    assert not torch.equal(a["text"], b["text"])
    with pytest.raises(ValueError, match=re.escape("sample.unmasking: expected random|confidence")):
        anydit.sample(model, task, unmasking="sorted")


def test_known_discrete_tokens_spend_no_reveal_budget(model):
    """Confidence order with half the text known: the unknown half is revealed on schedule."""
    calls = []
    forward = model.forward

    def spy(tokens, times):
        calls.append((tokens["text"][:, 6:] == model.modalities["text"].mask_id).sum(1).tolist())
        return forward(tokens, times)

    model.forward = spy
    known = model.modalities["text"].encode(["abcdef"] * 8)
    mask = torch.zeros(8, 12, dtype=torch.bool)
    mask[:, :6] = True
    task = {"text": anydit.generate(known=known, mask=mask)}
    anydit.sample(model, task, n=8, steps=2, unmasking="confidence")
    # masked tokens of the unknown half before each step: all 6, then exactly half: the known
    # tokens start revealed, so the first step's budget (6 x 1/2) goes to the unknown ones
    assert calls == [[6] * 8, [3] * 8]


def test_temperature_must_be_positive(model):
    with pytest.raises(ValueError, match="sample.temperature: expected a number > 0, got 0"):
        anydit.sample(model, {"label": "generate"}, temperature=0)


def test_heun_inner_evaluation_keeps_discrete_time():
    from anydit.sampling import heun

    seen = []

    def velocity_fn(x, t):
        seen.append({k: float(v) for k, v in t.items()})
        return {"c": torch.zeros_like(x["c"]), "d": torch.zeros(*x["d"].shape, 3)}

    x = {"c": torch.zeros(1, 1, 1), "d": torch.full((1, 1), 3)}
    grid = {k: torch.linspace(0, 1, 3) for k in x}
    heun(velocity_fn, x, grid, {"d": 3}, torch.Generator().manual_seed(0))
    # second evaluation of step 0: the continuous stream is at t1, the discrete one still at t0
    assert seen[1] == {"c": 0.5, "d": 0.0}


def test_shift_moves_the_grid(model):
    calls = []
    forward = model.forward

    def spy(tokens, times):
        calls.append(float(times["image"].float().mean()))
        return forward(tokens, times)

    model.forward = spy
    task = {"image": "generate", "label": 3}
    plain = anydit.sample(model, task, n=2, steps=2, seed=0)
    shifted = anydit.sample(model, task, n=2, steps=2, seed=0, shift=3.0)
    # u = 0.5 -> t = u / (u + s (1 - u)): 0.5 unshifted, 0.25 with s = 3
    assert calls == pytest.approx([0.0, 0.5, 0.0, 0.25])
    assert not torch.allclose(plain["image"], shifted["image"])
    with pytest.raises(ValueError, match="sample.shift: expected a number > 0"):
        anydit.sample(model, task, shift=0.0)


def test_isolation_cuts_generated_streams_apart_and_guides_away_from_it(model):
    from anydit.sampling.sample import isolation_mask

    model.eval()
    gen = ["audio", "image"]
    mask = isolation_mask(model, gen, n=2, branches=2, device="cpu")  # (4, N, N)
    assert mask[:2].all() and not mask[2:].all()
    b = {k: v[:2] for k, v in random_batch(model, b=2).items()}
    tokens = {k: m.tokenize(b[k]) if not m.discrete else b[k].reshape(2, -1)
              for k, m in model.modalities.items()}  # fmt: skip
    times = {k: torch.full((2,), 0.5) for k in model.modalities}
    cut = mask[2:]
    out = model(tokens, times, mask=cut)
    moved = dict(tokens, audio=tokens["audio"] + 1.0)  # another audio state
    again = model(tokens | {"audio": moved["audio"]}, times, mask=cut)
    torch.testing.assert_close(out["image"], again["image"])  # the image does not see it
    torch.testing.assert_close(out["text"], again["text"])  # nor a condition it reads
    full = model(tokens | {"audio": moved["audio"]}, times)
    assert not torch.allclose(full["image"], out["image"])
    everything = model(tokens, times, mask=mask[:2])  # the other branches' rows: no cut
    for k, v in model(tokens, times).items():
        torch.testing.assert_close(everything[k], v, rtol=1e-5, atol=1e-5)
    task = {"image": "generate", "audio": "generate", "label": 3}
    plain = anydit.sample(model, task, n=2, steps=3)
    same = anydit.sample(model, task, n=2, steps=3, isolation=1.0)
    pushed = anydit.sample(model, task, n=2, steps=3, isolation=2.0)
    assert torch.equal(plain["image"], same["image"])
    assert not torch.allclose(plain["image"], pushed["image"])
    with pytest.raises(ValueError, match="generates 1 token stream"):
        anydit.sample(model, {"image": "generate", "label": 3}, n=1, steps=2, isolation=2.0)
    with pytest.raises(ValueError, match="use cache '' and kv_reuse false"):
        anydit.sample(model, task, n=1, steps=2, isolation=2.0, cache="taylor")


def test_stream_guidance_weights_each_output_apart(model):
    """Per-output weights: the named stream moves as under that weight alone, the other as
    under the float; both conditional and joint (nothing given) guidance take them."""
    task = {"image": "generate", "audio": "generate", "label": 3}
    at = {w: anydit.sample(model, task, n=2, steps=3, guidance=w) for w in (1.0, 3.0)}
    mixed = anydit.sample(model, task, n=2, steps=3, guidance=1.0, stream_guidance={"audio": 3.0})
    assert not torch.allclose(at[1.0]["audio"], at[3.0]["audio"])
    # one Euler step moves both streams from the same state: the image's first step is
    # unguided, the audio's guided by 3; past it the streams differ, so compare one step.
    one = {w: anydit.sample(model, task, n=2, steps=1, guidance=w) for w in (1.0, 3.0)}
    both = anydit.sample(model, task, n=2, steps=1, guidance=1.0, stream_guidance={"audio": 3.0})
    torch.testing.assert_close(both["audio"], one[3.0]["audio"])
    torch.testing.assert_close(both["image"], one[1.0]["image"])
    assert not torch.allclose(mixed["audio"], at[1.0]["audio"])
    joint = {"image": "generate", "audio": "generate", "label": "drop", "text": "drop"}
    # (from pure noise each joint branch equals the conditional one: the first step is alike)
    j1 = anydit.sample(model, joint, n=2, steps=2, guidance=2.0)
    j2 = anydit.sample(model, joint, n=2, steps=2, guidance=2.0, stream_guidance={"image": 1.0})
    torch.testing.assert_close(j2["audio"], j1["audio"])
    assert not torch.allclose(j2["image"], j1["image"])
    # a stream the task does not generate is passed over (one setting serves every task)
    label = anydit.sample(model, task, n=2, steps=1, guidance=3.0, stream_guidance={"label": 9.0})
    torch.testing.assert_close(label["audio"], one[3.0]["audio"])
    # weight 1 everywhere: no guidance branch is run at all
    stats1, stats2 = {}, {}
    anydit.sample(model, joint, n=2, steps=2, guidance=1.0, stats=stats1)
    anydit.sample(
        model, joint, n=2, steps=2, guidance=2.0, stream_guidance={"image": 1.0, "audio": 1.0},
        stats=stats2,
    )  # fmt: skip
    assert stats1["evaluations"] == stats2["evaluations"] == 2 * 2
    # with isolation: the image (weight 1) moves as under isolation alone, the audio does not
    iso = anydit.sample(model, task, n=2, steps=1, isolation=2.0)
    both_iso = anydit.sample(
        model, task, n=2, steps=1, stream_guidance={"audio": 3.0}, isolation=2.0
    )
    torch.testing.assert_close(both_iso["image"], iso["image"])
    assert not torch.allclose(both_iso["audio"], iso["audio"])
    with pytest.raises(ConfigError, match="sample.stream_guidance: expected modality names"):
        Config(
            modalities=model.modality_configs, sample=SampleConfig(stream_guidance={"nope": 2.0})
        )
    with pytest.raises(ConfigError, match="weight each condition"):
        anydit.sample(model, task, n=1, steps=1, guidance={"label": 2.0},
                      stream_guidance={"audio": 2.0})  # fmt: skip
    with pytest.raises(ConfigError, match=r"stream_guidance\['audio'\]: expected a finite"):
        anydit.sample(model, task, n=1, steps=1, stream_guidance={"audio": float("nan")})


def test_first_samples_the_named_stream_to_the_end_before_the_rest_moves(model):
    """``first``: ancestral sampling through a stream (the label before the image): while the
    label is masked the image stays at noise; once it is revealed the image moves, reading it."""
    seen, forward = [], model.forward
    model.forward = lambda tokens, times, **kw: (
        seen.append((tokens["label"].clone(), times["label"].clone(), times["image"].clone()))
        or forward(tokens, times, **kw)
    )
    task = {"image": "generate", "label": "generate", "audio": torch.randn(2, 16, 4)}
    out = anydit.sample(model, task, n=2, steps=3, first=["label"], seed=3)
    assert len(seen) == 6  # three steps of the label, then three of the image
    mask = model.modalities["label"].mask_id
    for _, t_label, t_image in seen[:3]:
        assert (t_image == 0).all() and (t_label < 1).all()
    assert (seen[0][0] == mask).all()
    for label, t_label, _ in seen[3:]:
        assert (t_label == 1).all() and torch.equal(label[:, 0], out["label"])
    assert [float(t[2].max()) for t in seen[3:]] == pytest.approx([0.0, 1 / 3, 2 / 3], abs=1e-6)
    seen.clear()
    together = anydit.sample(model, task, n=2, steps=3, seed=3)
    assert len(seen) == 3 and not torch.equal(together["image"], out["image"])
    with pytest.raises(ValueError, match=r"sample.first: \['text'\] are not generated"):
        anydit.sample(model, task, n=2, steps=3, first=("text",))
    with pytest.raises(ValueError, match="sample.first: expected a list of modality names"):
        anydit.sample(model, task, n=2, steps=3, first="label")
