"""The GPU kit: its smoke run on the CPU (what CI runs), the packing tool, bad input."""
import importlib.util
import json
import os

import pytest
import torch
from PIL import Image

from jlml_plugin import torchreid
from jlml_plugin.cli import bench
from jlml_plugin.tools import gpukit

# The packing helper is a repository tool (tools/), not part of the installed package.
_spec = importlib.util.spec_from_file_location(
    'gpukit_pack', os.path.join(os.path.dirname(os.path.dirname(__file__)), 'tools', 'gpukit_pack.py'))
PACK = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(PACK)


@pytest.mark.slow
def test_smoke_run_writes_every_section(tmp_path, capsys):
    out = tmp_path / 'kit'
    assert bench.main(['gpu', '--smoke', '--output', str(out)]) == 0
    report = json.loads((out / 'gpu_kit.json').read_text())
    assert set(report['speed']) == {s.key for s in gpukit.SMOKE_PLAN.speed_settings}
    for section in report['speed'].values():
        assert set(section['results']) == set(gpukit.SMOKE_PLAN.speed_models)
        assert all(r['train_images_per_s'] > 0 for r in section['results'].values())
    assert {k: r['returncode'] for k, r in report['ddp'].items()} == {'ddp': 0, 'ddp_deterministic': 0}
    assert all(0 <= r['rank1'] <= 1 for r in report['ddp'].values())
    for model in gpukit.SMOKE_PLAN.board_models:
        assert report['board'][model]['status'] == 'done' and report['board'][model]['epochs'] == 1
    board = [json.loads(line) for line in (out / 'board_results.jsonl').read_text().splitlines()]
    assert sorted(r['label'] for r in board) == sorted(gpukit.SMOKE_PLAN.board_models)
    assert '## Board (split 0)' in (out / 'gpu_kit.md').read_text()
    assert '[gpu kit] board osnet_x1_0: done' in capsys.readouterr().out


def test_models_with_a_fixed_input_are_left_out_of_other_sizes_and_say_so(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(gpukit, 'speed', lambda models, *a, **k: seen.append(models) or {
        m: dict(train_images_per_s=1.0) for m in models})
    plan = gpukit.KitPlan('cpu', ('jlml', 'hacnn'), (gpukit.SpeedSetting(256, 128, 2, 'off'),
                                                     gpukit.SpeedSetting(160, 64, 2, 'off')),
                          (1, 1, 1), (), '', (), 1)
    report = gpukit.KitReport(plan={}, env={}, started='')
    gpukit.speed_step(plan, report)
    assert seen == [['jlml'], ['jlml', 'hacnn']]
    assert report.speed['256x128_b2_off']['skipped'] == {'hacnn': 'takes 160x64 only'}


def test_without_a_gpu_the_full_kit_is_refused_in_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip('a GPU is here')
    assert bench.main(['gpu', '--output', str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert 'needs a GPU' in err and '--smoke' in err and len(err.splitlines()) == 1


def test_unknown_steps_are_refused(tmp_path, capsys):
    assert bench.main(['gpu', '--smoke', '--output', str(tmp_path), '--steps', 'speed,bord']) == 2
    assert "unknown --steps ['bord']" in capsys.readouterr().err


def test_pack_makes_a_jpeg_copy_that_cuhk01_reads(tmp_path):
    campus = tmp_path / 'src' / 'cuhk01' / 'campus'
    campus.mkdir(parents=True)
    pixel = Image.new('RGB', (4, 8), (200, 10, 10))
    for pid in range(1, 972):
        for k in range(1, 5):
            pixel.save(campus / f'{pid:04d}{k:03d}.png')
    sizes = PACK.pack(str(tmp_path / 'src'), str(tmp_path / 'kit'), wheels=False)
    copied = tmp_path / 'kit' / 'reid-data' / 'cuhk01' / 'campus'
    assert len(os.listdir(copied)) == 971 * 4 and os.listdir(copied)[0].endswith('.jpg')
    assert sizes['reid-data'] > 0 and sum(sizes.values()) < PACK.TRAVEL_LIMIT_BYTES
    dataset = torchreid.data.datasets.init_image_dataset(
        'cuhk01_seeded', root=str(tmp_path / 'kit' / 'reid-data'), split_id=0, verbose=False)
    assert len(dataset.train) == 485 * 4 and dataset.train[0][0].endswith('.jpg')


def test_pack_without_the_pngs_names_the_folder(tmp_path, capsys):
    assert PACK.main(['--data-root', str(tmp_path), '--no-wheels',
                      '--output', str(tmp_path / 'kit')]) == 2
    assert 'no CUHK01 PNGs in' in capsys.readouterr().err


def test_the_board_stops_at_the_budget_and_says_which_runs_it_cut(tmp_path):
    out = tmp_path / 'kit'
    assert bench.main(['gpu', '--smoke', '--output', str(out), '--steps', 'board',
                       '--budget', '1']) == 0
    board = json.loads((out / 'gpu_kit.json').read_text())['board']
    assert [board[m]['status'] for m in gpukit.SMOKE_PLAN.board_models] == [
        'cut: out of time', 'not run', 'not run']
    assert json.loads((out / 'gpu_kit.json').read_text())['speed'] == {}
