"""jlml-leaderboard: the synthetic board end to end, resume, and bad configs."""
import dataclasses
import json
import os
import re
import shutil

import pytest
import yaml

from jlml_plugin.cli import leaderboard as leaderboard_cli
from jlml_plugin.tools import leaderboard, leaderboard_spec, report
from jlml_plugin._files import atomic_write_text, exclusive_lock
from jlml_plugin.config import flatten

pytestmark = pytest.mark.slow  # trains a 6-run synthetic board

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(ROOT, 'configs', 'leaderboard', 'synthetic.yaml')


def _run(argv, capsys):
    code = leaderboard_cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope='module')
def board(data_root, tmp_path_factory):
    output = str(tmp_path_factory.mktemp('board'))
    code = leaderboard_cli.main(['--config', SYNTHETIC, '--root', data_root, '--output', output])
    assert code == 0
    return output


def test_synthetic_board_writes_every_report(board):
    for name in ('results.jsonl', 'results.csv', 'summary.json', 'leaderboard.md', 'cmc.png',
                 'environment.json'):
        assert os.path.getsize(os.path.join(board, name)) > 0, name
    records = [json.loads(line) for line in open(os.path.join(board, 'results.jsonl'))]
    assert sorted((r['label'], r['split_id']) for r in records) == sorted([
        ('jlml', 0), ('osnet_x0_25', 0), ('jlml_global', 0), ('jlml_lambda0', 0),
        ('jlml', 1), ('osnet_x0_25', 1)])
    for r in records:
        assert 0 <= r['rank1'] <= r['rank5'] <= 1 and len(r['cmc']) == 50
        assert r['params'] > 0 and r['gflops'] > 0 and r['input'] == '64x32'
        assert r['train_images_per_s'] > 0 and r['env']['torch']
        accuracies = [v for k, v in r['train_summary'].items() if k.startswith('acc')]
        assert accuracies and all(0 <= a <= 100 for a in accuracies), r['train_summary']
    table = open(os.path.join(board, 'leaderboard.md')).read()
    assert '| jlml | 12.1 |' in table and '± ' in table and '### ablation' in table
    assert '\nRuns recorded: 6 of the 6 planned.\n' in table
    jlml_split1 = next(r for r in records if r['label'] == 'jlml' and r['split_id'] == 1)
    assert '### models, per split: R1 (mAP)\n\n| Model | split 0 | split 1 |' in table
    assert f"{jlml_split1['rank1'] * 100:.1f} ({jlml_split1['mAP'] * 100:.1f}) |\n" in table
    assert '### ablation, per split' not in table  # one split each: nothing to spread
    jlml, jlml_global = (next(r for r in records if r['label'] == label and r['split_id'] == 0)
                         for label in ('jlml', 'jlml_global'))
    gain = (jlml['rank1'] - jlml_global['rank1']) * 100
    assert ('### claims: the first minus the second, paired by query\n\n'
            '| claim | ablation pair | R1 difference [95% CI] | mAP difference [95% CI] | split 0 |'
            ) in table
    assert f'| joint features beat global-only | jlml − jlml_global | {gain:+.1f} [' in table
    assert '| the sparsity regularisers help | jlml − jlml_lambda0 |' in table
    assert '| jlml beats osnet_x0_25 | jlml − osnet_x0_25 | ' in table
    # The comparisons are computed from the per-query records alone.
    queries = [json.loads(line) for line in open(os.path.join(board, 'queries.jsonl'))]
    assert sorted((q['label'], q['split_id']) for q in queries) == sorted(
        (r['label'], r['split_id']) for r in records)
    for q in queries:
        record = next(r for r in records if (r['label'], r['split_id']) == (q['label'], q['split_id']))
        assert sum(rank == 1 for rank in q['first_rank']) / len(q['ap']) == pytest.approx(record['rank1'])
        assert sum(q['ap']) / len(q['ap']) == pytest.approx(record['mAP'], abs=1e-6)
        for view, outcomes in q['views'].items():  # each view's figures come from them too
            assert sum(a for a in outcomes['ap']) / len(q['ap']) == pytest.approx(
                record[f'{view}_mAP'], abs=1e-6)
        assert set(q['views']) == ({'l2norm', 'global', 'local', 'halves_l2norm'}
                                   if q['label'] in ('jlml', 'jlml_lambda0') else {'l2norm'})
    # The views state each comparison again where both sides scored the view.
    in_halves = table.split('### claims in view halves_l2norm (each branch L2-normalised '
                            'before joining): the first minus the second')[1]
    assert '| jlml − jlml_lambda0 |' in in_halves and 'jlml_global' not in in_halves
    assert '### rankings in view l2norm (the whole feature L2-normalised)' in table
    assert '### rankings in view halves_l2norm' not in table  # osnet has no halves
    comparisons = json.load(open(os.path.join(board, 'comparisons.json')))
    claim = comparisons['claims'][0]
    assert claim['rank1']['mean'] == pytest.approx(gain)
    assert claim['rank1']['low'] <= claim['rank1']['mean'] <= claim['rank1']['high']
    assert os.path.getsize(os.path.join(board, 'forest.png')) > 0
    assert os.path.getsize(os.path.join(board, 'forest_halves_l2norm.png')) > 0
    halves = comparisons['views']['halves_l2norm']
    assert [(c['a'], c['b']) for c in halves['claims']] == [('jlml', 'jlml_lambda0')]
    assert halves['rankings'] == []
    summary = json.load(open(os.path.join(board, 'summary.json')))
    assert [row['label'] for row in summary] == ['jlml', 'osnet_x0_25', 'jlml_global', 'jlml_lambda0']


