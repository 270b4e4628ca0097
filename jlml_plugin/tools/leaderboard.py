"""The leaderboard (``jlml-leaderboard``): JLML and torchreid baselines trained under one
identical protocol.

    jlml-leaderboard --config configs/leaderboard/cuhk01.yaml --root <folder holding cuhk01/>

A leaderboard config names one ``protocol`` (a torchreid-style config section: dataset,
input size, transforms, optimizer, lr schedule, epochs, batch, sampler), the ``splits``
and ``seeds`` to run, the ``models`` and optional ``ablations`` (each with its own splits,
and with the ``claim`` it tests against a ``reference`` model). Every run goes through
:func:`jlml_plugin.runner.train`: torchreid's data manager, sampler, engine path and the
exact evaluator. A model entry may override only ``jlml.*`` keys (the ablations' knobs)
and its ``seeds``: the protocol is shared.

An optional ``tune`` section gives every model the same validation budget: each model is
trained at every point of one ``grid`` (e.g. three values of ``train.lr``) on a tuning
split whose identities no board split tests, its settings are chosen by the ``rule``
written in the config, and the board then trains it with them. Ablations train with their
reference's choice. Tuning runs are a leaderboard of their own, in ``tune.output``.

An optional ``views`` section (name: what it reads) states every ranking and claim again
in other readings of the test feature, which every run scores and records beside its own:
``l2norm`` (the whole vector L2-normalised) and JLML's ``halves_l2norm`` (each branch's
half normalised before joining), ``global`` and ``local``.

The whole config is checked, and its runs planned, by :mod:`.leaderboard_spec` before
anything trains. Finished runs are recorded atomically in ``<output>/results.jsonl``
(their per-query outcomes in ``queries.jsonl``) and skipped when the command runs again;
an interrupted run resumes from its last checkpoint. After each run the reports are
rewritten: CSV, JSON, Markdown tables with paired intervals, the CMC and forest plots.
Several runners (e.g. one per core or per GPU) may work on one results folder at once:
each run is claimed with a lock, so they share out the runs, and a board run waits while
another runner tunes its model.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Set, Tuple

import yaml

from . import report
from .._files import atomic_write_text, exclusive_lock
from ..checkpoint import epochs_done
from ..config import config_changes, trained_config
from ..errors import ConfigError, NonFiniteLossError, one_line
from ..progress import Tee
from ..runner import environment, train, validate
from .leaderboard_spec import (Run, ablation_claims, label_order, load_leaderboard,
                               model_entries, plan_runs, point_label, protocol_hash,
                               run_config, tuned_model, tuning_choices, tuning_grid,
                               tuning_spec)
from .sparsity import selection_record

__all__ = ['run_leaderboard', 'versus', 'rewrite_reports', 'copy_run']

#: Seconds between looks at runs another runner holds.
POLL_SECONDS = 60

def _check_writable(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
        atomic_write_text(os.path.join(folder, '.write-test'), 'ok')
        os.remove(os.path.join(folder, '.write-test'))
    except OSError as exc:
        raise ConfigError(f'cannot write to the results folder {folder}: {exc.strerror or exc}') from exc


def _select(runs: List[Run], only: Optional[List[str]], splits: Optional[List[int]],
            tuning: bool = False) -> List[Run]:
    """``--only`` keeps the labels named (a tuning run by its model's label); ``--splits``
    keeps the board splits named (tuning runs have their own split)."""
    if only:
        runs = [r for r in runs if (tuned_model(r.label) if tuning else r.label) in only]
    if splits and not tuning:
        runs = [r for r in runs if r.split_id in splits]
    return runs


def run_leaderboard(config: str, root: str = '', output: str = '', only: Optional[List[str]] = None,
                    dry_run: bool = False, splits: Optional[List[int]] = None
                    ) -> List[Dict[str, Any]]:
    spec = load_leaderboard(config)
    output = output or spec['output']
    root = root or spec.get('root', '')
    boards = _boards(spec, output, root)
    if only and not any(_select(board.runs, only, None, board.tuning) for board in boards):
        raise ConfigError(f'--only {",".join(only)} matches no leaderboard entry')
    for board in boards:
        board.todo = _select(board.runs, only, splits, board.tuning)
    if splits and not boards[-1].todo:
        raise ConfigError(f'--splits {",".join(map(str, splits))} matches no planned run')
    for board in boards:  # validate everything before the first epoch
        board.check()
    choices = tuning_choices(spec)
    for board in boards:
        done, stale = board.finished(choices)
        selected = len(board.todo)
        board.todo = [r for r in board.todo if r.ident not in done]
        print(f'Leaderboard {board.name}: {selected} runs, {selected - len(board.todo)} done, '
              f'{len(board.todo)} to go; results in {board.output}')
        for run in board.todo:
            if run.ident in stale:
                print(f'  {run.key}: its record trained another config '
                      f'({"; ".join(stale[run.ident])}); it is rerun, and the record moves '
                      f'to {report.SUPERSEDED} when the new one lands')
    if dry_run:
        _print_plan(boards, choices)
        return report.summarize(report.load_records(output))
    env = environment()
    for board in boards:
        atomic_write_text(os.path.join(board.output, 'environment.json'), json.dumps(env, indent=1))
    _work(boards, spec, env)
    return boards[-1].write_report(env)


def _boards(spec: Dict[str, Any], output: str, root: str) -> List['Board']:
    """The board of ``spec`` (results in ``output``), after its tuning runs' board where it
    has a ``tune`` section: the board's runs need their choices."""
    boards = [Board(spec, output, root)]
    tuning = tuning_spec(spec)
    if tuning:
        boards.insert(0, Board(tuning, tuning['output'], root, tuning=True))
    return boards


class Board:
    """One leaderboard's runs, configs and results folder (the board, or its tuning runs)."""

    def __init__(self, spec: Dict[str, Any], output: str, root: str, tuning: bool = False):
        self.spec, self.output, self.root, self.tuning = spec, output, root, tuning
        self.name = spec.get('name', output)
        self.runs = plan_runs(spec)
        self.order = label_order(self.runs)
        self.fingerprint = protocol_hash(spec)
        self.todo: List[Run] = []

    def config(self, run: Run, choices: Optional[Dict[str, Dict[str, Any]]] = None):
        return run_config(self.spec, run, self.root, self.output,
                           (choices or {}).get(run.tuned_as))

    def check(self) -> None:
        """Validates every run to do (board runs with the protocol's values of the tuned
        keys) and the results folder."""
        for run in self.todo:
            try:
                validate(self.config(run))
            except ConfigError as exc:
                raise ConfigError(f'{run.label}: {exc}') from exc
        _check_writable(self.output)

    def finished(self, choices: Optional[Dict[str, Dict[str, Any]]] = None):
        """The recorded runs that stand, and the stale ones with what changed (see
        :func:`_finished_runs`)."""
        return _finished_runs(self.output, self.fingerprint,
                              {r.ident: self.config(r, choices) for r in self.runs})

    def write_report(self, env: Dict[str, Any]) -> List[Dict[str, Any]]:
        return _write_report(self.spec, self.output, self.order, env)


def _work(boards: List[Board], spec: Dict[str, Any], env: Dict[str, Any]) -> None:
    """Trains every run left, board by board. Runners may share the folders: each claims
    a run and re-reads what is finished under its claim, so they split the work and never
    train one run twice. A board run waits for its model's tuning: while another runner
    trains a tuning run it needs, this one looks again every ``POLL_SECONDS``."""
    while True:
        progressed = False
        choices = tuning_choices(spec)
        for board in boards:
            for run in list(board.todo):
                if run.tuned_as and run.tuned_as not in choices:
                    continue  # its model's tuning is not finished
                board.todo.remove(run)
                cfg = board.config(run, choices)
                with _claim(cfg.data.save_dir) as claimed:
                    if not claimed or run.ident in board.finished(choices)[0]:
                        print(f'\n{run.key}: skipped, another runner '
                              f'{"is training" if not claimed else "has finished"} it')
                        continue
                    print(f'\n{board.name} {run.key}: {run.model} on {cfg.data.sources} split '
                          f'{run.split_id}, seed {run.seed}', flush=True)
                    _train_one(board, run, cfg, env)
                    progressed = True
        waiting = [run for board in boards for run in board.todo]
        if progressed:
            continue
        if not waiting:
            return
        if not any(_tuning_in_progress(boards[0], run.tuned_as) for run in waiting):
            print(f'{len(waiting)} runs wait for tuning runs that no runner is training: '
                  + ', '.join(r.key for r in waiting))
            return
        time.sleep(POLL_SECONDS)


def _print_plan(boards: List[Board], choices: Dict[str, Dict[str, Any]]) -> None:
    """Lists the runs to do, each with where it stands (resumes from a checkpoint, held by
    another runner) and its training time left at the recorded speeds, then the total: a
    plan for a board that runs for days should say how long it has to go."""
    records = {board.output: report.load_records(board.output) for board in boards}
    every_record = [r for folder in records.values() for r in folder]
    total, unknown = 0.0, 0
    for board in boards:
        images_per_epoch = _images_per_epoch(records[board.output])
        for run in board.todo:
            cfg = board.config(run, choices)
            done, epochs = epochs_done(cfg.data.save_dir), cfg.train.max_epoch
            seconds = _training_seconds(run, max(epochs - done, 0), images_per_epoch,
                                        every_record)
            if seconds is None:
                unknown += 1
            else:
                total += seconds
            state = [f'about {seconds / 60:.0f} min' if seconds is not None
                     else 'no recorded speed of its model']
            if done:
                state.append(f'resumes after epoch {done} of {epochs}')
            if _claimed_elsewhere(cfg.data.save_dir):
                state.append('another runner is training it')
            print(f'  would run {run.key} ({run.model}): {", ".join(state)}')
    print(f'Training time left: about {total / 3600:.1f} h of runner time at the recorded '
          f'speeds' + (f', and {unknown} runs whose model has no recorded speed' if unknown else ''))


def _images_per_epoch(board_records: List[Dict[str, Any]]) -> Optional[float]:
    """The mean images per epoch the board's recorded runs trained, or None without any."""
    counts = [r['train_seconds'] * r['train_images_per_s'] / r['epochs']
              for r in board_records if r.get('train_images_per_s')]
    return sum(counts) / len(counts) if counts else None


def _training_seconds(run: Run, epochs: int, images_per_epoch: Optional[float],
                      every_record: List[Dict[str, Any]]) -> Optional[float]:
    """Seconds to train ``epochs`` epochs of ``images_per_epoch`` images at the recorded
    images/s of ``run``'s label, else of its model, on either board (tuning runs train fewer
    images per epoch at the same speed). None without a speed or an image count."""
    for same in ('label', 'model'):
        speeds = [r['train_images_per_s'] for r in every_record
                  if r[same] == getattr(run, same) and r.get('train_images_per_s')]
        if speeds and images_per_epoch:
            return epochs * images_per_epoch / (sum(speeds) / len(speeds))
    return None


def _tuning_in_progress(tuning: Board, label: str) -> bool:
    """Whether another runner is training one of ``label``'s unfinished tuning runs."""
    done = tuning.finished()[0]
    for run in tuning.runs:
        if tuned_model(run.label) == label and run.ident not in done:
            if _claimed_elsewhere(tuning.config(run).data.save_dir):
                return True
    return False


def _claim(save_dir: str):
    """The lock a runner holds on a run (its ``save_dir``) while it trains it."""
    return exclusive_lock(os.path.join(save_dir, '.claim'), wait=False)


def _claimed_elsewhere(save_dir: str) -> bool:
    with _claim(save_dir) as claimed:
        return not claimed


def _train_one(board: Board, run: Run, cfg, env: Dict[str, Any]) -> None:
    """Trains and records one run. A tuning run that diverges is recorded as diverged
    (it scores lowest); a board run that diverges stops the leaderboard."""
    try:
        record, queries = _train_and_evaluate(cfg, run, board.fingerprint, env)
    except NonFiniteLossError as exc:
        if not board.tuning:
            raise
        report.append_diverged(board.output, dict(label=run.label, split_id=run.split_id,
                                                  seed=run.seed, error=one_line(exc)))
        print(f'=> {run.key}: diverged ({one_line(exc)})', flush=True)
        board.write_report(env)
        return
    report.append_record(board.output, record, queries)
    board.write_report(env)
    print(f'=> {run.key}: R1 {record["rank1"]:.1%} mAP {record["mAP"]:.1%} '
          f'mINP {record["mINP"]:.1%} ({record["wall_seconds"] / 60:.0f} min)', flush=True)


def _write_report(spec: Dict[str, Any], output: str, order: List[str], env: Dict[str, Any]
                  ) -> List[Dict[str, Any]]:
    reference, claims = ablation_claims(spec)
    rankings = [(reference, e['label'], f'{reference} beats {e["label"]}')
                for e in model_entries(spec) if reference and e['label'] != reference]
    planned = {run.ident for run in plan_runs(spec)}
    header = _header(spec, env) + _progress(planned, output)
    if 'grid' in spec:  # the tuning runs: each model's grid and its choice
        header += _grid_table(spec, output)
    return report.write_report(output, order, title=spec.get('title', ''), header=header,
                               rankings=rankings, claims=claims, views=spec.get('views'),
                               planned=planned)


def _grid_table(tuning: Dict[str, Any], folder: str) -> str:
    """The tuning runs as a grid: a row per model, a column per point, each cell the rule's
    score in points, the chosen point in bold."""
    grid = tuning_grid(tuning, folder)
    points = [point for point, _ in next(iter(grid.values()))[0]] if grid else []
    lines = [f"| model | {' | '.join(point_label('', p)[1:] for p in points)} | chosen |",
             '|---' * (len(points) + 2) + '|']
    for label, (scored, choice) in grid.items():
        cells = ['…' if value is None else 'diverged' if value == float('-inf')
                 else f'**{value * 100:.1f}**' if point == choice else f'{value * 100:.1f}'
                 for point, value in scored]
        chosen = point_label('', choice)[1:] if choice is not None else 'grid not finished'
        lines.append(f"| {label} | {' | '.join(cells)} | {chosen} |")
    return (f"\n### the grid: {tuning['rule']} (points) per model and grid point\n\n"
            + '\n'.join(lines) + '\n')


def _finished_runs(output: str, fingerprint: str, configs: Dict[tuple, Any]
                   ) -> Tuple[Dict[tuple, Dict[str, Any]], Dict[tuple, List[str]]]:
    """The recorded runs that stand, and the stale ones with what changed, by run
    identity (label, split, seed); a tuning run that diverged is done. A record is stale when the config it trained
    (``config``) differs from what its entry trains now, e.g. after a default changed;
    records from before records carried it are taken as they are."""
    done: Dict[tuple, Dict[str, Any]] = {report.run_key(d): d for d in report.load_diverged(output)}
    stale = {}
    for record in report.load_records(output):
        if record.get('protocol') != fingerprint:
            raise ConfigError(f'{output} holds results of another protocol ({record.get("protocol")}'
                              f' vs {fingerprint}); use a new output folder')
        key = report.run_key(record)
        changes = (config_changes(record['config'], trained_config(configs[key]))
                   if 'config' in record and key in configs else [])
        if changes:
            stale[key] = changes
        else:
            done[key] = record
    return done, stale


def _train_and_evaluate(cfg, run: Run, fingerprint: str, env: Dict[str, Any]
                        ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Trains one run (resuming from its last checkpoint), its log teed to train.log;
    returns its record and its per-query outcomes."""
    console = sys.stdout
    tee = Tee(console, os.path.join(cfg.data.save_dir, 'train.log'))
    sys.stdout = tee
    try:
        result = train(cfg, resume_latest=True)
    finally:
        sys.stdout = console
        tee.close()
    metrics = result.training.results[cfg.data.targets[0]]
    record = dict(label=run.label, model=run.model, group=run.group, split_id=run.split_id,
                  seed=cfg.train.seed, dataset=cfg.data.targets[0], protocol=fingerprint,
                  **metrics.as_record((1, 5, 10, 20)), input=f'{cfg.data.height}x{cfg.data.width}',
                  train_summary=result.training.train_summary, config=trained_config(cfg),
                  selection=selection_record(cfg.data.save_dir), env=env, **result.summary(cfg))
    return record, metrics.per_query_record()


def _header(spec: Dict[str, Any], env: Dict[str, Any]) -> str:
    protocol = yaml.safe_dump(spec['protocol'], sort_keys=False).strip()
    text = (f'Every model: the same protocol, below; R1/R5/R10/mAP/mINP in %, mean ± std over '
            f'splits and seeds.\nEnvironment: {env["device"]}, torch {env["torch"]}, '
            f'{env["torchreid"]}.\n\n```yaml\n{protocol}\n```\n')
    tuning = tuning_spec(spec)
    if tuning:
        grid = ', '.join(f'{k} in {v}' for k, v in tuning['grid'].items())
        choices = tuning_choices(spec)
        text += (f'\nEach model was tuned on `{spec["tune"]["dataset"]}` with the same budget, '
                 f'one run per grid point ({grid}), and trained here with the point of highest '
                 f'{tuning["rule"]} (records: `{tuning["output"]}`); ablations train with '
                 f'their reference\'s. Chosen: ' + ('; '.join(
                     f'{label} ' + ', '.join(f'{k}={v}{_grid_edge(v, tuning["grid"].get(k))}'
                                             for k, v in point.items())
                     for label, point in choices.items()) or 'none yet') + '.\n')
        if spec['tune'].get('note'):
            text += f"{spec['tune']['note']}\n"
    return text


def _progress(planned: Set[tuple], output: str) -> str:
    """How many of the ``planned`` runs have landed (a diverged tuning run counts): a board
    read while it is still running must say that it is partial."""
    pending = report.unrecorded(planned, report.load_records(output), report.load_diverged(output))
    return (f'\nRuns recorded: {len(planned) - len(pending)} of the {len(planned)} planned'
            + ('.\n' if not pending else
               '; the tables and comparisons cover only those.\n'))


def _grid_edge(value: Any, grid: Optional[List[Any]]) -> str:
    """' (the grid's lowest)' or ' (the grid's highest)' where a chosen numeric value lies on
    an edge of its grid: the best value may then lie outside it, which a reader should see."""
    if not grid or len(grid) < 2 or not all(isinstance(v, (int, float)) for v in grid):
        return ''
    return {min(grid): " (the grid's lowest)", max(grid): " (the grid's highest)"}.get(value, '')


def versus(config: str, other: str, output: str = '') -> str:
    """Each label both boards ran, this board's runs minus the other's, paired by query in
    R1, mAP and R1 + mAP; written to ``versus_<other name>.{md,json}`` in this board's
    folder. Returns the table."""
    spec, other_spec = load_leaderboard(config), load_leaderboard(other)
    output = output or spec['output']
    name, other_name = spec.get('name', 'this'), other_spec.get('name', 'other')
    records, queries = [], []
    for folder, tag in ((output, name), (other_spec['output'], other_name)):
        records += [dict(r, label=f"{r['label']}@{tag}") for r in report.load_records(folder)]
        queries += [dict(q, label=f"{q['label']}@{tag}") for q in report.load_queries(folder)]
    labels = [label for label in label_order(plan_runs(spec))
              if any(r['label'] == f'{label}@{other_name}' for r in records)]
    metrics = ('rank1', 'mAP', 'rank1+mAP')
    rows = report.compare(records, queries, [(f'{label}@{name}', f'{label}@{other_name}', label)
                                             for label in labels], metrics)
    table = report.comparisons_table(rows, other_name, metrics)
    atomic_write_text(os.path.join(output, f'versus_{other_name}.json'),
                      json.dumps(rows, indent=1) + '\n')
    atomic_write_text(os.path.join(output, f'versus_{other_name}.md'),
                      f'# {name} minus {other_name}, paired by query\n\n{table}'
                      f'{report.COMPARISONS_NOTE}')
    return table


def copy_run(source_config: str, source_label: str, config: str, label: str
             ) -> List[Dict[str, Any]]:
    """Copies runs another board has already trained into this board (or its tuning runs)
    instead of training them again: e.g. a selection-path point that is also a tuning
    point. Each planned run labelled ``label`` whose split and seed ``source_label`` ran
    there moves in, record and per-query outcomes, with ``reused_from``; the reports are
    rewritten. Refused unless the protocol fingerprint and the trained config (key by key)
    match. Returns the copied records."""
    spec = load_leaderboard(config)
    boards = _boards(spec, spec['output'], '')
    planned = [(board, run) for board in boards for run in board.runs if run.label == label]
    if not planned:
        raise ConfigError(f'{config} plans no run labelled {label!r}')
    source = load_leaderboard(source_config)['output']
    records = {report.run_key(r): r for r in report.load_records(source)}
    queries = {report.run_key(q): q for q in report.load_queries(source)}
    choices = tuning_choices(spec)
    copied = []
    for board, run in planned:
        key = (source_label, run.split_id, run.seed)
        if key not in records or key not in queries:
            continue
        record = records[key]
        if record['protocol'] != board.fingerprint:
            raise ConfigError(f'{source_label} ran under another protocol ({record["protocol"]} '
                              f'vs {board.fingerprint}); it cannot stand for {label}')
        changes = config_changes(record['config'], trained_config(board.config(run, choices)))
        if changes:
            raise ConfigError(f'{source_label} trained another config than {label}: '
                              + '; '.join(changes))
        record = dict(record, label=run.label, group=run.group,
                      reused_from=f'{source} ({source_label})')
        report.append_record(board.output, record, {k: v for k, v in queries[key].items()
                                                    if k not in ('label', 'split_id', 'seed')})
        copied.append((board, record))
    if not copied:
        raise ConfigError(f'{source} holds no run of {source_label!r} with per-query outcomes '
                          f'on the splits and seeds {config} plans for {label!r}')
    for board in dict.fromkeys(board for board, _ in copied):  # each report once
        board.write_report(copied[-1][1]['env'])
    return [record for _, record in copied]


def rewrite_reports(config: str, output: str = '', tuning: bool = False
                    ) -> Tuple[str, Optional[str]]:
    """Rewrites a board's tables and plots (with ``tuning``, those of its tuning runs) from
    its records alone; ``output`` overrides that board's folder. Returns the folder and the
    Markdown of its rankings and claims (each with its interval and verdict), or None
    where the folder holds no records yet (then nothing is written)."""
    spec = load_leaderboard(config)
    if tuning:
        spec = tuning_spec(spec)
        if spec is None:
            raise ConfigError(f'{config} has no tune section, so no tuning runs to report')
    output = output or spec['output']
    records = report.load_records(output)
    if not records:
        return output, None
    _write_report(spec, output, label_order(plan_runs(spec)), records[-1]['env'])
    text = open(os.path.join(output, 'leaderboard.md'), encoding='utf-8').read()
    start = text.find('\n### rankings:')
    start = start if start >= 0 else text.find('\n### claims:')
    return output, text[start:].strip() if start >= 0 else ''
