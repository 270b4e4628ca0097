"""What a leaderboard config plans: the config checked whole, every run it names (model x
split x seed, ablations included), and its tuning runs with each model's choice.

Nothing here trains: :mod:`jlml_plugin.tools.leaderboard` runs what this plans, and the
tests read the plan (e.g. that no tuning identity is a test identity of any board split).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from . import report
from ..config import config_chain, flatten, get_cfg, merge_values
from ..errors import ConfigError

__all__ = ['Run', 'TUNING_RULES', 'load_leaderboard', 'model_entries', 'ablation_claims',
           'plan_runs', 'tuning_spec', 'point_label', 'tuned_model', 'tuning_choices',
           'tuning_grid', 'run_config', 'label_order', 'protocol_hash']

_TOP_KEYS = {'name', 'title', 'output', 'root', 'splits', 'seeds', 'protocol', 'models',
             'ablations', 'tune', 'views'}
_ABLATION_KEYS = {'reference', 'splits', 'models'}
_TUNE_KEYS = {'dataset', 'split', 'output', 'grid', 'rule', 'note'}  # note: what else was tuned
_ENTRY_KEYS = ('name', 'label', 'overrides', 'seeds')
#: The tuning rules a config may name: each scores a grid point's record.
TUNING_RULES = {'rank1 + mAP': lambda record: record['rank1'] + record['mAP']}


@dataclass
class Run:
    label: str
    model: str
    split_id: int
    group: str  # 'models', 'ablation' or 'tune'
    overrides: Dict[str, Any] = field(default_factory=dict)
    seed: int = 1
    #: Its folder below ``runs/<label>/``: ``split<N>``, or ``split<N>-seed<S>`` for a seed
    #: other than the board's first.
    tag: str = ''
    #: The label whose tuning choice it trains with ('' on a board without tuning).
    tuned_as: str = ''

    @property
    def key(self) -> str:
        return f'{self.label}/{self.tag}'

    @property
    def ident(self) -> tuple:
        return self.label, self.split_id, self.seed


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
    _check_tune(spec.get('tune'), path)
    views = spec.get('views')
    if views is not None and (not isinstance(views, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in views.items())):
        raise ConfigError(f'{path}: views maps each view a run scores beside its test feature '
                          f'(e.g. l2norm, halves_l2norm) to what it reads; got {views!r}')
    return spec


def _check_tune(tune: Optional[Dict[str, Any]], path: str) -> None:
    if not tune:
        return
    unknown = set(tune) - _TUNE_KEYS
    if unknown:
        raise ConfigError(f'unknown tune key(s) {sorted(unknown)} in {path}; expected '
                          f'{sorted(_TUNE_KEYS)}')
    for key in ('dataset', 'output', 'grid', 'rule'):
        if not tune.get(key):
            raise ConfigError(f'{path}: tune needs a {key!r} entry')
    if tune['rule'] not in TUNING_RULES:
        raise ConfigError(f'{path}: unknown tune.rule {tune["rule"]!r}; choose one of '
                          f'{sorted(TUNING_RULES)}')
    grid = flatten(tune['grid'])
    if not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f'{path}: every tune.grid key needs a list of values, got {grid}')


def _seeds(spec: Dict[str, Any], entry: Optional[Dict[str, Any]] = None) -> List[int]:
    """An entry's seeds: its own, else the board's, else the protocol's ``train.seed``."""
    seeds = (entry or {}).get('seeds') or spec.get('seeds') or [
        (spec['protocol'].get('train') or {}).get('seed', 1)]
    if not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f'seeds must be a list of integers, got {seeds!r}')
    return list(seeds)


def _entries(items: List[Any], where: str, keys: Tuple[str, ...] = _ENTRY_KEYS,
             grid: Tuple[str, ...] = ()) -> List[Dict[str, Any]]:
    """The entries of a ``models`` list, each with a label and flat overrides; an override
    may name a ``grid`` key (every model gets each of its values) or a ``jlml.*`` key."""
    out = []
    for item in items or []:
        entry = {'name': item} if isinstance(item, str) else dict(item)
        if 'name' not in entry:
            raise ConfigError(f'every entry of {where} needs a model name: {item!r}')
        extra = set(entry) - set(keys)
        if extra:
            raise ConfigError(f'unknown key(s) {sorted(extra)} in {where} entry {entry["name"]}')
        overrides = flatten(entry.get('overrides') or {})
        tuned = [k for k in overrides if not k.startswith('jlml.') and k not in grid]
        if tuned:
            raise ConfigError(f'{where} entry {entry["name"]} overrides {tuned}: only jlml.* '
                              f'keys may differ between models; the protocol is shared')
        entry['overrides'] = overrides
        entry.setdefault('label', entry['name'])
        out.append(entry)
    return out