PER_RUN_KEYS = {'model.name', 'data.split_id', 'data.save_dir'}


def test_every_model_gets_the_same_protocol(board):
    """Every run's resolved config equals every other's, but for the model, the split,
    the output folder and the jlml.* keys an entry may override."""
    spec = leaderboard_spec.load_leaderboard(SYNTHETIC)
    runs = leaderboard_spec.plan_runs(spec)
    configs = {run.key: flatten(leaderboard_spec.run_config(spec, run, 'ROOT', board))
               for run in runs}
    first = configs[runs[0].key]
    for key, cfg in configs.items():
        differ = {k for k in cfg if cfg[k] != first[k]}
        assert differ <= PER_RUN_KEYS | {k for k in cfg if k.startswith('jlml.')}, (key, differ)
    assert len({repr(sorted(c.items())) for c in configs.values()}) == len(runs)
    protocol = flatten(spec['protocol'])
    for cfg in configs.values():
        assert all(cfg[k] == v or list(cfg[k]) == v for k, v in protocol.items())
    # and the runs trained that way: the same epochs, input and sparsity where not overridden
    logs = {label: open(os.path.join(board, 'runs', label, 'split0', 'train.log')).read()
            for label in ('jlml', 'osnet_x0_25', 'jlml_lambda0')}
    assert 'reg_global' in logs['jlml'] and 'reg_global' not in logs['jlml_lambda0']
    records = [json.loads(line) for line in open(os.path.join(board, 'results.jsonl'))]
    assert {(r['epochs'], r['input']) for r in records} == {(spec['protocol']['train']['max_epoch'],
                                                            '64x32')}


def test_finished_runs_are_skipped(board, data_root, capsys):
    code, out, _ = _run(['--config', SYNTHETIC, '--root', data_root, '--output', board], capsys)
    assert code == 0 and '6 runs, 6 done, 0 to go' in out


