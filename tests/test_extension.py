"""Loading manual_ops._C: the torch it was compiled against, stale builds in a checkout, missing builds."""
import os
import re

import pytest
import torch

import manual_ops
from manual_ops import _extension


def test_library_records_the_torch_it_was_built_with():
    assert _extension.built_with_torch(manual_ops._C.__file__) == torch.__version__


def test_another_torch_is_refused_before_loading(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "9.99.0+other")
    with pytest.raises(ImportError) as e:
        _extension.load()
    message = str(e.value)
    assert f"compiled against torch {_extension.built_with_torch(manual_ops._C.__file__)}" in message
    assert "this is torch 9.99.0+other" in message
    assert "pip install --no-build-isolation" in message


def test_missing_library_names_the_build_command(monkeypatch):
    monkeypatch.setattr(_extension.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="has not been built; " + re.escape(_extension.build_hint())):
        _extension.load()


def _checkout(tmp_path, with_setup_py):
    (tmp_path / "csrc").mkdir()
    if with_setup_py:
        (tmp_path / "setup.py").write_text("")
    newer = tmp_path / "csrc" / "conv2d.cpp"
    newer.write_text("")
    os.utime(newer, (os.path.getmtime(manual_ops._C.__file__) + 10,) * 2)
    return tmp_path


def test_stale_build_is_reported_in_a_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(_extension, "_CHECKOUT", str(_checkout(tmp_path, with_setup_py=True)))
    assert _extension.is_editable_checkout()
    with pytest.raises(ImportError, match=r"older than csrc/conv2d.cpp: the build is stale; rebuild it in "
                                          r".* with: pip install --no-build-isolation -e \."):
        _extension.load()


def test_an_installed_package_is_never_called_stale(tmp_path, monkeypatch):
    # site-packages/ has no setup.py beside the package, whatever else lies there.
    monkeypatch.setattr(_extension, "_CHECKOUT", str(_checkout(tmp_path, with_setup_py=False)))
    assert not _extension.is_editable_checkout()
    assert _extension.load() is manual_ops._C
    assert "--force-reinstall --no-deps ." in _extension.build_hint()
