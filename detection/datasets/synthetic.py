"""A built-in synthetic detection dataset, written in the VOC layout.

Six classes of solid shapes, each with its own shape, aspect ratio and colour
family (hue jittered, saturation and brightness varied):

    circle    red        1:1
    square    blue       1:1
    triangle  green      w:h 0.8-1.25, pointing up or down
    ellipse   yellow     2:1 to 2.6:1, lying or standing
    cross     magenta    1:1 plus sign, arms 0.28-0.38 of its size
    ring      cyan       1:1 annulus, band 0.14-0.22 of its size

One to four objects per image, 24-96 pixels on their longest side, placed so
that no object loses more than 30% of its pixels to the ones drawn over it.
Each gets a dark rim and a light shading ramp. Backgrounds are muted
(unsaturated) linear gradients with optional stripes and random lines, and
Gaussian noise over the whole image, then JPEG at quality 90.

The box of an object is the extent of its *visible* pixels (VOC's rule),
written 1-based in the XML. Everything is drawn with Pillow and NumPy from
``numpy.random.default_rng(SeedSequence([seed, split, index]))``, so the same
seed gives byte-identical files (with the same Pillow/libjpeg), and image
``i`` of a split does not depend on how many images are generated.

    root/
      JPEGImages/train_000000.jpg ...  test_000000.jpg ...
      Annotations/<id>.xml
      ImageSets/Main/trainval.txt, test.txt
      classes.txt
      synthetic.json      the generator's parameters (written last)

Usage: ``generate(root, num_train=..., num_test=..., seed=0)``, or
``ensure_dataset()`` for a shared copy under the cache folder that is
generated once (safe against concurrent and interrupted runs), or
``python -m detection.datasets.synthetic OUT_DIR --train N --test N --seed S``.
"""
import argparse
import colorsys
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

from netdef.errors import DataError

from .cache import cache_base_dir

__all__ = ["CLASSES", "SyntheticConfig", "generate", "ensure_dataset",
           "default_dataset_root", "render_image", "place_objects"]

VERSION = 1

CLASSES = ("circle", "square", "triangle", "ellipse", "cross", "ring")

# Hue (degrees) of each class's colour family, far apart on the colour wheel.
_HUES = {"circle": 0, "square": 225, "triangle": 120, "ellipse": 55,
         "cross": 295, "ring": 180}
_HUE_JITTER = 12