def test_the_plan_says_where_each_run_stands_and_how_long_it_has_to_go(tmp_path, board,
                                                                       data_root, capsys):
    # A second seed on the finished board: its runs are planned at the recorded speeds.
    output = tmp_path / 'out'
    output.mkdir()
    shutil.copy(os.path.join(board, 'results.jsonl'), output)
    config = _config(tmp_path, seeds=[1, 2])
    started = output / 'runs' / 'jlml' / 'split0-seed2' / 'model'
    started.mkdir(parents=True)
    (started / 'model.pth.tar-1').write_bytes(b'')  # the plan reads only its epoch
    with exclusive_lock(str(output / 'runs' / 'jlml' / 'split0-seed2' / '.claim')):
        code, out, _ = _run(['--config', config, '--root', data_root, '--output', str(output),
                             '--dry-run'], capsys)
    assert code == 0 and '12 runs, 6 done, 6 to go' in out
    assert ('would run jlml/split0-seed2 (jlml): about 0 min, resumes after epoch 1 of 1, '
            'another runner is training it') in out
    assert 'would run osnet_x0_25/split1-seed2 (osnet_x0_25): about 0 min\n' in out
    assert 'Training time left: about 0.0 h of runner time at the recorded speeds\n' in out
    # Its report, written now, says that it is partial, and states no finding yet.
    shutil.copy(os.path.join(board, 'queries.jsonl'), output)
    _, comparisons = leaderboard.rewrite_reports(config, str(output))
    text = (output / 'leaderboard.md').read_text()
    assert '\nRuns recorded: 6 of the 12 planned; the tables and comparisons cover only those.\n' in text
    verdicts = re.findall(r'\] ([^|]*?) \|', comparisons)
    assert verdicts and set(verdicts) == {'no verdict yet: 4 runs to come',  # jlml, osnet ×2 each
                                          'no verdict yet: 3 runs to come'}  # jlml ×2, an ablation


def test_training_time_left_is_the_boards_images_at_the_runs_recorded_speed():
    run = leaderboard_spec.Run(label='jlml_lambda0', model='jlml', group='ablation',
                               split_id=2, seed=1)
    board = [dict(label='jlml', model='jlml', epochs=30, train_seconds=4000.0,
                  train_images_per_s=14.4),              # 1920 images per epoch
             dict(label='hacnn', model='hacnn', epochs=10, train_seconds=1000.0,
                  train_images_per_s=1.92)]              # 192 per epoch: the mean is 1056
    tuning = [dict(label='jlml_lambda0@lr=1', model='jlml', epochs=30, train_seconds=1.0,
                   train_images_per_s=7.2)]
    # No record of its label: its model's mean speed on either board, 10.8 images/s.
    assert leaderboard._training_seconds(
        run, 20, leaderboard._images_per_epoch(board), board + tuning) == pytest.approx(
        20 * 1056 / 10.8)
    # A record of its label: that speed alone.
    labelled = board + [dict(board[0], label='jlml_lambda0', train_seconds=7200.0,
                                 train_images_per_s=8.0)]  # 1920 per epoch too
    assert leaderboard._training_seconds(
        run, 20, leaderboard._images_per_epoch(labelled), labelled) == pytest.approx(
        20 * (1920 * 2 + 192) / 3 / 8.0)
    # No record of its model, or none on the board to count its images: no estimate.
    assert leaderboard._training_seconds(dataclasses.replace(run, label='x', model='x'), 20,
                                         leaderboard._images_per_epoch(board), board) is None
    assert leaderboard._training_seconds(
        run, 20, leaderboard._images_per_epoch([]), tuning) is None


def test_only_and_splits_select_runs(tmp_path, data_root, capsys):
    code, out, _ = _run(['--config', SYNTHETIC, '--root', data_root, '--output', str(tmp_path),
                         '--only', 'jlml,osnet_x0_25', '--splits', '1', '--dry-run'], capsys)
    assert code == 0 and '2 runs, 0 done, 2 to go' in out
    assert 'would run jlml/split1' in out and 'would run osnet_x0_25/split1' in out
    code, _, err = _run(['--config', SYNTHETIC, '--root', data_root, '--output', str(tmp_path),
                         '--only', 'jlml_global', '--splits', '1'], capsys)
    assert code == 2 and '--splits 1 matches no planned run' in err


def test_runs_claimed_by_another_runner_are_skipped(tmp_path, data_root, capsys):
    claim = os.path.join(str(tmp_path), 'runs', 'jlml', 'split0', '.claim')
    with exclusive_lock(claim) as held:
        assert held
        code, out, _ = _run(['--config', SYNTHETIC, '--root', data_root, '--output',
                             str(tmp_path), '--only', 'jlml', '--splits', '0'], capsys)
    assert code == 0 and 'jlml/split0: skipped, another runner is training it' in out
    assert not os.path.exists(tmp_path / 'results.jsonl')


def test_a_lock_is_exclusive_until_released(tmp_path):
    path = str(tmp_path / 'lock')
    with exclusive_lock(path) as first:
        with exclusive_lock(path, wait=False) as second:
            assert first and not second
    with exclusive_lock(path, wait=False) as again:
        assert again


