"""Paired differences between the test-feature views of two runs, from the per-query
outcomes that examples/branch_features.py records: run A minus run B in each view, with
the paired 95% interval over identities, by the code the boards state their claims with
(jlml_plugin.tools.report.compare).
  python results/sparsity/branch_pairs.py OUT.json A.json B.json [A2.json B2.json ...]"""
import json, os, sys

from jlml_plugin.tools import report

out_path, files = sys.argv[1], sys.argv[2:]
rows = []
for a_path, b_path in zip(files[::2], files[1::2]):
    runs = {os.path.splitext(os.path.basename(p))[0]: json.load(open(p)) for p in (a_path, b_path)}
    a, b = runs
    for view in runs[a]['queries']:
        records = [dict(label=name, split_id=run['split_id'], **run['scores'][view])
                   for name, run in runs.items()]
        queries = [dict(label=name, split_id=run['split_id'], **run['queries'][view])
                   for name, run in runs.items()]
        rows += report.compare(records, queries, [(a, b, view)])
print(report.comparisons_table(rows, 'run'))
with open(out_path, 'w') as f:
    json.dump(rows, f, indent=1)
