import pytest

from anydit.config import Config, ConfigError, ModalityConfig, ModelConfig, from_dict


def test_image_not_divisible_by_patch_names_field():
    with pytest.raises(
        ConfigError, match=r"modality 'img'.shape \(W\): expected a multiple of patch=4, got 10"
    ):
        ModalityConfig("img", "image", (3, 8, 10), patch=4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "audio"}, r"modality 'm'.kind: expected one of"),
        ({"kind": "image", "shape": (8, 8)}, r"modality 'm'.shape: expected 3 positive sizes"),
        ({"kind": "label", "num_classes": 1}, r"num_classes: expected an integer >= 2 \(or 0: "),
        (
            {"kind": "vector", "shape": (3,), "p_given": 1.5},
            r"p_given: expected a probability in \[0, 1\], got 1.5",
        ),
        (
            {"kind": "vector", "shape": (3,), "shift": 0},
            r"shift: expected a number > 0 \(or none\), got 0",
        ),
        (
            {"kind": "sequence", "shape": (10, 2), "patch": 4},
            r"shape \(L\): expected a multiple of patch=4, got 10",
        ),
    ],
)
def test_modality_field_out_of_range(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ModalityConfig("m", **kwargs)


def test_model_field_out_of_range():
    with pytest.raises(
        ConfigError, match=r"model.head_dim: expected an even integer \(rotary pairs\), got 15"
    ):
        ModelConfig(head_dim=15)


def test_from_dict_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"model: unknown key\(s\) \['wdith'\]"):
        from_dict(
            Config,
            {"modalities": [{"name": "x", "kind": "vector", "shape": [2]}], "model": {"wdith": 3}},
        )


def test_from_dict_bad_type_is_named():
    with pytest.raises(ConfigError, match=r"model.depth: expected an integer, got 'four'"):
        from_dict(
            Config,
            {
                "modalities": [{"name": "x", "kind": "vector", "shape": [2]}],
                "model": {"depth": "four"},
            },
        )


def test_from_dict_builds_nested():
    cfg = from_dict(
        Config,
        {
            "modalities": [
                {"name": "x", "kind": "vector", "shape": [2]},
                {"name": "k", "kind": "label", "classes": ["a", "b"]},
            ],
            "model": {"width": 16, "per_token_time": "true"},
        },
    )
    assert cfg.model.width == 16 and cfg.model.per_token_time is True
    assert cfg.modalities[1].num_classes == 2 and cfg.modalities[0].shape == (2,)


def test_duplicate_names_and_single_stream_widths():
    x = ModalityConfig("x", "vector", (2,))
    with pytest.raises(ConfigError, match="unique names"):
        Config(modalities=[x, x])
    y = ModalityConfig("y", "vector", (2,), width=8)
    with pytest.raises(ConfigError, match="model.single_depth: expected equal stream widths"):
        Config(modalities=[x, y], model=ModelConfig(single_depth=1))


def test_partial_roles_need_per_token_time():
    x = ModalityConfig("x", "vector", (2,), p_partial=0.5)
    with pytest.raises(ConfigError, match="p_partial: expected 0 unless model.per_token_time"):
        Config(modalities=[x])
    Config(modalities=[x], model=ModelConfig(per_token_time=True))
