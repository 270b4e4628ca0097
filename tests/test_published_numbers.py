"""The numbers the repository publishes are the ones its committed records make.

Each committed leaderboard report is rebuilt from its ``results.jsonl`` and must come out
byte for byte; every table line BENCHMARKS.md copies from a board, inside a
``<!-- leaderboard NAME -->`` block, must stand in that board's report, and no model the
board has run may be missing from the block's per-split rows. A record appended without its
report, a hand-edited figure, or a landed run left out of BENCHMARKS.md fails here.
A tuning folder (a config's ``tune.output``) is rebuilt the same way from its config.
"""
import glob
import os
import re
import shutil

import pytest

from jlml_plugin.cli import leaderboard as leaderboard_cli
from jlml_plugin.tools import leaderboard, leaderboard_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'results', 'leaderboard')
REPORT_FILES = ('leaderboard.md', 'summary.json', 'results.csv', 'comparisons.json')
# The committed boards: each folder holds the records of the config of the same name.
BOARDS = sorted(name for name in os.listdir(RESULTS)
                if os.path.isfile(os.path.join(RESULTS, name, 'results.jsonl')))


def _configs():
    """Each folder of results/leaderboard/ a committed config writes: its name -> (config,
    whether it holds the config's tuning runs)."""
    folders = {}
    for config in sorted(glob.glob(os.path.join(REPO, 'configs', 'leaderboard', '*.yaml'))):
        spec = leaderboard_spec.load_leaderboard(config)
        for output, tuning in ((spec['output'], False), ((spec.get('tune') or {}).get('output'), True)):
            if output and os.path.dirname(os.path.normpath(output)) == 'results/leaderboard':
                folders[os.path.basename(output)] = (config, tuning)
    return folders


CONFIGS = _configs()


def _read(path):
    with open(path, encoding='utf-8') as f:
        return f.read()


def test_every_committed_board_has_its_config():
    for name in BOARDS:
        assert name in CONFIGS, name


@pytest.mark.parametrize('name', BOARDS)
def test_a_committed_report_is_what_its_records_make(name, tmp_path):
    for records in ('results.jsonl', 'queries.jsonl'):
        if os.path.isfile(os.path.join(RESULTS, name, records)):
            shutil.copy(os.path.join(RESULTS, name, records), tmp_path)
    config, tuning = CONFIGS[name]
    if tuning:
        leaderboard.rewrite_reports(config, str(tmp_path), tuning=True)
    else:
        assert leaderboard_cli.main(['--config', config, '--output', str(tmp_path), '--report-only']) == 0
    for filename in REPORT_FILES:
        committed = os.path.join(RESULTS, name, filename)
        assert os.path.isfile(tmp_path / filename) == os.path.isfile(committed), filename
        if os.path.isfile(committed):
            assert _read(tmp_path / filename) == _read(committed), filename


def _benchmarks_board_blocks():
    """Each ``<!-- leaderboard NAME -->`` ... ``<!-- /leaderboard -->`` block of BENCHMARKS.md:
    (board name, its table lines)."""
    blocks = re.findall(r'<!-- leaderboard (\S+) -->\n(.*?)<!-- /leaderboard -->',
                        _read(os.path.join(REPO, 'BENCHMARKS.md')), re.S)
    return [(board, [line for line in body.splitlines() if line.startswith('|')])
            for board, body in blocks]


BENCHMARKS_BLOCKS = _benchmarks_board_blocks()


def _data_rows(table):
    return [line for line in table if not line.startswith(('| Model |', '| claim |', '|---'))]


def test_every_leaderboard_marker_opens_a_checked_block():
    # A misspelt or unclosed marker would drop its block from the check without a word.
    text = _read(os.path.join(REPO, 'BENCHMARKS.md'))
    assert len(BENCHMARKS_BLOCKS) == text.count('<!-- leaderboard') == text.count('<!-- /leaderboard')


@pytest.mark.parametrize('board, table', BENCHMARKS_BLOCKS,
                         ids=[f'{board}-{i}' for i, (board, _) in enumerate(BENCHMARKS_BLOCKS)])
def test_every_table_line_of_a_benchmarks_block_stands_in_its_board_report(board, table):
    # Headers and separators included: no line of a block goes unchecked.
    assert board in BOARDS
    assert _data_rows(table)
    report_lines = set(_read(os.path.join(RESULTS, board, 'leaderboard.md')).splitlines())
    assert [line for line in table if line not in report_lines] == []


def test_the_board_block_holds_the_whole_board():
    # The models, the per-split table, the ablations and the claims: at least 20 rows.
    assert max(len(_data_rows(table)) for _, table in BENCHMARKS_BLOCKS) >= 20


def _per_split_rows(board):
    """The data rows of a board report's per-split tables: one per model it has run."""
    rows, in_per_split = [], False
    for line in _read(os.path.join(RESULTS, board, 'leaderboard.md')).splitlines():
        if line.startswith('#'):
            in_per_split = line.endswith('per split: R1 (mAP)')
        elif in_per_split and line.startswith('|'):
            rows.append(line)
    return _data_rows(rows)


@pytest.mark.parametrize('board', sorted({board for board, _ in BENCHMARKS_BLOCKS}))
def test_a_copied_board_leaves_out_no_model_it_has_run(board):
    # A block may quote a subset of a report's tables, but a model the board has run, or a
    # newly landed run of one, must not be missing from its per-split rows.
    copied = {line for block_board, table in BENCHMARKS_BLOCKS if block_board == board for line in table}
    rows = _per_split_rows(board)
    assert rows
    assert [row for row in rows if row not in copied] == []
