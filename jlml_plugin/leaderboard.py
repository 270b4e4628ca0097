"""``jlml-leaderboard``: JLML and torchreid baselines trained under one identical protocol.

    jlml-leaderboard --config configs/leaderboard/cuhk01.yaml --root <folder holding cuhk01/>

A leaderboard config names one ``protocol`` (a torchreid-style config section: dataset,
input size, transforms, optimizer, lr schedule, epochs, batch, sampler, seed), the
``splits`` to run, the ``models`` and optional ``ablations`` (each with its own splits,
and with the ``claim`` it tests against a ``reference`` model, tabled split by split).
Every run goes through :func:`jlml_plugin.runner.train`: torchreid's data manager,
sampler, engine path and the exact evaluator. A model entry may override only
``jlml.*`` keys (the ablations' knobs): the protocol is never tuned per model.

The whole config is validated before anything trains. Finished runs are recorded
atomically in ``<output>/results.jsonl`` and skipped when the command runs again; an
interrupted run resumes from its last checkpoint. After each run the CSV, JSON,
Markdown table and CMC plot are rewritten. Several runners (e.g. one per core or per
GPU) may work on one results folder at once: each run is claimed with a lock, so they
share out the runs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import yaml

from . import report
from ._cli import Tee, command_parser, main_wrapper
from ._files import atomic_write_text, exclusive_lock
from .config import (config_changes, config_chain, flatten, get_cfg, merge_dict, merge_values,
                     trained_config)
from .errors import ConfigError
from .runner import train, validate

__all__ = ['Run', 'load_leaderboard', 'plan_runs', 'ablation_claims', 'run_leaderboard', 'main']

_TOP_KEYS = {'name', 'title', 'output', 'root', 'splits', 'protocol', 'models', 'ablations'}
_ABLATION_KEYS = {'reference', 'splits', 'models'}
_ENTRY_KEYS = ('name', 'label', 'overrides')


@dataclass
class Run:
    label: str
    model: str
    split_id: int
    group: str
    overrides: Dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f'{self.label}/split{self.split_id}'


def load_leaderboard(path: str) -> Dict[str, Any]:
    """The leaderboard spec in ``path``. A ``_BASE_`` file (relative to ``path``) supplies
    every key not given; ``protocol`` is merged key by key, so a variant states only what
    differs (e.g. ``train.max_epoch``)."""
    if not os.path.isfile(path):
        raise ConfigError(f'leaderboard config not found: {path}')
    spec: Dict[str, Any] = {}
    for file, values in config_chain(path):
        unknown = set(values) - _TOP_KEYS
        if unknown:
            raise ConfigError(f'unknown leaderboard key(s) {sorted(unknown)} in {file}; '
                              f'expected {sorted(_TOP_KEYS)}')
        protocol = merge_values(spec.get('protocol') or {}, values.get('protocol') or {})
        spec.update(values, protocol=protocol)
    for key in ('output', 'protocol', 'models', 'splits'):
        if not spec.get(key):
            raise ConfigError(f'{path} needs a {key!r} entry')
    ablation_claims(spec)  # a bad ablations section fails here, not after the first run
    return spec


def _entries(items: List[Any], where: str, keys: Tuple[str, ...] = _ENTRY_KEYS
             ) -> List[Dict[str, Any]]:
    out = []
    for item in items or []:
        entry = {'name': item} if isinstance(item, str) else dict(item)
        if 'name' not in entry:
            raise ConfigError(f'every entry of {where} needs a model name: {item!r}')
        extra = set(entry) - set(keys)
        if extra:
            raise ConfigError(f'unknown key(s) {sorted(extra)} in {where} entry {entry["name"]}')
        overrides = flatten(entry.get('overrides') or {})
        tuned = [k for k in overrides if not k.startswith('jlml.')]
        if tuned:
            raise ConfigError(f'{where} entry {entry["name"]} overrides {tuned}: only jlml.* '
                              f'keys may differ between models; the protocol is shared')
        entry['overrides'] = overrides
        entry.setdefault('label', entry['name'])
        out.append(entry)
    return out


def _ablation_entries(spec: Dict[str, Any]) -> List[Dict[str, Any]]:
    ablations = spec.get('ablations') or {}
    unknown = set(ablations) - _ABLATION_KEYS
    if unknown:
        raise ConfigError(f'unknown ablations key(s) {sorted(unknown)}; expected '
                          f'{sorted(_ABLATION_KEYS)}')
    return _entries(ablations.get('models'), 'ablations.models', _ENTRY_KEYS + ('claim',))


def ablation_claims(spec: Dict[str, Any]) -> Tuple[str, Dict[str, str]]:
    """The model the ablations are measured against, and each ablation's claim: what that
    model beating it would show (e.g. 'joint features beat global-only')."""
    reference = (spec.get('ablations') or {}).get('reference', '')
    stated = {e['label']: e['claim'] for e in _ablation_entries(spec) if e.get('claim')}
    labels = [e['label'] for e in _entries(spec['models'], 'models')]
    if stated and reference not in labels:
        raise ConfigError(f'ablations.reference must name the model the claims are measured '
                          f'against, one of {labels}; got {reference!r}')
    return reference, stated


def plan_runs(spec: Dict[str, Any]) -> List[Run]:
    """Every (model, split) run, split by split, so early results cover every model."""
    models = _entries(spec['models'], 'models')
    ablations = spec.get('ablations') or {}
    ablation_models = _ablation_entries(spec)
    ablation_splits = ablations.get('splits', spec['splits'][:1])
    runs = []
    for split in dict.fromkeys(list(spec['splits']) + list(ablation_splits)):
        if split in spec['splits']:
            runs += [Run(m['label'], m['name'], split, 'models', m['overrides']) for m in models]
        if split in ablation_splits:
            runs += [Run(m['label'], m['name'], split, 'ablation', m['overrides'])
                     for m in ablation_models]
    labels = [r.key for r in runs]
    if len(labels) != len(set(labels)):
        raise ConfigError('two leaderboard entries share a label; give each a distinct label')
    return runs


def _run_config(spec: Dict[str, Any], run: Run, root: str, output: str):
    cfg = get_cfg()
    merge_dict(cfg, spec['protocol'], 'in protocol')
    merge_dict(cfg, {'model': {'name': run.model}, 'data': {'split_id': run.split_id}},
               'in models')
    merge_dict(cfg, run.overrides, f'in {run.label} overrides')
    if root:
        cfg.data.root = root
    cfg.data.save_dir = os.path.join(output, 'runs', run.label, f'split{run.split_id}')
    return cfg


def _label_order(runs: List[Run]) -> List[str]:
    """The planned labels in order: tables follow the config, whichever subset ran last."""
    return list(dict.fromkeys(run.label for run in runs))


def protocol_hash(spec: Dict[str, Any]) -> str:
    """A fingerprint of the shared protocol; runs recorded under another one are refused."""
    text = json.dumps(spec['protocol'], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _check_writable(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
        atomic_write_text(os.path.join(folder, '.write-test'), 'ok')
        os.remove(os.path.join(folder, '.write-test'))
    except OSError as exc:
        raise ConfigError(f'cannot write to the results folder {folder}: {exc.strerror or exc}') from exc


def run_leaderboard(config: str, root: str = '', output: str = '', only: Optional[List[str]] = None,
                    dry_run: bool = False, splits: Optional[List[int]] = None
                    ) -> List[Dict[str, Any]]:
    spec = load_leaderboard(config)
    output = output or spec['output']
    runs = plan_runs(spec)
    order = _label_order(runs)
    if only:
        runs = [r for r in runs if r.label in only]
        if not runs:
            raise ConfigError(f'--only {",".join(only)} matches no leaderboard entry')
    if splits:
        runs = [r for r in runs if r.split_id in splits]
        if not runs:
            raise ConfigError(f'--splits {",".join(map(str, splits))} matches no planned run')
    fingerprint = protocol_hash(spec)
    # Validate everything before the first epoch: splits, models, datasets, folders.
    configs = {run.key: _run_config(spec, run, root or spec.get('root', ''), output)
               for run in runs}
    for run in runs:
        try:
            validate(configs[run.key])
        except ConfigError as exc:
            raise ConfigError(f'{run.label}: {exc}') from exc
    _check_writable(output)
    done, stale = _finished_runs(output, fingerprint, configs)
    todo = [r for r in runs if r.key not in done]
    print(f'Leaderboard {spec.get("name", config)}: {len(runs)} runs, {len(runs) - len(todo)} done, '
          f'{len(todo)} to go; results in {output}')
    for run in todo:
        if run.key in stale:
            print(f'  {run.key}: its record trained another config ({"; ".join(stale[run.key])}); '
                  f'it is rerun, and the record moves to {report.SUPERSEDED} when the new one lands')
    if dry_run:
        for run in todo:
            print(f'  would run {run.key} ({run.model})')
        return report.summarize(report.load_records(output))
    env = report.environment()
    atomic_write_text(os.path.join(output, 'environment.json'), json.dumps(env, indent=1))
    for index, run in enumerate(todo, 1):
        cfg = configs[run.key]
        # Runners may share a leaderboard: each claims a run and re-reads what is finished
        # under its claim, so they split the work and never train one run twice.
        with exclusive_lock(os.path.join(cfg.data.save_dir, '.claim'), wait=False) as claimed:
            if not claimed or run.key in _finished_runs(output, fingerprint, configs)[0]:
                print(f'\n[{index}/{len(todo)}] {run.key}: skipped, another runner '
                      f'{"is training" if not claimed else "has finished"} it')
                continue
            print(f'\n[{index}/{len(todo)}] {run.key}: {run.model} on {cfg.data.sources} split '
                  f'{run.split_id}', flush=True)
            record, queries = _train_and_evaluate(cfg, run, fingerprint, env)
            report.append_record(output, record, queries)
            _write_report(spec, output, order, env)
        print(f'=> {run.key}: R1 {record["rank1"]:.1%} mAP {record["mAP"]:.1%} '
              f'mINP {record["mINP"]:.1%} ({record["wall_seconds"] / 60:.0f} min)', flush=True)
    return _write_report(spec, output, order, env)


def _write_report(spec: Dict[str, Any], output: str, order: List[str], env: Dict[str, Any]
                  ) -> List[Dict[str, Any]]:
    reference, stated = ablation_claims(spec)
    return report.write_report(output, order, title=spec.get('title', ''),
                               header=_header(spec, env), reference=reference, claims=stated)


def _finished_runs(output: str, fingerprint: str, configs: Dict[str, Any]
                   ) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, List[str]]]:
    """The recorded runs that stand, and the stale ones with what changed. A record is
    stale when the config it trained (``config``) differs from what its entry trains now,
    e.g. after a default changed; records from before records carried it are taken as
    they are."""
    done, stale = {}, {}
    for record in report.load_records(output):
        if record.get('protocol') != fingerprint:
            raise ConfigError(f'{output} holds results of another protocol ({record.get("protocol")}'
                              f' vs {fingerprint}); use a new output folder')
        key = f'{record["label"]}/split{record["split_id"]}'
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
    metrics = result.results[cfg.data.targets[0]]
    record = dict(label=run.label, model=run.model, group=run.group, split_id=run.split_id,
                seed=cfg.train.seed, dataset=cfg.data.targets[0], protocol=fingerprint,
                **metrics.as_dict((1, 5, 10, 20)), cmc=[float(v) for v in metrics.cmc[:50]],
                params=result.num_params, gflops=result.flops / 1e9,
                input=f'{cfg.data.height}x{cfg.data.width}', epochs=cfg.train.max_epoch,
                train_images_per_s=result.train_images_per_second,
                train_seconds=result.train_seconds, wall_seconds=result.wall_seconds,
                train_summary=result.extra['train_summary'], config=trained_config(cfg),
                finished_at=time.strftime('%Y-%m-%dT%H:%M:%S'), env=env)
    return record, metrics.per_query.as_dict()


def _header(spec: Dict[str, Any], env: Dict[str, Any]) -> str:
    protocol = yaml.safe_dump(spec['protocol'], sort_keys=False).strip()
    return (f'Every model: the same protocol, below; R1/R5/R10/mAP/mINP in %, mean ± std over '
            f'splits.\nEnvironment: {env["device"]}, torch {env["torch"]}, {env["torchreid"]}.\n\n'
            f'```yaml\n{protocol}\n```\n')


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser('jlml-leaderboard', __doc__.split('\n\n')[0])
    parser.add_argument('--config', required=True, help='leaderboard YAML')
    parser.add_argument('--root', default='', help='datasets folder (overrides the config)')
    parser.add_argument('--output', default='', help='results folder (overrides the config)')
    parser.add_argument('--only', default='', help='comma-separated labels to run')
    parser.add_argument('--splits', default='',
                        help='comma-separated split ids to run (of those planned)')
    parser.add_argument('--dry-run', action='store_true', help='validate and list the runs left')
    parser.add_argument('--report-only', action='store_true',
                        help='rewrite tables and plots from the recorded results')
    return parser


def run(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.report_only:
        spec = load_leaderboard(args.config)
        output = args.output or spec['output']
        order = _label_order(plan_runs(spec))
        records = report.load_records(output)
        _write_report(spec, output, order, records[-1]['env'] if records else report.environment())
        return 0
    only = [s for s in args.only.split(',') if s]
    try:
        splits = [int(s) for s in args.splits.split(',') if s]
    except ValueError:
        raise ConfigError(f'--splits must be comma-separated split ids, got {args.splits!r}'
                          ) from None
    run_leaderboard(args.config, root=args.root, output=args.output, only=only,
                    dry_run=args.dry_run, splits=splits)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return main_wrapper('jlml-leaderboard', run, argv)


if __name__ == '__main__':
    sys.exit(main())