def test_an_atomic_write_leaves_the_permissions_a_plain_write_would(tmp_path):
    atomic_write_text(str(tmp_path / 'atomic'), 'x')
    (tmp_path / 'plain').write_text('x')
    assert os.stat(tmp_path / 'atomic').st_mode == os.stat(tmp_path / 'plain').st_mode


def test_tables_follow_the_config_whichever_subset_ran(board, data_root, tmp_path, capsys):
    shutil.copy(os.path.join(board, 'results.jsonl'), tmp_path)
    code, out, _ = _run(['--config', SYNTHETIC, '--root', data_root, '--output', str(tmp_path),
                         '--only', 'jlml_lambda0'], capsys)
    assert code == 0 and '1 runs, 1 done, 0 to go' in out
    summary = json.load(open(tmp_path / 'summary.json'))
    assert [row['label'] for row in summary] == ['jlml', 'osnet_x0_25', 'jlml_global', 'jlml_lambda0']


def _config(tmp_path, **changes):
    spec = yaml.safe_load(open(SYNTHETIC))
    for key, value in changes.items():
        spec[key] = value
    path = tmp_path / 'board.yaml'
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_an_ablation_may_state_several_claims():
    spec = yaml.safe_load(open(SYNTHETIC))
    spec['ablations']['models'] = [
        {'name': 'jlml', 'label': 'jlml_ridge', 'claim': 'structured sparsity adds to ridge'},
        {'name': 'jlml', 'label': 'jlml_lambda0', 'claim': 'the regularisers help',
         'claims': [{'claim': 'regularising helps', 'against': 'jlml_ridge'}]}]
    assert leaderboard_spec.ablation_claims(spec) == ('jlml', [
        ('jlml', 'jlml_ridge', 'structured sparsity adds to ridge'),
        ('jlml', 'jlml_lambda0', 'the regularisers help'),
        ('jlml_ridge', 'jlml_lambda0', 'regularising helps')])


@pytest.mark.parametrize('changes,message', [
    (dict(models=['jlml', 'resnet5O']), "resnet5O: unknown model 'resnet5O'; choose from"),
    (dict(models=[{'name': 'osnet_x0_25', 'overrides': {'train': {'lr': 0.1}}}]),
     "overrides ['train.lr']: only jlml.* keys may differ between models"),
    (dict(splits=[25], protocol={'data': {'sources': ['cuhk01_seeded'],
                                             'targets': ['cuhk01_seeded']}}),
     'cuhk01_seeded split_id 25 is out of range: use 0-19'),
    (dict(protocol={'data': {'sources': ['cuhk01_seeded'], 'targets': ['cuhk01_seeded']}}),
     "dataset 'cuhk01_seeded' not found: looked in"),
    (dict(protocol={'data': {'sources': ['cuhk0l'], 'targets': ['cuhk0l']}}),
     "unknown dataset 'cuhk0l'"),
    (dict(colour='red'), "unknown leaderboard key(s) ['colour']"),
    (dict(ablations={'refrence': 'jlml'}), "unknown ablations key(s) ['refrence']"),
    (dict(ablations={'reference': 'jlmI', 'models': [{'name': 'jlml_global', 'claim': 'x'}]}),
     "jlml_global: its claim must be measured against a planned model (ablations.reference "
     "or the claim's against), one of ['jlml', 'osnet_x0_25']; got 'jlmI'"),
    (dict(ablations={'reference': 'jlml', 'models': [
        {'name': 'jlml_global', 'claims': ['joint features beat global-only']}]}),
     "jlml_global: each of its claims is a {claim, against} mapping with a claim text; "
     "got 'joint features beat global-only'"),
    (dict(views=['halves_l2norm']), "views maps each view a run scores beside its test feature "
     "(e.g. l2norm, halves_l2norm) to what it reads; got ['halves_l2norm']"),
])
def test_bad_configs_fail_before_any_training(tmp_path, data_root, capsys, changes, message):
    output = tmp_path / 'out'
    code, _, err = _run(['--config', _config(tmp_path, **changes), '--root', str(tmp_path),
                         '--output', str(output)], capsys)
    assert code == 2 and message in err and err.count('\n') == 1
    assert not (output / 'runs').exists()


