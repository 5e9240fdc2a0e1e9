"""ShapesWorld config, scene model, geometry and renderer."""

import numpy as np
import pytest

from utamoe.config import ConfigError
from utamoe.shapes import Scene, SceneObject, ShapesWorldConfig, object_box, render
from utamoe.shapes.world import sample_scene, validate_scene


def test_config_round_trip_and_unknown_keys():
    cfg = ShapesWorldConfig(seed=3, sizes={"train": 5})
    assert ShapesWorldConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="did you mean 'image_size'"):
        ShapesWorldConfig.from_dict({"imagesize": 48})


@pytest.mark.parametrize("bad", [
    {"image_size": 16},
    {"shapes": ["hexagon"]},
    {"heldout": [["purple", "circle"]]},
    {"small_frac": 0.9, "large_frac": 0.5},
    {"tasks": ["vqa", "segmentation"]},
    {"colors": {"Red": [1, 2, 3], "blue": [0, 0, 255]}},
    {"background": [0, 0, 300]},
])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        ShapesWorldConfig.from_dict(bad)


def test_heldout_combos_are_excluded_from_allowed():
    cfg = ShapesWorldConfig()
    allowed = set(cfg.allowed_combos())
    assert allowed.isdisjoint(cfg.heldout)
    assert len(allowed) == len(cfg.colors) * len(cfg.shapes) - len(cfg.heldout)
    # Every colour and every shape still appears in training.
    assert {c for c, _ in allowed} == set(cfg.colors)
    assert {s for _, s in allowed} == set(cfg.shapes)


def test_scene_orders_objects_and_rejects_shared_cells():
    a = SceneObject("circle", "red", "small", 2, 0)
    b = SceneObject("square", "blue", "large", 0, 1)
    assert Scene((a, b)).objects == (b, a)
    assert Scene((a, b)) == Scene((b, a))
    with pytest.raises(ValueError, match="share a cell"):
        Scene((a, SceneObject("square", "red", "large", 2, 0)))
    with pytest.raises(ValueError, match="outside"):
        Scene((SceneObject("square", "red", "large", 3, 0),))
    assert Scene.from_json(Scene((a, b)).to_json()) == Scene((a, b))


def test_random_scenes_are_valid_and_respect_combos():
    cfg = ShapesWorldConfig()
    rng = np.random.default_rng(0)
    allowed = cfg.allowed_combos()
    for _ in range(200):
        scene = sample_scene(rng, cfg, allowed)
        validate_scene(scene, cfg)
        assert scene.combos() <= set(allowed)
    forced = sample_scene(rng, cfg, allowed, n_objects=3, must_include=cfg.heldout)
    assert len(forced) == 3 and forced.combos() & set(cfg.heldout)


def test_render_is_deterministic_with_exact_colours_and_sizes():
    cfg = ShapesWorldConfig()
    big = SceneObject("square", "red", "large", 0, 0)
    small = SceneObject("square", "blue", "small", 2, 2)
    img = render(Scene((big, small)), cfg)
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8
    assert np.array_equal(img, render(Scene((small, big)), cfg))
    assert tuple(img[8, 8]) == cfg.colors["red"]
    assert tuple(img[40, 40]) == cfg.colors["blue"]
    assert tuple(img[24, 24]) == cfg.background
    fg = np.abs(img.astype(int) - cfg.background).sum(-1) > 0
    # 14 px and 8 px squares, edges on pixel boundaries at 48x48.
    assert fg[:16, :16].sum() == 14 * 14 and fg[32:, 32:].sum() == 8 * 8
    assert object_box(big, cfg) == pytest.approx((1 / 48, 1 / 48, 15 / 48, 15 / 48))


def test_shapes_have_distinct_areas():
    cfg = ShapesWorldConfig()
    areas = {}
    for shape in cfg.shapes:
        img = render(Scene((SceneObject(shape, "green", "large", 1, 1),)), cfg)
        areas[shape] = (np.abs(img.astype(int) - cfg.background).sum(-1) > 60).sum()
    assert areas["square"] > areas["circle"] > areas["triangle"] > 0
