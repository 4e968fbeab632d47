import subprocess
import sys

import kvprism


def test_import_has_no_torch_side_effects():
    code = "import sys, kvprism; import kvprism.config; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_lazy_exports_resolve():
    assert kvprism.load_model.__name__ == "load_model"
    assert issubclass(kvprism.ConfigError, kvprism.KvprismError)
    assert kvprism.__version__ != "0.0.0+unknown"


def test_unknown_attribute():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = kvprism.nope
