"""A tuning point that another board has already trained is copied in, not trained again:
same protocol fingerprint, same trained config (checked here, key by key), same split and
seed. Its record and per-query outcomes move into the tuning folder under the tuning
label, with ``reused_from``; the tuning report is rewritten. Run from the repository root:

    python results/leaderboard/cuhk01_tune/reuse_run.py SOURCE_CONFIG SOURCE_LABEL TUNING_LABEL

Used for: recipe_fp32.yaml's hacnn as hacnn@train.lr=0.0015 (2026-12-03).
"""
import sys

from jlml_plugin.config import config_changes, trained_config
from jlml_plugin.tools import leaderboard, report

BOARD = 'configs/leaderboard/cuhk01.yaml'

source_config, source_label, label = sys.argv[1:4]
source = leaderboard.load_leaderboard(source_config)['output']
tuning = leaderboard.tuning_spec(leaderboard.load_leaderboard(BOARD))
point = next(run for run in leaderboard.plan_runs(tuning) if run.label == label)
record = next(r for r in report.load_records(source) if r['label'] == source_label)
queries = next(q for q in report.load_queries(source) if q['label'] == source_label)
assert record['protocol'] == leaderboard.protocol_hash(tuning), 'another protocol'
target = trained_config(leaderboard._run_config(tuning, point, '', tuning['output']))
changes = config_changes(record['config'], target)
assert not changes, changes
assert (record['split_id'], record['seed']) == (point.split_id, point.seed)
record = dict(record, label=point.label, group=point.group,
              reused_from=f'{source} ({source_label})')
report.append_record(tuning['output'], record,
                     {k: v for k, v in queries.items() if k not in ('label', 'split_id', 'seed')})
leaderboard.rewrite_reports(BOARD, tuning=True)
print(f'{point.label}: R1 {record["rank1"]:.1%} mAP {record["mAP"]:.1%}, from {source}')