def test_unwritable_results_folder(tmp_path, data_root, capsys):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    code, _, err = _run(['--config', SYNTHETIC, '--root', data_root,
                         '--output', str(blocker / 'results')], capsys)
    assert code == 2 and 'cannot write to the results folder' in err


def test_a_record_of_another_trained_config_is_rerun_and_superseded(tmp_path, board, data_root,
                                                                     capsys):
    # λ_l changed for jlml since the board ran: its records are stale, the others stand.
    config = _config(tmp_path, models=[
        {'name': 'jlml', 'overrides': {'jlml': {'reg_local': {'weight': 0.5}}}}, 'osnet_x0_25'])
    output = tmp_path / 'out'
    output.mkdir()
    shutil.copy(os.path.join(board, 'results.jsonl'), output)
    shutil.copytree(os.path.join(board, 'runs', 'jlml', 'split0'), output / 'runs' / 'jlml' / 'split0')
    args = ['--config', config, '--root', data_root, '--output', str(output)]
    code, out, _ = _run(args + ['--dry-run'], capsys)
    assert code == 0 and '6 runs, 4 done, 2 to go' in out
    assert 'jlml/split0: its record trained another config (jlml.reg_local.weight' in out
    # The old run's checkpoint is not resumed under the new config...
    code, _, err = _run(args + ['--only', 'jlml', '--splits', '0'], capsys)
    assert code == 2 and 'cannot resume in' in err and 'jlml.reg_local.weight' in err
    # ...a fresh run replaces the record, and the old one is kept aside.
    shutil.rmtree(output / 'runs')
    code, out, err = _run(args + ['--only', 'jlml', '--splits', '0'], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in open(output / 'results.jsonl')]
    jlml0 = [r for r in records if (r['label'], r['split_id']) == ('jlml', 0)]
    assert len(records) == 6 and len(jlml0) == 1
    assert jlml0[0]['config']['jlml.reg_local.weight'] == 0.5
    superseded = [json.loads(line) for line in open(output / 'superseded.jsonl')]
    assert [(r['label'], r['split_id']) for r in superseded] == [('jlml', 0)]
    assert superseded[0]['config']['jlml.reg_local.weight'] != 0.5


def test_results_of_another_protocol_are_refused(tmp_path, board, data_root, capsys):
    spec = yaml.safe_load(open(SYNTHETIC))
    spec['protocol']['train']['lr'] = 0.01
    path = tmp_path / 'changed.yaml'
    path.write_text(yaml.safe_dump(spec))
    code, _, err = _run(['--config', str(path), '--root', data_root, '--output', board], capsys)
    assert code == 2 and 'holds results of another protocol' in err


def test_a_variant_board_states_only_what_differs(tmp_path, capsys):
    variant = tmp_path / 'variant.yaml'
    variant.write_text(yaml.safe_dump({
        '_BASE_': SYNTHETIC, 'output': str(tmp_path / 'long'), 'splits': [0],
        'protocol': {'train': {'max_epoch': 2}}, 'ablations': {}}))
    spec = leaderboard_spec.load_leaderboard(str(variant))
    expected = yaml.safe_load(open(SYNTHETIC))['protocol']
    expected['train']['max_epoch'] = 2
    assert spec['protocol'] == expected and spec['name'] == 'synthetic'
    assert [run.key for run in leaderboard_spec.plan_runs(spec)] == ['jlml/split0', 'osnet_x0_25/split0']
    variant.write_text(yaml.safe_dump({'_BASE_': SYNTHETIC, 'colour': 'red'}))
    code, _, err = _run(['--config', str(variant), '--dry-run'], capsys)
    assert code == 2 and f"unknown leaderboard key(s) ['colour'] in {variant}" in err


def _tuning_spec(tmp_path, grid):
    spec = yaml.safe_load(open(SYNTHETIC))
    spec['tune'] = dict(dataset='synthreid_tiny', split=1, output=str(tmp_path / 'tune'),
                        grid={'train': {'lr': grid}}, rule='rank1 + mAP')
    return spec


