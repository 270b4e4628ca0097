"""report: the tables built from leaderboard records, checked cell by cell."""
from jlml_plugin.report import claims_table


def _record(label, split_id, rank1, mAP):
    return dict(label=label, split_id=split_id, rank1=rank1, mAP=mAP)


def test_a_claim_holds_on_a_split_only_where_the_reference_leads_in_r1_and_map():
    records = [_record('jlml', 0, 0.40, 0.42), _record('jlml', 2, 0.35, 0.38),
               _record('jlml', 4, 0.30, 0.33),
               _record('local', 0, 0.30, 0.32),   # behind on both: holds
               _record('local', 2, 0.36, 0.37),   # ahead in R1: does not hold
               _record('local', 4, 0.30, 0.30),   # a tie in R1: does not hold
               _record('lambda0', 0, 0.20, 0.25)]  # one split measured so far
    table = claims_table(records, 'jlml', {'local': 'joint beats local',
                                           'lambda0': 'sparsity helps'})
    assert table.splitlines() == [
        '| claim | ablation | split 0 | split 2 | split 4 | holds on |',
        '|---|---|---|---|---|---|',
        '| joint beats local | local | +10.0 (+10.0) | -1.0 (+1.0) | +0.0 (+3.0) | 1 of 3 (0) |',
        '| sparsity helps | lambda0 | +20.0 (+17.0) | – | – | 1 of 1 (0) |']


def test_a_claim_with_no_paired_split_says_so():
    table = claims_table([_record('jlml', 0, 0.4, 0.4), _record('local', 2, 0.3, 0.3)],
                         'jlml', {'local': 'joint beats local'})
    assert table.splitlines()[-1] == '| joint beats local | local | – | – | 0 of 0 |'
