#!/usr/bin/env python3
"""Packs what an offline GPU machine lacks for `jlml-bench gpu` into one ignored folder:
pinned wheels of torchreid and its pure-Python dependencies, and a JPEG copy of CUHK01
(docs/training.md, "On an offline GPU machine"). A tool of this repository, not of the
installed package.

    python tools/gpukit_pack.py --data-root <folder holding cuhk01/campus> [--output .gpukit]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Dict

#: What a GPU machine with torch but without network lacks, as pinned wheels (all pure
#: Python); torchreid ships as an sdist only, so its wheel is built here.
WHEELS = ('torchreid==0.2.5', 'yacs==0.1.8', 'gdown==6.5.1', 'beautifulsoup4==4.15.0',
          'soupsieve==4.1.3', 'PySocks==1.7.1', 'tqdm==4.70.1')
#: The most that may travel with the source tree to the device machine.
TRAVEL_LIMIT_BYTES = 64 * 2**20


class PackError(Exception):
    """Bad input: one line, exit code 2."""


def pack(data_root: str, output: str = '.gpukit', quality: int = 95,
         wheels: bool = True) -> Dict[str, int]:
    """Packs what the GPU machine lacks into ``output`` (an ignored folder): the
    :data:`WHEELS` under ``output/wheels`` and a JPEG copy of CUHK01 under
    ``output/reid-data/cuhk01/campus``. Returns the bytes of each; refuses a pack that
    would take the travelling tree over :data:`TRAVEL_LIMIT_BYTES`."""
    from PIL import Image
    source = os.path.join(data_root, 'cuhk01', 'campus')
    names = sorted(n for n in os.listdir(source) if n.endswith('.png')) if os.path.isdir(source) else []
    if not names:
        raise PackError(f'no CUHK01 PNGs in {source}: pass --data-root, the folder holding cuhk01/')
    campus = os.path.join(output, 'reid-data', 'cuhk01', 'campus')
    os.makedirs(campus, exist_ok=True)
    for name in names:
        target = os.path.join(campus, name[:-4] + '.jpg')
        if not os.path.isfile(target):
            Image.open(os.path.join(source, name)).convert('RGB').save(target, quality=quality)
    if wheels:
        folder = os.path.join(output, 'wheels')
        os.makedirs(folder, exist_ok=True)
        subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q', '-w', folder,
                        *WHEELS], check=True)
    sizes = {name: _folder_bytes(os.path.join(output, name)) for name in ('reid-data', 'wheels')}
    sizes['source_tree'] = _tracked_bytes()
    total = sum(sizes.values())
    if total > TRAVEL_LIMIT_BYTES:
        raise PackError(f'the travelling tree would be {total / 2**20:.1f} MiB, over the '
                        f'{TRAVEL_LIMIT_BYTES / 2**20:.0f} MiB limit: lower --quality')
    return sizes


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _tracked_bytes() -> int:
    """Bytes of the files git tracks here (what travels besides the carried folders)."""
    try:
        files = subprocess.run(['git', 'ls-files', '-z'], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return 0
    return sum(os.path.getsize(f) for f in files.decode().split('\0') if f and os.path.isfile(f))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data-root', required=True, help='folder holding cuhk01/campus (PNGs)')
    parser.add_argument('--output', default='.gpukit')
    parser.add_argument('--quality', type=int, default=95, help='JPEG quality')
    parser.add_argument('--no-wheels', action='store_true')
    args = parser.parse_args(argv)
    try:
        sizes = pack(args.data_root, args.output, args.quality, wheels=not args.no_wheels)
    except PackError as exc:
        print(f'gpukit_pack: error: {exc}', file=sys.stderr)
        return 2
    for name, size in sizes.items():
        print(f'{name}: {size / 2**20:.1f} MiB')
    print(f'travels in all: {sum(sizes.values()) / 2**20:.1f} MiB (limit 64); carry '
          f'{args.output} (docs/training.md, "On an offline GPU machine")')
    return 0


if __name__ == '__main__':
    sys.exit(main())
