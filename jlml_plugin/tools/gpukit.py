"""The GPU kit: every GPU check in one command, for the few minutes a GPU is lent.

    jlml-bench gpu --output DIR --data-root DIR_HOLDING_CUHK01   # on the GPU: about 9 minutes
    jlml-bench gpu --smoke --output DIR                          # every step at toy size (CI)

``gpu`` runs three steps in order. Each prints when it finishes and rewrites
``DIR/gpu_kit.json`` and ``DIR/gpu_kit.md``, so a run cut off returns what it has:

1. **speed**: JLML, resnet50, osnet_x1_0 and hacnn in one process, with the engine's own
   training step (:func:`jlml_plugin.tools.timing.speed`): 256x128 at batch 64 in fp32, bf16
   autocast and fp16 with GradScaler, and 160x64 at batch 32 in fp32; images/s, peak
   memory, ratios to resnet50. torchreid's HA-CNN takes 160x64 only, so it is left out
   of the 256x128 rows, which say so.
2. **ddp**: ``torchrun --nproc_per_node=1`` (NCCL on a GPU, gloo on the CPU) runs
   ``jlml-train`` for 2 epochs on synthreid, then again with ``train.deterministic True``.
3. **board**: ``jlml-leaderboard`` with ``configs/leaderboard/cuhk01_gpu.yaml`` (the
   board's recipe, 120 epochs, split 0): jlml, hacnn, osnet_x1_0, one after another
   while the time budget lasts. A run that cannot finish in the time left is cut and
   said to be.

``--smoke`` runs the same code on the CPU at toy sizes (synthreid_tiny, a batch of 2,
one epoch) in well under two minutes; CI runs it so the kit cannot rot.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from .._files import atomic_write_text
from ..checkpoint import latest_checkpoint
from ..config import shipped_config
from ..errors import ConfigError, DataError, one_line
from ..runner import environment
from .report import load_records
from .timing import speed

__all__ = ['KitPlan', 'GPU_PLAN', 'SMOKE_PLAN', 'run_kit']

#: torchreid's models that accept only one input size (HA-CNN asserts 160x64).
FIXED_INPUT = {'hacnn': (160, 64)}


@dataclass(frozen=True)
class SpeedSetting:
    height: int
    width: int
    batch: int
    amp: str

    @property
    def key(self) -> str:
        return f'{self.height}x{self.width}_b{self.batch}_{self.amp}'


@dataclass(frozen=True)
class KitPlan:
    """The sizes of each step: :data:`GPU_PLAN` on a GPU, :data:`SMOKE_PLAN` in CI."""
    device: str
    speed_models: Tuple[str, ...]
    speed_settings: Tuple[SpeedSetting, ...]
    speed_repeats: Tuple[int, int, int]  # warm-up, timed repeats, steps per repeat
    ddp_opts: Tuple[str, ...]
    board_config: str
    board_models: Tuple[str, ...]
    #: Seconds for the whole kit; the board stops at this deadline (0: none).
    budget_seconds: int


_MODELS = ('jlml', 'resnet50', 'osnet_x1_0', 'hacnn')
_BOARD = ('jlml', 'hacnn', 'osnet_x1_0')

GPU_PLAN = KitPlan(
    device='cuda', speed_models=_MODELS,
    speed_settings=(SpeedSetting(256, 128, 64, 'off'), SpeedSetting(256, 128, 64, 'bf16'),
                    SpeedSetting(256, 128, 64, 'fp16'), SpeedSetting(160, 64, 32, 'off')),
    speed_repeats=(3, 5, 5),
    ddp_opts=('data.sources', "['synthreid']", 'data.targets', "['synthreid']",
              'data.height', '96', 'data.width', '48', 'data.workers', '8',
              'train.max_epoch', '2', 'train.batch_size', '64', 'use_gpu', 'True'),
    board_config='cuhk01_gpu.yaml', board_models=_BOARD,
    budget_seconds=540)

SMOKE_PLAN = KitPlan(
    device='cpu', speed_models=_MODELS,
    speed_settings=(SpeedSetting(160, 64, 2, 'off'), SpeedSetting(160, 64, 2, 'bf16')),
    speed_repeats=(1, 1, 1),
    ddp_opts=('data.sources', "['synthreid_tiny']", 'data.targets', "['synthreid_tiny']",
              'data.height', '64', 'data.width', '32', 'data.workers', '0',
              'train.max_epoch', '2', 'train.batch_size', '8', 'use_gpu', 'False',
              'jlml.stem_width', '8', 'jlml.global_widths', '[4, 8, 8, 16]',
              'jlml.local_widths', '[4, 4, 8, 8]'),
    board_config='gpu_smoke.yaml', board_models=_BOARD,
    budget_seconds=0)  # no deadline: on a busy CPU a step is slow, not wrong


@dataclass
class KitReport:
    """What the kit has measured so far; written after every step."""
    plan: Dict[str, Any]
    env: Dict[str, Any]
    started: str
    speed: Dict[str, Any] = field(default_factory=dict)
    ddp: Dict[str, Any] = field(default_factory=dict)
    board: Dict[str, Any] = field(default_factory=dict)

    def write(self, output: str) -> None:
        os.makedirs(output, exist_ok=True)
        atomic_write_text(os.path.join(output, 'gpu_kit.json'), json.dumps(asdict(self), indent=1))
        atomic_write_text(os.path.join(output, 'gpu_kit.md'), self.markdown())

    def markdown(self) -> str:
        lines = [f'# GPU kit ({self.env.get("device", "?")}, started {self.started})', '']
        for key, rows in self.speed.items():
            lines += [f'## Speed {key}', '']
            if 'error' in rows:
                lines += [f'Not measured: {rows["error"]}', '']
                continue
            lines += ['| model | params (M) | train img/s | × resnet50 | infer img/s | '
                      '× resnet50 | peak MiB |', '|---|---|---|---|---|---|---|']
            for name, row in rows['results'].items():
                peak = row['peak_memory_mb']
                lines.append(
                    f'| {name} | {row["params"] / 1e6:.2f} | {row["train_images_per_s"]:.0f} | '
                    f'{row.get("train_ratio", float("nan")):.2f} | {row["infer_images_per_s"]:.0f} | '
                    f'{row.get("infer_ratio", float("nan")):.2f} | '
                    f'{"-" if peak is None else f"{peak:.0f}"} |')
            lines += [f'| {name} | skipped: {why} | | | | | |'
                      for name, why in rows.get('skipped', {}).items()] + ['']
        if self.ddp:
            lines += ['## DDP (torchrun, 1 process)', '', '| run | exit | seconds | Rank-1 |',
                      '|---|---|---|---|']
            lines += [f'| {name} | {r["returncode"]} | {r["seconds"]:.0f} | '
                      f'{_pct(r.get("rank1"))} |' for name, r in self.ddp.items()] + ['']
        if self.board:
            lines += ['## Board (split 0)', '', '| model | status | R1 | mAP | mINP | minutes |',
                      '|---|---|---|---|---|---|']
            lines += [f'| {name} | {r["status"]} | {_pct(r.get("rank1"))} | {_pct(r.get("mAP"))} | '
                      f'{_pct(r.get("mINP"))} | {r.get("wall_seconds", 0) / 60:.1f} |'
                      for name, r in self.board.items()] + ['']
        return '\n'.join(lines)


def _pct(value: Optional[float]) -> str:
    return '-' if value is None else f'{100 * value:.1f}'


# ---------------------------------------------------------------------------- steps


def speed_step(plan: KitPlan, report: KitReport) -> None:
    warmup, repeats, iters = plan.speed_repeats
    for setting in plan.speed_settings:
        models = [m for m in plan.speed_models
                  if FIXED_INPUT.get(m, (setting.height, setting.width)) == (setting.height, setting.width)]
        skipped = {m: 'takes {}x{} only'.format(*FIXED_INPUT[m])
                   for m in plan.speed_models if m not in models}
        try:
            results = speed(models, setting.height, setting.width, setting.batch, warmup,
                            repeats, iters, device=plan.device, amp=setting.amp)
            report.speed[setting.key] = dict(setting=asdict(setting), results=results,
                                             skipped=skipped)
            done = ', '.join(f'{m} {r["train_images_per_s"]:.0f} img/s' for m, r in results.items())
        except Exception as exc:  # one setting failing (an fp16 overflow, OOM) ends no step
            report.speed[setting.key] = dict(setting=asdict(setting), error=one_line(exc))
            done = f'error: {one_line(exc)}'
        print(f'[gpu kit] speed {setting.key}: {done}', flush=True)


def _subprocess(cmd: List[str], timeout: float, log_path: str) -> Tuple[int, float]:
    """Runs ``cmd`` with its output in ``log_path``; returns (exit code, seconds).
    A run past ``timeout`` (``inf``: none) is stopped and reported with exit code 124."""
    start = time.time()
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    with open(log_path, 'w') as log:
        try:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  timeout=None if timeout == float('inf') else max(timeout, 1)
                                  ).returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, time.time() - start


def _tail(path: str, lines: int = 6) -> List[str]:
    with open(path, errors='replace') as f:
        return [line.rstrip() for line in f.readlines()[-lines:]]


def ddp_step(plan: KitPlan, report: KitReport, data_root: str, workdir: str,
             deadline: float) -> None:
    for name, extra in (('ddp', []), ('ddp_deterministic', ['train.deterministic', 'True'])):
        save_dir = os.path.join(workdir, name)
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1',
               '-m', 'jlml_plugin.cli.train', 'data.root', data_root, 'data.save_dir', save_dir,
               'model.name', 'jlml', 'model.pretrained', 'False', 'test.ranks', '[1, 5]',
               *plan.ddp_opts, *extra]
        log = os.path.join(workdir, f'{name}.log')
        code, seconds = _subprocess(cmd, deadline - time.time(), log)
        checkpoint = latest_checkpoint(save_dir) if code == 0 else None
        rank1 = (torch.load(checkpoint, map_location='cpu', weights_only=True)['rank1']
                 if checkpoint else None)
        report.ddp[name] = dict(returncode=code, seconds=seconds, rank1=rank1, log_tail=_tail(log))
        print(f'[gpu kit] {name}: exit {code} in {seconds:.0f} s, Rank-1 {_pct(rank1)}', flush=True)


def board_step(plan: KitPlan, report: KitReport, data_root: str, workdir: str, output: str,
               deadline: float) -> None:
    """One ``jlml-leaderboard`` process for all the board's models, in order, stopped at
    the deadline: each finished run is in its ``results.jsonl``, the run it was on is
    reported as cut, and the ones after it as not run."""
    board_dir = os.path.join(workdir, 'board')
    log = os.path.join(workdir, 'board.log')
    cmd = [sys.executable, '-m', 'jlml_plugin.cli.leaderboard',
           '--config', shipped_config('leaderboard/' + plan.board_config),
           '--root', data_root, '--output', board_dir, '--only', ','.join(plan.board_models)]
    code, seconds = _subprocess(cmd, deadline - time.time(), log)
    records = {r['label']: r for r in load_records(board_dir)}
    cut = False
    for model in plan.board_models:
        row = records.get(model)
        if row:
            report.board[model] = dict(status='done', **{k: row[k] for k in (
                'rank1', 'mAP', 'mINP', 'epochs', 'train_images_per_s', 'wall_seconds')})
        elif cut:
            report.board[model] = dict(status='not run')
        else:  # the run the leaderboard was on when it stopped: its log says why
            status = 'cut: out of time' if code == 124 else f'exit {code}'
            report.board[model] = dict(status=status, log_tail=_tail(log))
            cut = True
        print(f'[gpu kit] board {model}: {report.board[model]["status"]}, '
              f'R1 {_pct(row and row["rank1"])}', flush=True)
    for name in ('results.jsonl', 'leaderboard.md'):
        if os.path.isfile(os.path.join(board_dir, name)):
            shutil.copy(os.path.join(board_dir, name), os.path.join(output, f'board_{name}'))


def run_kit(output: str, smoke: bool = False, data_root: str = '.gpukit/reid-data',
            budget_seconds: Optional[int] = None, steps: Tuple[str, ...] = ('speed', 'ddp', 'board'),
            workdir: Optional[str] = None) -> KitReport:
    """Runs the kit's ``steps`` in order within ``budget_seconds``; see the module docstring."""
    plan = SMOKE_PLAN if smoke else GPU_PLAN
    if plan.device == 'cuda' and not torch.cuda.is_available():
        raise ConfigError('jlml-bench gpu needs a GPU (torch.cuda.is_available() is False); '
                          'use --smoke to run the kit at toy size on the CPU')
    budget = budget_seconds or plan.budget_seconds
    deadline = time.time() + budget if budget else float('inf')
    workdir = workdir or tempfile.mkdtemp(prefix='jlml-gpukit-')
    if smoke:
        data_root = os.path.join(workdir, 'reid-data')  # synthreid_tiny draws itself there
    elif 'board' in steps and not os.path.isdir(os.path.join(data_root, 'cuhk01', 'campus')):
        raise DataError(f'no CUHK01 under {data_root}/cuhk01/campus: pass --data-root, the '
                        f'folder holding cuhk01/')
    report = KitReport(plan=asdict(plan), env=environment(), started=time.strftime('%Y-%m-%d %H:%M:%S'))
    report.write(output)
    if 'speed' in steps:
        speed_step(plan, report)
        report.write(output)
    if 'ddp' in steps:
        ddp_step(plan, report, os.path.join(workdir, 'synthetic'), workdir, deadline)
        report.write(output)
    if 'board' in steps:
        board_step(plan, report, data_root, workdir, output, deadline)
    report.write(output)
    print(f'[gpu kit] wrote {output}/gpu_kit.json and gpu_kit.md', flush=True)
    return report