_SPLITS = {"trainval": 0, "test": 1}
_ID_PREFIX = {"trainval": "train", "test": "test"}


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the generator (all of them are in ``synthetic.json``).

    image_size: ``(H, W)``, or ``((Hmin, Hmax), (Wmin, Wmax))`` for sizes
        drawn uniformly per image.
    object_size: ``(min, max)`` longest side of an object in pixels, drawn
        log-uniformly (clipped to 60% of the image's shorter side).
    max_objects: objects per image are drawn from ``1..max_objects``.
    max_occlusion: largest fraction of an object's pixels that later objects
        may cover.
    """
    num_train: int = 1000
    num_test: int = 200
    image_size: tuple = (192, 256)
    seed: int = 0
    object_size: tuple = (24, 96)
    max_objects: int = 4
    max_occlusion: float = 0.3
    jpeg_quality: int = 90

    def __post_init__(self):
        size = self.image_size
        if len(size) != 2:
            raise ValueError(f"image_size must be (H, W) or ((Hmin, Hmax), (Wmin, Wmax)), got {size!r}")
        ranges = tuple((int(s), int(s)) if np.isscalar(s) else (int(s[0]), int(s[1]))
                       for s in size)
        if any(lo < 48 or hi < lo for lo, hi in ranges):
            raise ValueError(f"image_size {size!r}: sides must be >= 48 and ranges ordered")
        object.__setattr__(self, "image_size",
                           tuple(r[0] if r[0] == r[1] else r for r in ranges))
        lo, hi = self.object_size
        if not 8 <= lo <= hi:
            raise ValueError(f"object_size {self.object_size!r}: need 8 <= min <= max")
        object.__setattr__(self, "object_size", (int(lo), int(hi)))
        if self.num_train < 0 or self.num_test < 0 or self.num_train + self.num_test == 0:
            raise ValueError("need at least one image (num_train, num_test >= 0)")
        if not 1 <= self.max_objects:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")
        if not 0 <= self.max_occlusion < 1:
            raise ValueError(f"max_occlusion must be in [0, 1), got {self.max_occlusion}")

    def size_ranges(self):
        return tuple(s if isinstance(s, tuple) else (s, s) for s in self.image_size)

    def as_json(self):
        d = dataclasses.asdict(self)
        d["image_size"] = [list(s) if isinstance(s, tuple) else s for s in self.image_size]
        d["object_size"] = list(self.object_size)
        d["version"] = VERSION
        d["classes"] = list(CLASSES)
        return d


# ----------------------------------------------------------------------------
# Drawing

def _muted_colour(rng, value=(0.25, 0.85)):
    """An unsaturated RGB colour (0..255 floats): backgrounds and clutter."""
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.25),
                                  rng.uniform(*value))
    return np.array([r, g, b]) * 255.0


def _class_colour(rng, name):
    hue = (_HUES[name] + rng.uniform(-_HUE_JITTER, _HUE_JITTER)) % 360
    r, g, b = colorsys.hsv_to_rgb(hue / 360.0, rng.uniform(0.65, 1.0),
                                  rng.uniform(0.6, 1.0))
    return np.array([r, g, b]) * 255.0


def _background(rng, h, w):
    """(h, w, 3) float: gradient, maybe stripes, maybe lines."""
    from PIL import Image, ImageDraw
    a, b = _muted_colour(rng), _muted_colour(rng)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ramp = xx * np.cos(angle) + yy * np.sin(angle)
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-9)
    img = a + ramp[..., None] * (b - a)
    if rng.random() < 0.5:
        period = rng.uniform(6, 40)
        phase = rng.uniform(0, 2 * np.pi)
        theta = rng.uniform(0, np.pi)
        wave = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase)
        img += rng.uniform(8, 25) * wave[..., None]
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(rng.integers(0, 7)):
        pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(2)]
        colour = tuple(int(c) for c in _muted_colour(rng, value=(0.1, 0.95)))
        draw.line(pts, fill=colour, width=int(rng.integers(1, 4)))
    return np.asarray(pil, dtype=np.float64)


def _shape_mask(name, h, w, x0, y0, bw, bh, rng):
    """Boolean (h, w) mask of one shape inside the box (x0, y0, bw, bh)."""
    from PIL import Image, ImageDraw
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    x1, y1 = x0 + bw - 1, y0 + bh - 1
    if name in ("circle", "ellipse"):
        d.ellipse([x0, y0, x1, y1], fill=255)
    elif name == "square":
        d.rectangle([x0, y0, x1, y1], fill=255)
    elif name == "triangle":
        cx = x0 + (bw - 1) / 2.0
        if rng.random() < 0.5:
            pts = [(x0, y1), (x1, y1), (cx, y0)]
        else:
            pts = [(x0, y0), (x1, y0), (cx, y1)]
        d.polygon(pts, fill=255)
    elif name == "cross":
        t = max(int(round(bw * rng.uniform(0.28, 0.38))), 3)
        cx, cy = x0 + (bw - t) // 2, y0 + (bh - t) // 2
        d.rectangle([x0, cy, x1, cy + t - 1], fill=255)
        d.rectangle([cx, y0, cx + t - 1, y1], fill=255)
    elif name == "ring":
        t = max(int(round(bw * rng.uniform(0.14, 0.22))), 3)
        d.ellipse([x0, y0, x1, y1], outline=255, width=t)
    else:
        raise ValueError(name)
    return np.asarray(m) > 0


def _box_size(name, rng, size_range, limit):
    """(bw, bh) of an object: longest side log-uniform in size_range."""
    lo, hi = size_range
    hi = max(min(hi, limit), lo)
    s = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    if name == "triangle":
        aspect = rng.uniform(0.8, 1.25)          # w / h
    elif name == "ellipse":
        aspect = rng.uniform(2.0, 2.6)
        aspect = aspect if rng.random() < 0.5 else 1.0 / aspect
    else:
        aspect = 1.0
    bw, bh = (s, s / aspect) if aspect >= 1 else (s * aspect, s)
    return max(int(round(bw)), 8), max(int(round(bh)), 8)


def _rim(mask):
    """Pixels of the mask with a 4-neighbour outside it (or on the border)."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    inner[0] = inner[-1] = False
    inner[:, 0] = inner[:, -1] = False
    return mask & ~inner


def place_objects(rng, height, width, config):
    """Choose classes, sizes and places: ``(names, masks, visible)``, lists of
    class names, full boolean ``(H, W)`` masks and the visible part of each
    once the later ones are drawn over it (each keeps at least
    ``1 - max_occlusion`` of its pixels)."""
    limit = int(0.6 * min(height, width))
    n_wanted = int(rng.integers(1, config.max_objects + 1))
    names, masks, visible = [], [], []
    for _ in range(n_wanted):
        name = CLASSES[int(rng.integers(len(CLASSES)))]
        for _try in range(30):
            bw, bh = _box_size(name, rng, config.object_size, limit)
            bw, bh = min(bw, width), min(bh, height)
            x0 = int(rng.integers(0, width - bw + 1))
            y0 = int(rng.integers(0, height - bh + 1))
            mask = _shape_mask(name, height, width, x0, y0, bw, bh, rng)
            if not mask.any():
                continue
            new_visible = [v & ~mask for v in visible]
            if all(nv.sum() >= (1 - config.max_occlusion) * m.sum()
                   for nv, m in zip(new_visible, masks)):
                visible = new_visible + [mask]
                masks.append(mask)
                names.append(name)
                break
    return names, masks, visible


def render_image(rng, height, width, config):
    """One image: ``(uint8 (H, W, 3) RGB, [(class name, x1, y1, x2, y2)])``
    with 0-based inclusive boxes of the visible pixels."""
    img = _background(rng, height, width)
    names, masks, visible = place_objects(rng, height, width, config)
    for name, mask in zip(names, masks):
        colour = _class_colour(rng, name)
        # A light shading ramp across the object, a darker rim around it.
        ys, xs = np.nonzero(mask)
        angle = rng.uniform(0, 2 * np.pi)
        proj = xs * np.cos(angle) + ys * np.sin(angle)
        proj = (proj - proj.min()) / max(np.ptp(proj), 1.0)
        shade = 1.0 + rng.uniform(0.05, 0.2) * (proj - 0.5)
        img[ys, xs] = colour * shade[:, None]
        img[_rim(mask)] = colour * rng.uniform(0.35, 0.6)
    img += rng.normal(0.0, rng.uniform(2.0, 8.0), size=img.shape)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    objects = []
    for name, vis in zip(names, visible):
        ys, xs = np.nonzero(vis)
        objects.append((name, int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())))
    return image, objects


