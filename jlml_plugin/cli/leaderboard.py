"""``jlml-leaderboard``: JLML and torchreid baselines trained under one identical protocol.

    jlml-leaderboard --config configs/leaderboard/cuhk01.yaml --root <folder holding cuhk01/>

The work is :mod:`jlml_plugin.tools.leaderboard`'s; this is its command line.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..errors import ConfigError
from ..tools.leaderboard import (load_leaderboard, rewrite_reports, run_leaderboard,
                                 tuning_spec, versus)
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
    parser.add_argument('--dry-run', action='store_true', help='validate and list the runs left')
    parser.add_argument('--report-only', action='store_true',
                        help='rewrite tables and plots from the recorded results (the tuning '
                             'runs\' too, unless --output names another folder)')
    parser.add_argument('--versus', default='',
                        help='another leaderboard config: compare each model with its run of '
                             'the same label there, paired by query (e.g. two recipes)')
    return parser


def run(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.versus:
        print(versus(args.config, args.versus, args.output))
        return 0
    if args.report_only:
        if not args.output and tuning_spec(load_leaderboard(args.config)):  # and its tuning runs'
            print(f'reports rewritten in {rewrite_reports(args.config, tuning=True)[0]}')
        output, comparisons = rewrite_reports(args.config, args.output)
        if comparisons:  # every ranking and claim, with its interval and verdict
            print(comparisons)
        print(f'reports rewritten in {output}')
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