def model_entries(spec: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The ``models`` entries (of a tuning spec: the grid's keys may differ between them)."""
    return _entries(spec['models'], 'models', grid=tuple(spec.get('grid', ())))


def _ablation_entries(spec: Dict[str, Any]) -> List[Dict[str, Any]]:
    ablations = spec.get('ablations') or {}
    unknown = set(ablations) - _ABLATION_KEYS
    if unknown:
        raise ConfigError(f'unknown ablations key(s) {sorted(unknown)}; expected '
                          f'{sorted(_ABLATION_KEYS)}')
    return _entries(ablations.get('models'), 'ablations.models',
                    _ENTRY_KEYS + ('claim', 'against', 'claims'))


def ablation_claims(spec: Dict[str, Any]) -> Tuple[str, List[Tuple[str, str, str]]]:
    """The model the ablations are measured against, and each stated claim as ``(a, b,
    claim)``: what ``a`` beating ablation ``b`` would show (e.g. 'joint features beat
    global-only'). ``a`` is ``ablations.reference``, or the claim's own ``against`` (a
    planned label: e.g. both arms at lambda 0). An entry states one claim with ``claim``
    (and ``against``), and more with ``claims``, a list of ``{claim, against}``: e.g.
    lambda = 0 measured against JLML and against a control."""
    reference = (spec.get('ablations') or {}).get('reference', '')
    labels = [e['label'] for e in model_entries(spec)]
    planned = labels + [e['label'] for e in _ablation_entries(spec)]
    claims = []
    for entry in _ablation_entries(spec):
        stated = [{'claim': entry['claim'], 'against': entry.get('against')}
                  ] if entry.get('claim') else []
        for item in entry.get('claims') or []:
            if (not isinstance(item, dict) or not item.get('claim')
                    or set(item) - {'claim', 'against'}):
                raise ConfigError(f'{entry["label"]}: each of its claims is a {{claim, against}} '
                                  f'mapping with a claim text; got {item!r}')
            stated.append(item)
        for item in stated:
            against = item.get('against') or reference
            if against not in planned or (against == reference and reference not in labels):
                raise ConfigError(f'{entry["label"]}: its claim must be measured against a '
                                  f'planned model (ablations.reference or the claim\'s against), '
                                  f'one of {labels}; got {against!r}')
            claims.append((against, entry['label'], item['claim']))
    return reference, claims


def plan_runs(spec: Dict[str, Any]) -> List[Run]:
    """Every (model, split, seed) run, split by split, so early results cover every model."""
    models = model_entries(spec)
    ablations = spec.get('ablations') or {}
    ablation_models = _ablation_entries(spec)
    ablation_splits = ablations.get('splits', spec['splits'][:1])
    first_seed = _seeds(spec)[0]
    tuned = bool(spec.get('tune'))
    reference = ablations.get('reference', '')

    def runs_of(entry, split, group, tuned_as):
        return [Run(entry['label'], entry['name'], split, group, entry['overrides'], seed,
                    f'split{split}' + (f'-seed{seed}' if seed != first_seed else ''),
                    tuned_as if tuned else '')
                for seed in _seeds(spec, entry)]

    runs = []
    for split in dict.fromkeys(list(spec['splits']) + list(ablation_splits)):
        if split in spec['splits']:
            runs += [r for m in models for r in runs_of(m, split, 'models', m['label'])]
        if split in ablation_splits:
            runs += [r for m in ablation_models for r in runs_of(m, split, 'ablation', reference)]
    keys = [r.key for r in runs]
    if len(keys) != len(set(keys)):
        raise ConfigError('two leaderboard entries share a label; give each a distinct label')
    return runs


def tuning_spec(spec: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The leaderboard of ``spec``'s tuning runs (None without a ``tune`` section): the
    protocol on ``tune.dataset``, each model once per grid point, labelled
    ``<label>@<key>=<value>``."""
    tune = spec.get('tune')
    if not tune:
        return None
    grid = flatten(tune['grid'])
    models = []
    for entry in model_entries(spec):
        for point in _grid_points(grid):
            models.append(dict(label=point_label(entry['label'], point), name=entry['name'],
                               overrides={**entry['overrides'], **point}))
    protocol = merge_values(spec['protocol'], {'data': {'sources': [tune['dataset']],
                                                        'targets': [tune['dataset']]}})
    return dict(name=f"{spec.get('name', 'leaderboard')}_tune", output=tune['output'],
                title=f"Tuning runs of {spec.get('name', 'the leaderboard')}: {tune['dataset']}, "
                      f"rule: highest {tune['rule']}",
                splits=[tune.get('split', 0)], seeds=_seeds(spec)[:1], protocol=protocol,
                models=models, ablations={}, grid=grid, rule=tune['rule'])


def point_label(label: str, point: Dict[str, Any]) -> str:
    """A tuning run's label: its model's, ``@`` and the grid point (``jlml@train.lr=0.0005``)."""
    return label + '@' + ','.join(f'{k}={v}' for k, v in point.items())


def tuned_model(label: str) -> str:
    """The model label of a tuning run's label (:func:`point_label`'s inverse)."""
    return label.split('@')[0]


def _grid_points(grid: Dict[str, List[Any]]) -> List[Dict[str, Any]]:
    points: List[Dict[str, Any]] = [{}]
    for key, values in grid.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


def tuning_choices(spec: Dict[str, Any], output: str = '') -> Dict[str, Dict[str, Any]]:
    """Each model's chosen grid point, for the models whose every grid point has finished
    (a run that diverged scores lowest); ties go to the earlier grid point."""
    tuning = tuning_spec(spec)
    if tuning is None:
        return {}
    return {label: choice for label, (_, choice) in
            tuning_grid(tuning, output or tuning['output']).items() if choice is not None}


#: A model's tuning: each grid point with its score, and the chosen point.
TuningGrid = Tuple[List[Tuple[Dict[str, Any], Optional[float]]], Optional[Dict[str, Any]]]


def tuning_grid(tuning: Dict[str, Any], folder: str) -> Dict[str, TuningGrid]:
    """Per model label: each grid point with its score by the tuning rule (None while it
    has not finished, -inf where it diverged), and the chosen point (None until every
    point has finished)."""
    score = TUNING_RULES[tuning['rule']]
    finished = {r['label']: score(r) for r in report.load_records(folder)}
    finished.update({r['label']: float('-inf') for r in report.load_diverged(folder)})
    grid = {}
    for label in dict.fromkeys(tuned_model(entry['label']) for entry in tuning['models']):
        scored = [(point, finished.get(point_label(label, point)))
                  for point in _grid_points(tuning['grid'])]
        finished_all = all(value is not None for _, value in scored)
        # max keeps the earlier point on a tie
        grid[label] = (scored, max(scored, key=lambda pv: pv[1])[0] if finished_all else None)
    return grid


def run_config(spec: Dict[str, Any], run: Run, root: str, output: str,
                settings: Optional[Dict[str, Any]] = None):
    """The run's config: the protocol, its model, split and seed, its tuned ``settings``,
    then its entry's overrides."""
    cfg = get_cfg()
    cfg.merge_from_dict(spec['protocol'], 'in protocol')
    cfg.merge_from_dict({'model': {'name': run.model}, 'data': {'split_id': run.split_id},
                         'train': {'seed': run.seed}}, 'in models')
    cfg.merge_from_dict(settings or {}, f'in the settings tuned for {run.tuned_as}')
    cfg.merge_from_dict(run.overrides, f'in {run.label} overrides')
    if root:
        cfg.data.root = root
    cfg.data.save_dir = os.path.join(output, 'runs', run.label, run.tag)
    return cfg


def label_order(runs: List[Run]) -> List[str]:
    """The planned labels in order: tables follow the config, whichever subset ran last."""
    return list(dict.fromkeys(run.label for run in runs))


def protocol_hash(spec: Dict[str, Any]) -> str:
    """A fingerprint of the shared protocol; runs recorded under another one are refused."""
    text = json.dumps(spec['protocol'], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