def _annotation_xml(image_id, width, height, objects):
    lines = ["<annotation>",
             "  <folder>synthetic</folder>",
             f"  <filename>{image_id}.jpg</filename>",
             "  <size>",
             f"    <width>{width}</width>",
             f"    <height>{height}</height>",
             "    <depth>3</depth>",
             "  </size>"]
    for name, x1, y1, x2, y2 in objects:
        lines += ["  <object>",
                  f"    <name>{name}</name>",
                  "    <truncated>0</truncated>",
                  "    <difficult>0</difficult>",
                  "    <bndbox>",
                  # VOC coordinates are 1-based.
                  f"      <xmin>{x1 + 1}</xmin>",
                  f"      <ymin>{y1 + 1}</ymin>",
                  f"      <xmax>{x2 + 1}</xmax>",
                  f"      <ymax>{y2 + 1}</ymax>",
                  "    </bndbox>",
                  "  </object>"]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def _write_split(folder, split, count, config):
    from PIL import Image
    (hlo, hhi), (wlo, whi) = config.size_ranges()
    ids = []
    for i in range(count):
        rng = np.random.default_rng(np.random.SeedSequence(
            [config.seed, _SPLITS[split], i]))
        height = int(rng.integers(hlo, hhi + 1))
        width = int(rng.integers(wlo, whi + 1))
        image, objects = render_image(rng, height, width, config)
        image_id = f"{_ID_PREFIX[split]}_{i:06d}"
        Image.fromarray(image).save(
            os.path.join(folder, "JPEGImages", image_id + ".jpg"), "JPEG",
            quality=config.jpeg_quality)
        with open(os.path.join(folder, "Annotations", image_id + ".xml"), "w",
                  encoding="utf-8", newline="\n") as f:
            f.write(_annotation_xml(image_id, width, height, objects))
        ids.append(image_id)
    with open(os.path.join(folder, "ImageSets", "Main", f"{split}.txt"), "w",
              encoding="utf-8", newline="\n") as f:
        f.write("".join(i + "\n" for i in ids))


def _write_all(folder, config):
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    with open(os.path.join(folder, "classes.txt"), "w", encoding="utf-8",
              newline="\n") as f:
        f.write("".join(c + "\n" for c in CLASSES))
    _write_split(folder, "trainval", config.num_train, config)
    _write_split(folder, "test", config.num_test, config)
    # Written last: its presence marks a complete dataset.
    with open(os.path.join(folder, "synthetic.json"), "w", encoding="utf-8",
              newline="\n") as f:
        json.dump(config.as_json(), f, indent=1, sort_keys=True)
        f.write("\n")


