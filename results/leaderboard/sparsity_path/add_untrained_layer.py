"""Adds the local feature layer to the selection of this path's records. They were written
before a JLML checkpoint's selection reported the layers no term trained (2026-12-03), so
with λ_l = 0 they name the global layer only; the local path (sparsity_path_local.yaml)
takes one of them as its λ_l = 0 point. Each record's selection is read again from its
run's final checkpoint, which must reproduce the recorded global entry exactly (the same
checkpoint); the record gains the local entry and ``selection_amended``. Run from the
repository root, with no runner writing to this folder:

    python results/leaderboard/sparsity_path/add_untrained_layer.py
"""
import json
import os

from jlml_plugin._files import atomic_write_text, exclusive_lock
from jlml_plugin.tools.sparsity import selection_record

FOLDER = 'results/leaderboard/sparsity_path'
NOTE = '2026-12-03: read again from the final checkpoint to add the layer no term trained'

with exclusive_lock(os.path.join(FOLDER, '.lock')):
    path = os.path.join(FOLDER, 'results.jsonl')
    records = [json.loads(line) for line in open(path, encoding='utf-8')]
    for record in records:
        if 'reg_local' in record['selection']:
            continue
        selection = selection_record(os.path.join(FOLDER, 'runs', record['label'], 'split0'))
        assert selection['reg_global'] == record['selection']['reg_global'], record['label']
        record.update(selection=selection, selection_amended=NOTE)
        print(f"{record['label']}: reg_local {selection['reg_local']['exact_zeros']} exactly 0, "
              f"{selection['reg_local']['off']} off of {selection['reg_local']['units']}")
    atomic_write_text(path, ''.join(json.dumps(r, sort_keys=True) + '\n' for r in records))
