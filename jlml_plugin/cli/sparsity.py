"""``jlml-sparsity``: what the sparsity terms selected, in one checkpoint or along a path.

    jlml-sparsity --checkpoint log/jlml_cuhk01/model/model.pth.tar-30
    jlml-sparsity --board results/leaderboard/sparsity_path --key jlml.reg_global.weight

The work is :mod:`jlml_plugin.tools.sparsity`'s; this is its command line.
"""
from __future__ import annotations

import sys
from typing import List, Optional

from ..tools.sparsity import write_checkpoint_selection, write_path
from .common import command_parser, main_wrapper

__all__ = ['main']


def build_parser():
    parser = command_parser('jlml-sparsity', __doc__.split('\n\n')[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument('--checkpoint', help='a checkpoint written by jlml-train')
    what.add_argument('--board', help='a leaderboard results folder: draw its selection path')
    parser.add_argument('--key', default='jlml.reg_global.weight',
                        help='with --board: the config key the path runs along')
    parser.add_argument('--labels', default='',
                        help='with --board: comma-separated labels on the path (default: all '
                             'records with the key)')
    parser.add_argument('--output', default='',
                        help='PNG to write (default: <checkpoint>.sparsity.png, or '
                             '<board>/path_<key>.png); the JSON goes beside it')
    return parser


def run(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.board:
        path, png = write_path(args.board, args.key,
                               [label for label in args.labels.split(',') if label], args.output)
        points, best = path['points'], path['best']
        names = sorted({n for p in points for n in p['terms']})
        print(f'{args.key:>24} {"R1 + mAP":>9} ' + ' '.join(f'{n + " 0 / off":>24}' for n in names)
              + f'  {best} minus it: R1, mAP [95% CI]')
        for p in points:
            lead = p['best_minus_this']
            print(f'{p["value"]:>24g} {p["score"] * 100:>9.1f} ' + ' '.join(
                f'{p["terms"][n]["exact_zeros"]:>11} / {p["terms"][n]["off"]:<11}'
                if n in p['terms'] else f'{"–":>24}' for n in names) + '  ' + (
                'best' if p['label'] == best else 'no per-query records' if lead is None
                else ', '.join(f'{lead[m]["mean"]:+.1f} [{lead[m]["low"]:+.1f}, '
                               f'{lead[m]["high"]:+.1f}]' for m in ('rank1', 'mAP'))))
    else:
        summary, png = write_checkpoint_selection(args.checkpoint, args.output)
        print(f'{"term":<11} {"kind":<22} {"units":>7} {"exactly 0":>10} {"off (<1e-3)":>12}')
        for name, e in summary.items():
            print(f'{name:<11} {e["term"]["kind"]:<22} {e["units"]:>7} {e["exact_zeros"]:>10} '
                  f'{e["off_fraction"]:>12.1%}')
            if 'off_fraction_per_group' in e:
                print(f'{"":<11} per stripe, exactly 0: '
                      + ', '.join(str(v) for v in e['zeros_per_group']) + '; off: '
                      + ', '.join(f'{v:.1%}' for v in e['off_fraction_per_group']))
    print(f'plot: {png}')
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return main_wrapper('jlml-sparsity', run, argv)


if __name__ == '__main__':
    sys.exit(main())