def _config(num_train, num_test, image_size, seed, options):
    return SyntheticConfig(num_train=num_train, num_test=num_test,
                           image_size=tuple(image_size), seed=seed, **options)


def generate(root, num_train=1000, num_test=200, image_size=(192, 256), seed=0,
             **options):
    """Write a synthetic dataset in the VOC layout at ``root``; return the
    absolute ``root``.

    The images are drawn into a temporary sibling folder that is renamed to
    ``root`` at the end, so ``root`` is either absent or complete. ``root``
    must not exist yet (or be an empty folder). ``options``: the other
    :class:`SyntheticConfig` fields (``object_size``, ``max_objects``,
    ``max_occlusion``, ``jpeg_quality``).
    """
    config = _config(num_train, num_test, image_size, seed, options)
    root = os.path.abspath(os.fspath(root))
    if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
        raise DataError(f"{root}: already exists and is not empty; the "
                        "synthetic dataset is written to a new folder")
    _generate_into(root, config)
    return root


def _generate_into(root, config):
    """Generate in a temporary folder and rename it to root. Returns False if
    another writer finished root first (ours is discarded)."""
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp-", dir=parent)
    try:
        _write_all(tmp, config)
        os.chmod(tmp, 0o755)      # mkdtemp makes it private
        try:
            os.rename(tmp, root)
        except OSError:
            if os.path.isfile(os.path.join(root, "synthetic.json")):
                return False      # a concurrent run finished first
            raise
        tmp = None
        return True
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _size_text(image_size):
    parts = []
    for s in image_size:
        parts.append(f"{s[0]}-{s[1]}" if isinstance(s, (tuple, list)) else str(s))
    return "x".join(parts)


def default_dataset_root(seed=0, num_train=1000, num_test=200,
                         image_size=(192, 256), base=None, **options):
    """Where :func:`ensure_dataset` keeps a dataset of these parameters:
    ``<base>/synthetic-v1-seed<seed>-<train>-<test>-<H>x<W>[-<hash>]`` with
    ``base`` the cache folder (``$NETDEF_CACHE_DIR`` or ``~/.cache/netdef``);
    a hash of the other options is appended when they are not the defaults."""
    config = _config(num_train, num_test, image_size, seed, options)
    name = (f"synthetic-v{VERSION}-seed{seed}-{num_train}-{num_test}-"
            f"{_size_text(config.image_size)}")
    if options:
        defaults = SyntheticConfig()
        extra = {k: v for k, v in config.as_json().items()
                 if k in options and getattr(defaults, k) != getattr(config, k)}
        if extra:
            digest = hashlib.sha1(json.dumps(extra, sort_keys=True).encode()).hexdigest()
            name += "-" + digest[:8]
    return os.path.join(base or cache_base_dir(), name)


def ensure_dataset(root=None, seed=0, num_train=1000, num_test=200,
                   image_size=(192, 256), **options):
    """The root of a synthetic dataset with these parameters, generated if
    missing. Safe when several processes call it at once or a run was killed
    midway: each generates into its own temporary folder and renames it; the
    first rename wins, an interrupted run leaves only a temporary folder.

    An existing ``root`` generated with other parameters is an error.
    """
    config = _config(num_train, num_test, image_size, seed, options)
    if root is None:
        root = default_dataset_root(seed, num_train, num_test, image_size, **options)
    root = os.path.abspath(os.fspath(root))
    meta = os.path.join(root, "synthetic.json")
    if not os.path.exists(root):
        _generate_into(root, config)
    if not os.path.isfile(meta):
        raise DataError(f"{root}: exists but is not a complete synthetic dataset "
                        "(no synthetic.json); remove it or choose another root")
    with open(meta, encoding="utf-8") as f:
        found = json.load(f)
    wanted = json.loads(json.dumps(config.as_json()))
    if found != wanted:
        diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        raise DataError(f"{root}: holds a synthetic dataset with other parameters "
                        f"({', '.join(f'{k}: {found.get(k)!r} != {wanted.get(k)!r}' for k in diff)})")
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m detection.datasets.synthetic",
        description="Write the synthetic shapes detection dataset (VOC layout).")
    parser.add_argument("out_dir", help="folder to create (must not exist or be empty)")
    parser.add_argument("--train", type=int, default=1000, help="trainval images")
    parser.add_argument("--test", type=int, default=200, help="test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args(argv)
    try:
        root = generate(args.out_dir, num_train=args.train, num_test=args.test,
                        image_size=(args.height, args.width), seed=args.seed)
    except (DataError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"wrote {args.train} trainval + {args.test} test images to {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
