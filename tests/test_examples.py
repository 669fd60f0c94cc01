"""examples/train_compare.py runs and writes its loss-curve chart beside the table."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_compare_table_and_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("train_compare", os.path.join(ROOT, "examples", "train_compare.py"))
    tc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tc)
    png = tmp_path / "curves.png"
    tc.main(["--steps", "2", "--families", "cyclegan", "--device", "cpu", "--png", str(png)])
    out = capsys.readouterr().out
    assert "G orig" in out and "G conv" in out and f"loss curves (original solid, converted dashed): {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
