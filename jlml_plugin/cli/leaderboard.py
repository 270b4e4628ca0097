"""``jlml-leaderboard``: JLML and torchreid baselines trained under one identical protocol.

    jlml-leaderboard --config configs/leaderboard/cuhk01.yaml --root <folder holding cuhk01/>

The work is :mod:`jlml_plugin.tools.leaderboard`'s; this is its command line.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..errors import ConfigError
from ..tools.leaderboard import copy_run, rewrite_reports, run_leaderboard, versus
from ..tools.leaderboard_spec import load_leaderboard, tuning_spec
from .common import command_parser, main_wrapper

__all__ = ['main']


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser('jlml-leaderboard', __doc__.split('\n\n')[0])
    parser.add_argument('--config', required=True, help='leaderboard YAML')
    parser.add_argument('--root', default='', help='datasets folder (overrides the config)')
    parser.add_argument('--output', default='', help='results folder (overrides the config)')
    parser.add_argument('--only', default='', help='comma-separated labels to run')
    parser.add_argument('--splits', default='',
                        help='comma-separated split ids to run (of those planned)')
    parser.add_argument('--dry-run', action='store_true',
                        help='validate and list the runs left: where each stands, and its '
                             'training time at the recorded speeds')
    parser.add_argument('--report-only', action='store_true',
                        help='rewrite tables and plots from the recorded results (the tuning '
                             'runs\' too, unless --output names another folder)')
    parser.add_argument('--versus', default='',
                        help='another leaderboard config: compare each model with its run of '
                             'the same label there, paired by query (e.g. two recipes)')
    parser.add_argument('--copy-run', nargs=3, metavar=('SOURCE_CONFIG', 'SOURCE_LABEL', 'LABEL'),
                        help='copy a run another board has trained (same protocol, config, '
                             'split and seed) into this board or its tuning runs as LABEL, '
                             'instead of training it')
    return parser


def _report_only(config: str, output: str) -> int:
    """Rewrites the board's reports (and its tuning runs', unless ``output`` names another
    folder) and prints each ranking and claim with its interval and verdict."""
    reports = [rewrite_reports(config, output)]
    if not output and tuning_spec(load_leaderboard(config)):
        reports.insert(0, rewrite_reports(config, tuning=True))
    if all(comparisons is None for _, comparisons in reports):
        raise ConfigError(f'no records yet in {" or ".join(folder for folder, _ in reports)}: '
                          f'nothing to report; run the leaderboard first')
    for folder, comparisons in reports:
        if comparisons:
            print(comparisons)
        print(f'reports rewritten in {folder}' if comparisons is not None
              else f'no records yet in {folder}')
    return 0


def run(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.versus:
        print(versus(args.config, args.versus, args.output))
        return 0
    if args.report_only:
        return _report_only(args.config, args.output)
    if args.copy_run:
        for record in copy_run(args.copy_run[0], args.copy_run[1], args.config, args.copy_run[2]):
            print(f'{record["label"]} split {record["split_id"]} seed {record.get("seed", 1)}: '
                  f'R1 {record["rank1"]:.1%} mAP {record["mAP"]:.1%}, copied from '
                  f'{record["reused_from"]}')
        return 0
    only = [s for s in args.only.split(',') if s]
    try:
        splits = [int(s) for s in args.splits.split(',') if s]
    except ValueError:
        raise ConfigError(f'--splits must be comma-separated split ids, got {args.splits!r}'
                          ) from None
    run_leaderboard(args.config, root=args.root, output=args.output, only=only,
                    dry_run=args.dry_run, splits=splits)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return main_wrapper('jlml-leaderboard', run, argv)


if __name__ == '__main__':
    sys.exit(main())
