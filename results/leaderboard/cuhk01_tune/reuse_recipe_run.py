"""The recipe check's fp32 HA-CNN run (recipe_fp32.yaml) is the same training as the
board's HA-CNN tuning point at the protocol's lr: same protocol fingerprint, same trained
config (checked here, key by key), same tuning split, seed and epochs. So its record (and
its per-query outcomes) is copied into the tuning folder under the tuning label, instead
of training it a second time; the tuning report is rewritten. Run from the repository root:

    python results/leaderboard/cuhk01_tune/reuse_recipe_run.py hacnn
"""
import sys

from jlml_plugin.config import config_changes, trained_config
from jlml_plugin.tools import leaderboard, report

SOURCE = 'results/leaderboard/recipe_fp32'
BOARD = 'configs/leaderboard/cuhk01.yaml'

label = sys.argv[1]
tuning = leaderboard.tuning_spec(leaderboard.load_leaderboard(BOARD))
point = next(run for run in leaderboard.plan_runs(tuning)
             if run.label == f'{label}@train.lr=0.0015')
record = next(r for r in report.load_records(SOURCE) if r['label'] == label)
queries = next(q for q in report.load_queries(SOURCE) if q['label'] == label)
assert record['protocol'] == leaderboard.protocol_hash(tuning), 'another protocol'
target = trained_config(leaderboard._run_config(tuning, point, '', tuning['output']))
changes = config_changes(record['config'], target)
assert not changes, changes
assert (record['split_id'], record['seed']) == (point.split_id, point.seed)
record = dict(record, label=point.label, group=point.group,
              reused_from=f'{SOURCE} ({label})')
report.append_record(tuning['output'], record,
                     {k: v for k, v in queries.items() if k not in ('label', 'split_id', 'seed')})
leaderboard.rewrite_reports(BOARD, tuning=True)
print(f'{point.label}: R1 {record["rank1"]:.1%} mAP {record["mAP"]:.1%}, from {SOURCE}')