def test_tuning_choices_follow_the_rule(tmp_path):
    spec = _tuning_spec(tmp_path, [0.001, 0.01, 0.1])
    tune = str(tmp_path / 'tune')
    for label, rank1, mAP in [('jlml@train.lr=0.001', 0.5, 0.4), ('jlml@train.lr=0.01', 0.6, 0.3),
                              ('osnet_x0_25@train.lr=0.001', 0.2, 0.2),
                              ('osnet_x0_25@train.lr=0.01', 0.3, 0.2)]:
        report.append_record(tune, dict(label=label, split_id=1, rank1=rank1, mAP=mAP))
    assert leaderboard_spec.tuning_choices(spec) == {}  # no model has its whole grid yet
    report.append_record(tune, dict(label='jlml@train.lr=0.1', split_id=1, rank1=0.1, mAP=0.1))
    report.append_diverged(tune, dict(label='osnet_x0_25@train.lr=0.1', split_id=1, seed=1,
                                      error='the loss became nan'))
    # jlml: 0.9 at 0.001 and at 0.01, a tie that goes to the earlier point; osnet: 0.5 wins.
    assert leaderboard_spec.tuning_choices(spec) == {'jlml': {'train.lr': 0.001},
                                                'osnet_x0_25': {'train.lr': 0.01}}
    tuning = leaderboard_spec.tuning_spec(spec)
    assert leaderboard_spec.tuning_grid(tuning, tune)['osnet_x0_25'] == (
        [({'train.lr': 0.001}, 0.4), ({'train.lr': 0.01}, 0.5), ({'train.lr': 0.1}, float('-inf'))],
        {'train.lr': 0.01})
    table = leaderboard._grid_table(tuning, tune)
    assert '| model | train.lr=0.001 | train.lr=0.01 | train.lr=0.1 | chosen |\n' in table
    assert '| jlml | **90.0** | 90.0 | 20.0 | train.lr=0.001 |\n' in table
    assert '| osnet_x0_25 | 40.0 | **50.0** | diverged | train.lr=0.01 |\n' in table
    # The board's header says where a choice lies on an edge of its grid (0.01 is inside).
    header = leaderboard._header(spec, dict(device='cpu', torch='2', torchreid='1'))
    assert "Chosen: jlml train.lr=0.001 (the grid's lowest); osnet_x0_25 train.lr=0.01.\n" in header


def test_report_only_rewrites_the_tuning_report_too(board, tmp_path, capsys):
    spec = _tuning_spec(tmp_path, [0.001])
    spec['output'] = board
    for record in report.load_records(board):  # the board's split-0 runs as tuning runs
        if record['label'] in ('jlml', 'osnet_x0_25') and record['split_id'] == 0:
            report.append_record(spec['tune']['output'],
                                 dict(record, label=record['label'] + '@train.lr=0.001'))
    config = tmp_path / 'tuned.yaml'
    config.write_text(yaml.safe_dump(spec))
    code, out, err = _run(['--config', str(config), '--report-only'], capsys)
    assert code == 0, err
    assert f"reports rewritten in {tmp_path / 'tune'}" in out
    table = open(tmp_path / 'tune' / 'leaderboard.md').read()
    assert '\n| jlml@train.lr=0.001 | ' in table and '\n| osnet_x0_25@train.lr=0.001 | ' in table


