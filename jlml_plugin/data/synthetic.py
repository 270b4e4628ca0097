"""``synthreid``: a procedurally drawn person re-id dataset that needs no download.

Each identity is a combination of body-part attributes: skin, hair style and colour
(or a hat), top colour, pattern and sleeves, trousers / shorts / skirt, shoe colour and a
carried item (backpack, shoulder bag, hand-held bag or umbrella) and a build. Several
identities share most attributes, so telling them apart needs the part-level details that
JLML's stripes look at.

Each image is drawn under one of the cameras, each with its own background palette,
illumination and colour cast, plus per-image background clutter, vertical misalignment,
scale jitter, a random facing (left/right mirror) and sometimes a partial occlusion.

Everything is deterministic from ``(seed, identity, camera, index)``. Images are written
once, on first use, under ``<root>/synthreid/<preset>-seed<seed>/`` and reused; a
``meta.json`` written last marks a complete set. Train, query and gallery identities
are disjoint from each other's (query and gallery share the test identities, under
different cameras, as re-id protocols need).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from .. import _torchreid
from .registry import register_dataset

__all__ = ['SynthSpec', 'PRESETS', 'SynthReID', 'SynthReIDTiny', 'generate', 'draw_person',
           'dataset_folder']

GENERATOR_VERSION = 1

PALETTE = np.array([
    [0.85, 0.10, 0.10], [0.10, 0.35, 0.85], [0.10, 0.65, 0.20], [0.95, 0.85, 0.15],
    [0.95, 0.95, 0.95], [0.08, 0.08, 0.08], [0.55, 0.15, 0.65], [0.95, 0.50, 0.10],
    [0.45, 0.45, 0.48], [0.95, 0.55, 0.70], [0.10, 0.70, 0.75], [0.45, 0.28, 0.12],
])
SKIN = np.array([[0.98, 0.84, 0.72], [0.90, 0.72, 0.55], [0.76, 0.57, 0.40],
                 [0.55, 0.38, 0.25], [0.36, 0.24, 0.16]])
HAIR = np.array([[0.05, 0.04, 0.03], [0.35, 0.20, 0.08], [0.90, 0.78, 0.45],
                 [0.70, 0.70, 0.70], [0.60, 0.22, 0.05]])
SHOES = np.array([[0.05, 0.05, 0.05], [0.95, 0.95, 0.95], [0.40, 0.24, 0.10],
                  [0.80, 0.10, 0.10]])

# Per camera: background colours, illumination gain and an RGB colour cast.
CAMERAS = [
    dict(background=[[0.55, 0.55, 0.52], [0.35, 0.50, 0.30], [0.70, 0.68, 0.62]],
         gain=1.05, cast=[1.12, 1.00, 0.80]),
    dict(background=[[0.60, 0.35, 0.28], [0.30, 0.30, 0.34], [0.50, 0.45, 0.40]],
         gain=0.75, cast=[0.82, 0.95, 1.20]),
    dict(background=[[0.25, 0.28, 0.35], [0.65, 0.65, 0.70], [0.40, 0.42, 0.30]],
         gain=0.95, cast=[1.00, 1.08, 0.94]),
]


@dataclass(frozen=True)
class SynthSpec:
    """How big a synthreid set is; every field changes the images."""
    num_train_ids: int = 120
    num_test_ids: int = 150
    num_cameras: int = 2
    train_images_per_camera: int = 4
    query_images: int = 1
    gallery_images_per_camera: int = 2
    height: int = 128
    width: int = 64


#: Named sizes, each registered with torchreid as its own dataset name.
PRESETS: Dict[str, SynthSpec] = {
    'synthreid': SynthSpec(),
    'synthreid_tiny': SynthSpec(num_train_ids=12, num_test_ids=10, train_images_per_camera=2,
                                query_images=1, gallery_images_per_camera=1,
                                height=64, width=32),
}


def _identity(rng: np.random.Generator) -> Dict[str, float]:
    top, bottom = rng.choice(len(PALETTE), 2, replace=False)
    return dict(
        skin=int(rng.integers(len(SKIN))), hair=int(rng.integers(len(HAIR))),
        hair_style=int(rng.integers(4)),  # short, long, hat, bald
        hat=int(rng.integers(len(PALETTE))),
        top=int(top), top_pattern=int(rng.integers(5)),  # solid, h-stripes, v-stripes, checks, logo
        top_second=int(rng.integers(len(PALETTE))), long_sleeves=int(rng.integers(2)),
        bottom=int(bottom), bottom_style=int(rng.integers(3)),  # trousers, shorts, skirt
        shoes=int(rng.integers(len(SHOES))),
        item=int(rng.integers(5)),  # none, backpack, shoulder bag, hand bag, umbrella
        item_colour=int(rng.integers(len(PALETTE))),
        width=float(rng.uniform(0.85, 1.15)), height=float(rng.uniform(0.9, 1.02)),
    )


#: Attributes that one look-alike may change: each lives in one horizontal band.
PART_ATTRIBUTES = ('hair', 'hair_style', 'top_pattern', 'item', 'bottom', 'bottom_style', 'shoes')


def identities(num: int, seed: int) -> List[Dict[str, float]]:
    """``num`` identities with pairwise different attribute combinations.

    They come in families of three: a random person and two look-alikes that differ
    from it in one body-part attribute only, so global colour alone cannot tell them
    apart.
    """
    rng = np.random.default_rng([seed, 0xC0DE])
    seen, out = set(), []
    base = None
    while len(out) < num:
        if len(out) % 3 == 0 or base is None:
            ident = _identity(rng)
            base = ident
        else:
            ident = dict(base)
            part = PART_ATTRIBUTES[rng.integers(len(PART_ATTRIBUTES))]
            ident[part] = _identity(rng)[part]
        key = tuple(v for k, v in ident.items() if k not in ('width', 'height'))
        if key not in seen:
            seen.add(key)
            out.append(ident)
    return out


class _Canvas:
    def __init__(self, height: int, width: int) -> None:
        self.img = np.zeros((height, width, 3))
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float64)

    def rect(self, y0, y1, x0, x1, colour) -> np.ndarray:
        mask = (self.yy >= y0) & (self.yy < y1) & (self.xx >= x0) & (self.xx < x1)
        self.img[mask] = colour
        return mask

    def ellipse(self, cy, cx, ry, rx, colour) -> np.ndarray:
        mask = ((self.yy - cy) / ry) ** 2 + ((self.xx - cx) / rx) ** 2 <= 1
        self.img[mask] = colour
        return mask


def _background(canvas: _Canvas, camera: dict, rng: np.random.Generator) -> None:
    h, w = canvas.img.shape[:2]
    colours = np.array(camera['background'])
    base = colours[rng.integers(len(colours))]
    ramp = np.linspace(0.9, 1.1, h)[:, None, None]
    canvas.img[:] = base * ramp
    for _ in range(int(rng.integers(3, 9))):  # clutter: signs, windows, poles, bins
        y0, x0 = rng.uniform(0, h), rng.uniform(-w * 0.2, w)
        canvas.rect(y0, y0 + rng.uniform(0.05, 0.4) * h, x0, x0 + rng.uniform(0.05, 0.4) * w,
                    np.clip(colours[rng.integers(len(colours))] * rng.uniform(0.6, 1.4)
                            + rng.normal(0, 0.05, 3), 0, 1))


def draw_person(ident: Dict[str, float], camera: int, rng: np.random.Generator,
                height: int, width: int) -> np.ndarray:
    """One (height, width, 3) uint8 image of ``ident`` seen by ``camera``."""
    cam = CAMERAS[camera % len(CAMERAS)]
    canvas = _Canvas(height, width)
    _background(canvas, cam, rng)

    scale = ident['height'] * rng.uniform(0.88, 1.0)  # scale jitter
    ph = height * 0.94 * scale
    top = rng.uniform(-0.03, 0.06) * height + (height * 0.94 - ph) * rng.uniform(0, 1)
    cx = width / 2 + rng.uniform(-0.06, 0.06) * width
    bw = width * 0.42 * ident['width']  # shoulder width
    y = lambda f: top + f * ph  # noqa: E731 - body proportions as fractions of height
    skin, top_c = SKIN[ident['skin']], PALETTE[ident['top']]
    bottom_c, item_c = PALETTE[ident['bottom']], PALETTE[ident['item_colour']]

    if ident['item'] == 1:  # backpack: bulge behind one shoulder
        canvas.rect(y(0.16), y(0.42), cx - bw * 0.62, cx + bw * 0.62, item_c * 0.8)
    # arms
    arm_c = top_c if ident['long_sleeves'] else skin
    for side in (-1, 1):
        x0 = cx + side * bw / 2 - (bw * 0.16 if side > 0 else 0)
        canvas.rect(y(0.15), y(0.47), x0, x0 + bw * 0.16, arm_c)
        canvas.rect(y(0.15), y(0.25), x0, x0 + bw * 0.16, top_c)
        canvas.rect(y(0.47), y(0.51), x0, x0 + bw * 0.16, skin)
    # torso with pattern
    torso = canvas.rect(y(0.14), y(0.5), cx - bw * 0.34, cx + bw * 0.34, top_c)
    second = PALETTE[ident['top_second']]
    pattern = ident['top_pattern']
    if pattern in (1, 2, 3):
        period = ph * 0.06
        hs = ((canvas.yy - top) // period) % 2 == 0
        vs = ((canvas.xx - cx) // (bw * 0.12)) % 2 == 0
        stripe = {1: hs, 2: vs, 3: hs ^ vs}[pattern]
        canvas.img[torso & stripe] = second
    elif pattern == 4:
        canvas.rect(y(0.2), y(0.3), cx - bw * 0.12, cx + bw * 0.12, second)
    # lower body
    style = ident['bottom_style']
    leg_w = bw * 0.3
    hem = {0: 0.93, 1: 0.68, 2: 0.93}[style]
    for side in (-1, 1):
        x0 = cx + (0.02 * bw if side > 0 else -0.02 * bw - leg_w)
        canvas.rect(y(0.5), y(0.93), x0, x0 + leg_w, skin)
        if style != 2:
            canvas.rect(y(0.5), y(hem), x0, x0 + leg_w, bottom_c)
        canvas.rect(y(0.93), y(1.0), x0 - 0.05 * bw, x0 + leg_w, SHOES[ident['shoes']])
    if style == 2:  # skirt
        canvas.rect(y(0.5), y(0.72), cx - bw * 0.4, cx + bw * 0.4, bottom_c)
    # head and hair
    hr = ph * 0.065
    canvas.ellipse(y(0.075), cx, hr, hr * 0.85, skin)
    hair_c, hair_style = HAIR[ident['hair']], ident['hair_style']
    if hair_style == 0:
        canvas.rect(y(0.005), y(0.05), cx - hr * 0.85, cx + hr * 0.85, hair_c)
    elif hair_style == 1:
        canvas.rect(y(0.005), y(0.05), cx - hr * 0.85, cx + hr * 0.85, hair_c)
        canvas.rect(y(0.03), y(0.2), cx - hr * 1.0, cx - hr * 0.6, hair_c)
        canvas.rect(y(0.03), y(0.2), cx + hr * 0.6, cx + hr * 1.0, hair_c)
    elif hair_style == 2:
        canvas.rect(y(-0.01), y(0.04), cx - hr * 1.1, cx + hr * 1.1, PALETTE[ident['hat']])
    # carried items in front
    if ident['item'] == 2:  # shoulder bag at the hip, strap across the torso
        canvas.rect(y(0.14), y(0.48), cx - bw * 0.05, cx + bw * 0.02, item_c * 0.7)
        canvas.rect(y(0.42), y(0.58), cx + bw * 0.3, cx + bw * 0.62, item_c)
    elif ident['item'] == 3:  # hand bag
        canvas.rect(y(0.5), y(0.64), cx - bw * 0.78, cx - bw * 0.45, item_c)
    elif ident['item'] == 4:  # closed umbrella
        canvas.rect(y(0.35), y(0.95), cx + bw * 0.52, cx + bw * 0.6, item_c)

    if rng.random() < 0.25:  # partial occlusion from below or the side
        occ = PALETTE[rng.integers(len(PALETTE))] * rng.uniform(0.4, 0.9)
        if rng.random() < 0.5:
            canvas.rect(height * rng.uniform(0.65, 0.85), height, 0, width, occ)
        else:
            x0 = rng.choice([-0.1, 0.75]) * width
            canvas.rect(0, height, x0, x0 + rng.uniform(0.15, 0.3) * width, occ)

    img = canvas.img
    if rng.random() < 0.5:  # facing left or right
        img = img[:, ::-1]
    light = cam['gain'] * rng.uniform(0.85, 1.15)
    img = img * light * np.array(cam['cast']) + rng.normal(0, 0.025, img.shape)
    return (np.clip(img, 0, 1) ** rng.uniform(0.9, 1.1) * 255).round().astype(np.uint8)


def dataset_folder(root: str, preset: str, seed: int) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(root)), 'synthreid',
                        f'{preset}-seed{seed}')


def _plan(spec: SynthSpec) -> List[Tuple[str, int, int, int]]:
    """(split, identity, camera, index) of every image."""
    plan = []
    for pid in range(spec.num_train_ids):
        for cam in range(spec.num_cameras):
            plan += [('train', pid, cam, k) for k in range(spec.train_images_per_camera)]
    for pid in range(spec.num_train_ids, spec.num_train_ids + spec.num_test_ids):
        plan += [('query', pid, 0, k) for k in range(spec.query_images)]
        for cam in range(1, spec.num_cameras):
            plan += [('gallery', pid, cam, k) for k in range(spec.gallery_images_per_camera)]
    return plan


def generate(root: str, preset: str, seed: int) -> str:
    """Draws the set once into its cache folder (atomically) and returns the folder."""
    spec = PRESETS[preset]
    folder = dataset_folder(root, preset, seed)
    meta = dict(generator=GENERATOR_VERSION, preset=preset, seed=seed, **asdict(spec))
    meta_path = os.path.join(folder, 'meta.json')
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            if json.load(f) == meta:
                return folder
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f'.{preset}-', dir=os.path.dirname(folder))
    try:
        people = identities(spec.num_train_ids + spec.num_test_ids, seed)
        for split in ('train', 'query', 'gallery'):
            os.makedirs(os.path.join(staging, split))
        for split, pid, cam, k in _plan(spec):
            rng = np.random.default_rng([seed, pid, cam, k])
            img = draw_person(people[pid], cam, rng, spec.height, spec.width)
            Image.fromarray(img).save(os.path.join(staging, split, f'{pid:04d}_c{cam}_{k:02d}.png'))
        with open(os.path.join(staging, 'meta.json'), 'w') as f:
            json.dump(meta, f, indent=1)
        if not os.path.isfile(meta_path):  # another process may have finished first
            if os.path.isdir(folder):
                shutil.rmtree(folder)  # an older generator's or an incomplete set
            os.replace(staging, folder)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging)
    return folder


def scan(folder: str, split: str) -> List[Tuple[str, int, int]]:
    """(path, pid, camid) of a generated split, in file-name order."""
    items = []
    for name in sorted(os.listdir(os.path.join(folder, split))):
        pid, cam, _ = os.path.splitext(name)[0].split('_')
        items.append((os.path.join(folder, split, name), int(pid), int(cam[1:])))
    return items


@register_dataset('synthreid')
class SynthReID(_torchreid.data.ImageDataset):
    """The ``synthreid`` preset as a torchreid dataset; ``split_id`` offsets the seed."""
    preset = 'synthreid'
    seed = 0

    def __init__(self, root: str = '', split_id: int = 0, **kwargs) -> None:
        self.dataset_dir = generate(root or os.path.join('~', '.cache', 'jlml_plugin'),
                                    self.preset, self.seed + split_id)
        train = scan(self.dataset_dir, 'train')
        super().__init__(train, scan(self.dataset_dir, 'query'),
                         scan(self.dataset_dir, 'gallery'), **kwargs)


@register_dataset('synthreid_tiny')
class SynthReIDTiny(SynthReID):
    """``synthreid_tiny``: a few dozen 64x32 images, for tests and smoke runs."""
    preset = 'synthreid_tiny'
