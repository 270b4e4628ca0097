"""jlml-export: ONNX and TorchScript files that match PyTorch, with metadata."""
import json

import numpy as np
import pytest
import torch

from jlml_plugin import MODELS
from jlml_plugin.cli import export
from jlml_plugin.checkpoint import save_checkpoint

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A jlml-train style checkpoint of a 37-identity model."""
    torch.manual_seed(0)
    kwargs = dict(num_stripes=4, feat_dim=512, dropout=0.0, stem_width=8,
                  global_widths=[4, 8, 8, 16], local_widths=[4, 4, 8, 8])
    model = MODELS['jlml'](37, **kwargs)
    folder = tmp_path_factory.mktemp('ckpt')
    meta = dict(model_name='jlml', num_classes=37, input_size=[3, 160, 64],
                mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], model_kwargs=kwargs)
    path = save_checkpoint({'state_dict': model.state_dict(), 'epoch': 3, 'rank1': 0.5,
                            'meta': meta}, str(folder))
    return path, model.eval()


def _run(argv, capsys):
    code = export.main(argv)
    return code, *capsys.readouterr()


def _export_checked(checkpoint_path, fmt, output, capsys):
    """Exports with --check and returns the console output."""
    code, out, err = _run(['--checkpoint', checkpoint_path, '--format', fmt, '--output', output,
                           '--check'], capsys)
    assert code == 0, err
    return out


def test_onnx_export_matches_pytorch_with_a_dynamic_batch(checkpoint, tmp_path, capsys):
    path, model = checkpoint
    output = str(tmp_path / 'jlml.onnx')
    out = _export_checked(path, 'onnx', output, capsys)
    assert 'check: max |onnx - pytorch|' in out and '(ok, limit 1e-4)' in out
    session = ort.InferenceSession(output, providers=['CPUExecutionProvider'])
    x = torch.randn(5, 3, 160, 64)
    got = session.run(None, {'images': x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).numpy()
    assert got.shape == (5, 1024) and np.abs(got - expected).max() < 1e-4
    meta = {p.key: json.loads(p.value) for p in onnx.load(output).metadata_props}
    assert meta['input_size'] == [3, 160, 64] and meta['feature_dim'] == 1024
    assert meta['mean'] == [0.5, 0.5, 0.5] and meta['std'] == [0.25, 0.25, 0.25]
    assert meta['model_name'] == 'jlml' and 'normalised' in meta['input_format']


def test_torchscript_export_matches_pytorch(checkpoint, tmp_path, capsys):
    path, model = checkpoint
    output = str(tmp_path / 'jlml.pt')
    _export_checked(path, 'torchscript', output, capsys)
    files = {'jlml_meta.json': ''}
    loaded = torch.jit.load(output, _extra_files=files)
    assert json.loads(files['jlml_meta.json'])['feature_dim'] == 1024
    x = torch.randn(3, 3, 160, 64)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-4)


def test_a_torchreid_checkpoint_without_meta_needs_the_model_and_size(tmp_path, capsys):
    torch.manual_seed(1)
    model = MODELS['jlml_global'](9)
    path = save_checkpoint({'state_dict': model.state_dict(), 'epoch': 1, 'rank1': 0.0},
                           str(tmp_path))
    code, _, err = _run(['--checkpoint', path, '--output', str(tmp_path / 'a.onnx')], capsys)
    assert code == 2 and 'pass --model NAME' in err
    code, _, err = _run(['--checkpoint', path, '--model', 'jlml_global', '--height', '96',
                         '--width', '32', '--output', str(tmp_path / 'a.onnx'), '--check'], capsys)
    assert code == 0, err


def test_wrong_model_is_a_clear_error(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    code, _, err = _run(['--checkpoint', path, '--model', 'osnet_x0_25', '--output',
                         str(tmp_path / 'x.onnx')], capsys)
    assert code == 2 and 'does not fit osnet_x0_25' in err


def test_missing_onnx_names_the_extra(checkpoint, tmp_path, capsys, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == 'onnx':
            raise ImportError('No module named onnx')
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_onnx)
    code, _, err = _run(['--checkpoint', checkpoint[0], '--output', str(tmp_path / 'x.onnx')],
                        capsys)
    assert code == 2 and "pip install 'jlml-plugin[export]'" in err