def test_copy_run_moves_a_finished_run_in_and_refuses_another_config(board, tmp_path, capsys):
    source = tmp_path / 'source.yaml'
    source.write_text(yaml.safe_dump(dict(yaml.safe_load(open(SYNTHETIC)), output=board)))
    spec = dict(yaml.safe_load(open(SYNTHETIC)), name='copy', output=str(tmp_path / 'copy'),
                ablations={}, models=[{'name': 'jlml', 'label': 'jlml_again'},
                                      {'name': 'jlml', 'label': 'jlml_lambda0',
                                       'overrides': {'jlml': {'reg_global': {'weight': 0.0}}}}])
    config = tmp_path / 'copy.yaml'
    config.write_text(yaml.safe_dump(spec))
    code, out, err = _run(['--config', str(config), '--copy-run', str(source), 'jlml',
                           'jlml_again'], capsys)
    assert code == 0, err
    copied = report.load_records(str(tmp_path / 'copy'))
    originals = {r['split_id']: r for r in report.load_records(board) if r['label'] == 'jlml'}
    assert sorted(r['split_id'] for r in copied) == [0, 1]  # every split the board plans
    for record in copied:
        assert record['label'] == 'jlml_again' and record['reused_from'] == f'{board} (jlml)'
        assert record['rank1'] == originals[record['split_id']]['rank1']
    assert [q['label'] for q in report.load_queries(str(tmp_path / 'copy'))] == ['jlml_again'] * 2
    assert '| jlml_again |' in open(tmp_path / 'copy' / 'leaderboard.md').read()
    # jlml trained λ_g = 0.01, not the 0 that jlml_lambda0 names: refused, nothing written.
    code, _, err = _run(['--config', str(config), '--copy-run', str(source), 'jlml',
                         'jlml_lambda0'], capsys)
    assert code == 2 and 'jlml trained another config than jlml_lambda0: jlml.reg_global.weight' in err
    assert len(report.load_records(str(tmp_path / 'copy'))) == 2
    code, _, err = _run(['--config', str(config), '--copy-run', str(source), 'jlml', 'nobody'],
                        capsys)
    assert code == 2 and "plans no run labelled 'nobody'" in err


def test_report_only_without_records_says_so(tmp_path, capsys):
    code, _, err = _run(['--config', SYNTHETIC, '--output', str(tmp_path), '--report-only'], capsys)
    assert code == 2 and f'no records yet in {tmp_path}: nothing to report' in err
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_tuning_then_a_board_of_two_seeds_with_the_choice(tmp_path, data_root, capsys):
    spec = _tuning_spec(tmp_path, [0.001, 0.003])
    spec.update(models=['jlml_local'], ablations={}, splits=[0], seeds=[1, 2],
                output=str(tmp_path / 'board'))
    spec['tune']['note'] = 'JLML also had 5 runs for its λ.'
    config = tmp_path / 'tuned.yaml'
    config.write_text(yaml.safe_dump(spec))
    code, out, err = _run(['--config', str(config), '--root', data_root], capsys)
    assert code == 0, err
    tuned = {r['label']: r for r in report.load_records(str(tmp_path / 'tune'))}
    assert sorted(tuned) == ['jlml_local@train.lr=0.001', 'jlml_local@train.lr=0.003']
    assert {r['dataset'] for r in tuned.values()} == {'synthreid_tiny'}
    assert {r['split_id'] for r in tuned.values()} == {1}
    best = max(tuned.values(), key=lambda r: r['rank1'] + r['mAP'])
    board = report.load_records(str(tmp_path / 'board'))
    assert sorted((r['label'], r['split_id'], r['seed']) for r in board) == [
        ('jlml_local', 0, 1), ('jlml_local', 0, 2)]
    assert {r['config']['train.lr'] for r in board} == {best['config']['train.lr']}
    assert {r['config']['train.seed'] for r in board} == {1, 2}
    assert os.path.isdir(tmp_path / 'board' / 'runs' / 'jlml_local' / 'split0-seed2')
    table = open(tmp_path / 'board' / 'leaderboard.md').read()
    edge = {0.001: 'lowest', 0.003: 'highest'}[best['config']['train.lr']]  # two points: both edges
    assert (f"Chosen: jlml_local train.lr={best['config']['train.lr']} (the grid's {edge})."
            "\nJLML also had 5 runs") in table
    assert '| jlml_local | 2 | ' in table  # pooled over its two seeds, with intervals
    # Run again: everything is done, nothing trains.
    code, out, _ = _run(['--config', str(config), '--root', data_root], capsys)
    assert code == 0 and '2 runs, 2 done, 0 to go' in out and 'Start training' not in out


