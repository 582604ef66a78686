"""Grid files are validated when loaded: a misspelt key or a value of the wrong type is one error
line naming the file and the key, before any trial starts."""

from __future__ import annotations

import pytest

from fedsim.errors import ConfigError
from fedsim.sweeps.grid import read_grid

SMALL = """\
reproduces: a test grid
grid: {client_ratio: ["2:1", "1:1"], seed: [0, 1]}
table: {rows: [client_ratio], metrics: [acc]}
"""


def _grid(tmp_path, text: str, name: str = "mine"):
    folder = tmp_path / "afmcc"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def test_a_valid_grid_file_reads_with_its_defaults(tmp_path):
    spec = read_grid(_grid(tmp_path, SMALL))
    assert (spec.method, spec.name, spec.config) == ("afmcc", "mine", "configs/afmcc/{dataset}.yaml")
    assert spec.table.keys == ["client_ratio"] and spec.fixed == {} and not spec.report.skip
    assert len(spec.trials) == 4 and spec.trial_overrides(spec.trials[0]) == ["client_ratio=2:1", "seed=0"]


def test_an_unknown_top_level_key_names_the_file_and_the_key(tmp_path):
    path = _grid(tmp_path, SMALL + "tabel: {rows: [seed]}\n", name="typo")
    with pytest.raises(ConfigError) as info:
        read_grid(path)
    message = str(info.value)
    assert "\n" not in message and "typo.yaml" in message
    assert "unknown key 'tabel'" in message and "did you mean 'table'?" in message


def test_a_value_of_the_wrong_type_names_the_file_and_the_key(tmp_path):
    path = _grid(tmp_path, SMALL.replace("rows: [client_ratio]", "rows: client_ratio"), name="badtype")
    with pytest.raises(ConfigError) as info:
        read_grid(path)
    message = str(info.value)
    assert "\n" not in message and "badtype.yaml" in message
    assert "key 'table.rows': Input should be a valid list (got 'client_ratio')" in message


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("report: {skipp: true}\n", "unknown key 'report.skipp' (did you mean 'skip'?)"),
        (
            "paper: {bdgp: {'1:1': {acc: [93.9]}}}\n",
            "key 'paper.bdgp.1:1.acc': a paper value is a number or [mean, std]",
        ),
        ("time_to_reach: {reference: {mode: sync}}\n", "time_to_reach.reference names 'mode', which is no axis"),
        (
            "variants: {client_ratio: {'2:1': {}}}\n",
            "grid.client_ratio value '1:1' is not one of variants.client_ratio",
        ),
        ("name: other\n", "unknown key 'name'"),
    ],
)
def test_nested_keys_values_and_axes_are_checked(tmp_path, extra, expected):
    with pytest.raises(ConfigError, match="mine.yaml") as info:
        read_grid(_grid(tmp_path, SMALL + extra))
    assert expected in str(info.value)


def test_a_missing_required_key_or_an_empty_axis_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"mine.yaml'?: key 'reproduces' is missing"):
        read_grid(_grid(tmp_path, SMALL.replace("reproduces: a test grid\n", "")))
    with pytest.raises(ConfigError, match=r"mine.yaml'?: key 'grid': axis 'seed' has no values"):
        read_grid(_grid(tmp_path, SMALL.replace("seed: [0, 1]", "seed: []")))
