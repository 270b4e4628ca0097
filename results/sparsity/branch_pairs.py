"""Paired differences between the test-feature views of two runs, from the per-query
outcomes that examples/branch_features.py records: run A minus run B in each view, with
the paired 95% interval over identities (jlml_plugin.tools.stats), as the boards state
their claims.
  python results/sparsity/branch_pairs.py OUT.json A.json B.json [A2.json B2.json ...]"""
import json, os, sys

from jlml_plugin.tools import stats

out_path, files = sys.argv[1], sys.argv[2:]
pairs = []
for a_path, b_path in zip(files[::2], files[1::2]):
    a, b = (json.load(open(p)) for p in (a_path, b_path))
    names = [os.path.splitext(os.path.basename(p))[0] for p in (a_path, b_path)]
    for view in a['queries']:
        queries = [dict(label=name, split_id=run['split_id'], **run['queries'][view])
                   for name, run in zip(names, (a, b))]
        row = dict(a=names[0], b=names[1], view=view)
        for metric in ('rank1', 'mAP'):
            interval = stats.paired_interval(queries, *names, metric).scaled(100)
            row[metric] = dict(vars(interval), verdict=stats.verdict(interval))
        pairs.append(row)
        print(f"{names[0]} − {names[1]}, {view:<42} " + ', '.join(
            f"{m} {row[m]['mean']:+.1f} [{row[m]['low']:+.1f}, {row[m]['high']:+.1f}] {row[m]['verdict']}"
            for m in ('rank1', 'mAP')))
with open(out_path, 'w') as f:
    json.dump(pairs, f, indent=1)
