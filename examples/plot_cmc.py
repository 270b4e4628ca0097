"""Plot CMC curves from a jlml-leaderboard results folder.

    python examples/plot_cmc.py --results results/leaderboard/cuhk01 --output cmc.png --max-rank 20

Each model's curve is its mean over the splits it ran; ablations are dashed.
"""
import argparse

from jlml_plugin.tools import report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--results', required=True, help='a leaderboard output folder')
    parser.add_argument('--output', default='cmc.png')
    parser.add_argument('--max-rank', type=int, default=20)
    parser.add_argument('--models', default='', help='comma-separated labels (default: all)')
    args = parser.parse_args()

    rows = report.summarize(report.load_records(args.results))
    if args.models:
        keep = args.models.split(',')
        rows = [row for row in rows if row['label'] in keep]
    report.plot_cmc(rows, args.output, max_rank=args.max_rank, title=args.results)
    for row in rows:
        print(f"{row['label']:<20} R1 {row['cmc'][0]:.1%}  R{args.max_rank} "
              f"{row['cmc'][args.max_rank - 1]:.1%}  ({len(row['splits'])} splits)")
    print(f'wrote {args.output}')


if __name__ == '__main__':
    main()
