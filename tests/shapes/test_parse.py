"""The scene parser: exact on clean renders, robust to mild degradation, and it rejects
images that do not match (wrong colour, missing or extra object)."""

import io

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from utamoe.eval.metrics import box_iou
from utamoe.shapes import (
    UNKNOWN,
    Scene,
    SceneObject,
    ShapesWorldConfig,
    object_box,
    parse_image,
    render,
)
from utamoe.shapes.world import sample_scene

CFG = ShapesWorldConfig()


def degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild blur (sigma 0.7), gaussian noise (std 5/255) and a JPEG q75 round trip."""
    x = np.stack([gaussian_filter(img[..., c].astype(np.float32), 0.7) for c in range(3)], -1)
    x = np.clip(np.rint(x + rng.normal(0, 5, x.shape)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="JPEG", quality=75)
    return np.asarray(Image.open(buf).convert("RGB"))


def scenes(n: int, seed: int, cfg: ShapesWorldConfig = CFG) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, cfg, cfg.all_combos()) for _ in range(n)]


def test_clean_renders_parse_exactly():
    for scene in scenes(200, 0):
        assert parse_image(render(scene, CFG), CFG) == scene


def test_clean_renders_parse_exactly_at_32px():
    cfg = ShapesWorldConfig(image_size=32)
    for scene in scenes(60, 1, cfg):
        assert parse_image(render(scene, cfg), cfg) == scene


def test_degraded_renders_parse_at_least_98_percent():
    rng = np.random.default_rng(1)
    batch = scenes(200, 2)
    ok = sum(parse_image(degrade(render(s, CFG), rng), CFG) == s for s in batch)
    assert ok / len(batch) >= 0.98


def test_parsed_boxes_match_geometry():
    for scene in scenes(30, 3):
        for obj in parse_image(render(scene, CFG), CFG):
            assert box_iou(obj.box, object_box(obj, CFG)) > 0.8


def test_empty_and_foreign_images():
    blank = np.full((48, 48, 3), CFG.background, np.uint8)
    assert len(parse_image(blank, CFG)) == 0
    # Something the world cannot contain: all white. Every cell is an unknown object.
    white = parse_image(np.full((48, 48, 3), 255, np.uint8), CFG)
    assert all(o.shape == UNKNOWN or o.color == UNKNOWN for o in white)


@pytest.mark.parametrize("rgb", [(240, 140, 30), (240, 240, 240), (128, 128, 128),
                                 (120, 40, 200), (250, 150, 180)])
def test_colours_outside_the_palette_are_unknown(rgb):
    cfg = CFG.replace(colors={**CFG.colors, "odd": rgb})
    scene = Scene((SceneObject("circle", "odd", "large", 1, 1),))
    (obj,) = parse_image(render(scene, cfg), CFG)
    assert obj.color == UNKNOWN


def test_wrong_missing_and_extra_objects_are_seen():
    want = Scene((SceneObject("circle", "red", "large", 0, 0),
                  SceneObject("square", "blue", "small", 2, 2)))
    recoloured = Scene((SceneObject("circle", "green", "large", 0, 0), want.objects[1]))
    missing = Scene(want.objects[:1])
    extra = Scene((*want.objects, SceneObject("triangle", "cyan", "small", 1, 1)))
    for other in (recoloured, missing, extra):
        assert parse_image(render(other, CFG), CFG) == other != want


def test_accepts_floats_pil_and_other_sizes():
    scene = scenes(1, 4)[0]
    img = render(scene, CFG)
    assert parse_image(img.astype(np.float32) / 255, CFG) == scene
    assert parse_image(Image.fromarray(img), CFG) == scene
    big = render(scene, CFG.replace(image_size=96))
    assert parse_image(big, CFG) == scene
    with pytest.raises(ValueError, match="HxWx3"):
        parse_image(img[..., 0], CFG)


def test_small_shifts_are_tolerated():
    scene = Scene((SceneObject("triangle", "magenta", "small", 1, 1),))
    img = render(scene, CFG)
    for dy, dx in ((1, 0), (0, -1), (2, 2), (-2, 1)):
        shifted = np.roll(img, (dy, dx), axis=(0, 1))
        assert parse_image(shifted, CFG) == scene


@pytest.mark.slow
def test_parser_on_1000_scenes_and_stronger_degradation():
    rng = np.random.default_rng(5)
    batch = scenes(1000, 6)
    assert sum(parse_image(render(s, CFG), CFG) == s for s in batch) == len(batch)
    assert sum(parse_image(degrade(render(s, CFG), rng), CFG) == s for s in batch) >= 990
    heavy = 0
    for s in batch[:300]:
        x = np.stack([gaussian_filter(render(s, CFG)[..., c].astype(np.float32), 1.3)
                      for c in range(3)], -1)
        x = np.clip(np.rint(x + rng.normal(0, 10, x.shape)), 0, 255).astype(np.uint8)
        heavy += parse_image(x, CFG) == s
    assert heavy >= 0.97 * 300