def test_versus_pairs_each_model_with_its_run_on_another_board(tmp_path, capsys):
    configs = {}
    for name, shift in (('fast', 0.1), ('slow', 0.0)):
        spec = dict(yaml.safe_load(open(SYNTHETIC)), name=name, output=str(tmp_path / name),
                    splits=[0], ablations={})
        configs[name] = tmp_path / f'{name}.yaml'
        configs[name].write_text(yaml.safe_dump(spec))
        ap = [0.2 + shift, 0.6 + shift, 0.5, 0.9]  # fast leads by 0.1 AP on two queries of four
        report.append_record(spec['output'], dict(label='jlml', split_id=0, rank1=0.5, mAP=sum(ap) / 4),
                             dict(index=[0, 1, 2, 3], pid=[0, 0, 1, 1], first_rank=[2, 1, 1, 3], ap=ap))
    code, out, _ = _run(['--config', str(configs['fast']), '--versus', str(configs['slow'])], capsys)
    assert code == 0 and '| jlml | jlml@fast − jlml@slow | +0.0 [+0.0, +0.0] not shown | +5.0 [+0.0, +10.0] ' in out
    rows = json.load(open(tmp_path / 'fast' / 'versus_slow.json'))
    assert [row['claim'] for row in rows] == ['jlml']  # osnet_x0_25 ran on neither board
    assert rows[0]['mAP']['mean'] == pytest.approx(5.0) and rows[0]['rank1']['mean'] == 0
    assert rows[0]['rank1+mAP']['mean'] == pytest.approx(5.0)
    assert rows[0]['mAP']['low'] == pytest.approx(0.0) and rows[0]['mAP']['high'] == pytest.approx(10.0)


def test_a_selection_path_from_records(tmp_path, capsys):
    from jlml_plugin.cli import sparsity as sparsity_cli
    folder = str(tmp_path)
    # Two identities, two queries each. l1 is the best point; it finds both identities'
    # first query at rank 1 where l0 finds one, so each resample of identities gives
    # l1 − l0 = +50 R1 exactly: a degenerate interval [+50, +50]. l2 has no per-query record.
    first_ranks = {'l0': [1, 2, 2, 2], 'l1': [1, 1, 1, 2]}
    for label, lam, zeros, off, r1 in [('l0', 0.0, 0, 3, 0.25), ('l1', 0.01, 10, 40, 0.75),
                                       ('l2', 0.1, 900, 1000, 0.2)]:
        per_query = dict(index=[0, 1, 2, 3], pid=[0, 0, 1, 1], first_rank=first_ranks[label],
                         ap=[1 / r for r in first_ranks[label]]) if label in first_ranks else None
        report.append_record(folder, dict(
            label=label, split_id=0, rank1=r1, mAP=r1, config={'jlml.reg_global.weight': lam},
            selection={'reg_global': dict(units=1024, exact_zeros=zeros, off=off)}), per_query)
    report.append_record(folder, dict(label='osnet', split_id=0, rank1=0.5, mAP=0.5,
                                      config={}, selection=None))
    assert sparsity_cli.main(['--board', folder, '--key', 'jlml.reg_global.weight']) == 0
    out = capsys.readouterr().out
    assert '0.01     150.0          10 / 40           best' in out
    assert '+50.0 [+50.0, +50.0], +25.0 [+25.0, +25.0]' in out
    saved = json.load(open(tmp_path / 'path_jlml.reg_global.weight.json'))
    assert [p['value'] for p in saved['points']] == [0.0, 0.01, 0.1]  # osnet has no key
    assert saved['points'][2]['terms']['reg_global'] == dict(units=1024, exact_zeros=900, off=1000)
    assert saved['best'] == 'l1'
    lead = saved['points'][0]['best_minus_this']
    assert lead['rank1'] == dict(mean=50.0, low=50.0, high=50.0, verdict='holds')
    assert [saved['points'][i]['best_minus_this'] for i in (1, 2)] == [None, None]
    assert os.path.getsize(tmp_path / 'path_jlml.reg_global.weight.png') > 0
    assert sparsity_cli.main(['--board', folder, '--key', 'jlml.reg_local.weight']) == 2
    assert 'a path needs 2 or more' in capsys.readouterr().err


def test_report_only_prints_every_comparison_with_its_interval(board, capsys):
    code, out, _ = _run(['--config', SYNTHETIC, '--output', board, '--report-only'], capsys)
    assert code == 0 and out.startswith('### rankings: the first minus the second')
    for row in ('| jlml beats osnet_x0_25 | jlml − osnet_x0_25 | ',
                '| joint features beat global-only | jlml − jlml_global | '):
        line = next(line for line in out.splitlines() if line.startswith(row))
        assert line.count('[') == 2 and any(v in line for v in ('holds', 'fails', 'not shown'))
