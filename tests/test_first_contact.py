"""First contact: a misspelt key is refused at once, in one line, with the likely fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.cli import main

ROOT = Path(__file__).resolve().parents[1]
CFG = str(ROOT / "configs" / "afmcc" / "bdgp.yaml")


@pytest.mark.parametrize(
    "override,message",
    [
        ("mod=async", "unknown config key 'mod'; did you mean 'mode'?"),
        ("afmcc.alpah=0.1", "unknown config key 'afmcc.alpah'; did you mean 'alpha'?"),
        ("runtime.torch_thread=2", "unknown config key 'runtime.torch_thread'; did you mean 'torch_threads'?"),
        ("stop.rul=rounds", "unknown config key 'stop.rul'; did you mean 'rule'?"),
    ],
)
def test_unknown_key_suggests_the_close_name(override, message, capsys):
    try:
        code = main(["run", CFG, "--set", override])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fedsim: error: {message}"]


def test_far_off_key_gets_no_suggestion(capsys):
    try:
        code = main(["run", CFG, "--set", "zzzz=1"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "did you mean" not in line and "unknown config key 'zzzz'" in line


@pytest.mark.parametrize(
    "override,message",
    [
        ("mod=async", "did you mean 'mode'?"),
        ("afmcc.lrr=1", "unknown config key 'afmcc.lrr'; did you mean 'lr'?"),
        ("seed=-1", "config key 'seed': Input should be greater than or equal to 0"),
        ("runtime.dashboard_port=70000", "config key 'runtime.dashboard_port'"),
    ],
)
def test_misspelt_method_key_and_bad_values_are_refused_before_torch(override, message):
    """Issue 27: a method section's keys are read from the method's source, and every top-level
    value is checked, before the method's module (torch, seconds) is imported."""
    code = (
        "import sys\n"
        "from fedsim.cli import main\n"
        f"rc = main(['run', {CFG!r}, '--set', {override!r}])\n"
        "print(rc, sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "[]"], out.stdout + out.stderr
    assert message in out.stderr


def test_config_keys_read_from_source_match_every_methods_model():
    """The keys read without importing a method (fedsim.methods.config_keys) are exactly its
    pydantic Config's fields, for every built-in method."""
    from fedsim.methods import config_keys, get_method, method_names

    for name in method_names():
        assert config_keys(name) == frozenset(get_method(name).Config.model_fields), name
