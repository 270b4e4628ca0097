"""report: the tables built from leaderboard records, checked cell by cell."""
import numpy as np
import pytest

from jlml_plugin.tools.report import (compare, comparisons_table, markdown_table, per_split_table,
                                      summarize)


def _record(label, split_id, rank1, mAP, seed=1):
    return dict(label=label, split_id=split_id, rank1=rank1, mAP=mAP, seed=seed, model=label,
                params=1, gflops=1, input='1x1', epochs=1, cmc=[rank1])


def _queries(label, split_id, first_rank, ap, seed=1):
    return dict(label=label, split_id=split_id, seed=seed, index=list(range(len(ap))),
                pid=[i // 2 for i in range(len(ap))], first_rank=list(first_rank), ap=list(ap))


def test_a_claim_reads_its_pooled_paired_interval():
    rng = np.random.default_rng(0)
    ap = rng.random(100)
    ranks = np.where(ap > 0.5, 1, 3)
    records = [_record('jlml', 0, 0.40, 0.42), _record('jlml', 2, 0.35, 0.38),
               _record('local', 0, 0.30, 0.32), _record('local', 2, 0.36, 0.37),
               _record('lambda0', 0, 0.20, 0.25)]
    queries = [_queries('jlml', s, ranks, ap) for s in (0, 2)] + [
        _queries('local', s, ranks, ap - 0.1) for s in (0, 2)]  # 10 points of AP behind
    rows = compare(records, queries, [('jlml', 'local', 'joint beats local'),
                                      ('jlml', 'lambda0', 'sparsity helps')])
    local, lambda0 = rows
    assert local['splits'] == [0, 2]
    assert local['per_split']['2'] == pytest.approx({'rank1': -1.0, 'mAP': 1.0})
    assert local['mAP'] == {'mean': pytest.approx(10.0), 'low': pytest.approx(10.0),
                            'high': pytest.approx(10.0), 'verdict': 'holds'}
    assert local['rank1']['verdict'] == 'not shown'  # the same first ranks: a zero interval
    assert lambda0['rank1'] is None and lambda0['splits'] == [0]
    assert comparisons_table(rows, 'ablation').splitlines() == [
        '| claim | ablation pair | R1 difference [95% CI] | mAP difference [95% CI] | split 0 | split 2 |',
        '|---|---|---|---|---|---|',
        '| joint beats local | jlml − local | +0.0 [+0.0, +0.0] not shown | +10.0 [+10.0, +10.0] holds '
        '| +10.0 (+10.0) | -1.0 (+1.0) |',
        '| sparsity helps | jlml − lambda0 | no per-query records | no per-query records '
        '| +20.0 (+17.0) | – |']
    no_runs = compare([], [], [('jlml', 'local', 'joint beats local')])
    assert comparisons_table(no_runs, 'ablation').splitlines()[:2] == [
        '| claim | ablation pair | R1 difference [95% CI] | mAP difference [95% CI] |',
        '|---|---|---|---|']


def test_a_pair_with_a_run_still_to_come_gets_its_interval_but_no_verdict():
    ap = np.linspace(0.1, 0.9, 40)
    ranks = np.ones(40, dtype=int)
    records = [_record(label, 0, 0.5, 0.5) for label in ('jlml', 'local', 'global')]
    queries = [_queries('jlml', 0, ranks, ap), _queries('local', 0, ranks, ap - 0.1),
               _queries('global', 0, ranks, ap - 0.1)]
    local, global_ = compare(records, queries, [('jlml', 'local', ''), ('jlml', 'global', '')],
                             pending={('global', 2, 1)})
    assert local['mAP']['verdict'] == 'holds'
    assert global_['mAP'] == {'mean': pytest.approx(10.0), 'low': pytest.approx(10.0),
                              'high': pytest.approx(10.0), 'verdict': 'no verdict yet: 1 run to come'}


def test_seeds_are_averaged_per_split():
    records = [_record('jlml', 0, 0.40, 0.42), _record('jlml', 0, 0.30, 0.40, seed=2),
               _record('jlml', 2, 0.35, 0.38)]
    rows = summarize(records)
    assert per_split_table(records, rows).splitlines()[-1] == \
        '| jlml | 35.0 (41.0) ×2 | 35.0 (38.0) |'


def test_the_models_table_counts_each_splits_seeds():
    scores = dict(rank5=0.5, rank10=0.6, mINP=0.3, train_images_per_s=10.0, wall_seconds=600)
    records = [dict(_record('jlml', 0, 0.40, 0.42), **scores),
               dict(_record('jlml', 0, 0.30, 0.40, seed=2), **scores),
               dict(_record('jlml', 2, 0.35, 0.38), **scores)]
    assert markdown_table(summarize(records)).splitlines()[-1].endswith('| 3 (0 ×2, 2) |')
    assert markdown_table(summarize(records[1:])).splitlines()[-1].endswith('| 2 (0, 2) |')


def test_a_claim_is_stated_again_in_a_view_both_sides_scored():
    """In the view, jlml leads by 10 points of AP where the main feature ties; a run that
    did not score the view (baseline) drops out of it rather than being read as the main."""
    from jlml_plugin.tools.report import in_view
    ap = np.linspace(0.1, 0.9, 40)
    ranks = np.ones(40, dtype=int)

    def scored(label, view_ap):
        record = dict(_record(label, 0, 0.5, 0.5), halves_rank1=1.0, halves_mAP=float(view_ap.mean()))
        queries = dict(_queries(label, 0, ranks, ap),
                       views={'halves': dict(first_rank=ranks.tolist(), ap=view_ap.tolist())})
        return record, queries
    (r_a, q_a), (r_b, q_b) = scored('jlml', ap), scored('lambda0', ap - 0.1)
    records = [r_a, r_b, _record('baseline', 0, 0.5, 0.5)]
    queries = [q_a, q_b, _queries('baseline', 0, ranks, ap)]
    pairs = [('jlml', 'lambda0', 'sparsity helps'), ('jlml', 'baseline', 'beats baseline')]
    main = compare(records, queries, pairs)
    assert [row['mAP']['verdict'] for row in main] == ['not shown', 'not shown']
    view_records, view_queries = in_view(records, queries, 'halves')
    assert [r['label'] for r in view_records] == ['jlml', 'lambda0']
    assert view_records[0]['mAP'] == pytest.approx(0.5) and view_queries[1]['ap'] == (ap - 0.1).tolist()
    sparsity, baseline = compare(view_records, view_queries, pairs)
    assert sparsity['mAP'] == {'mean': pytest.approx(10.0), 'low': pytest.approx(10.0),
                               'high': pytest.approx(10.0), 'verdict': 'holds'}
    assert baseline['splits'] == [] and baseline['mAP'] is None
