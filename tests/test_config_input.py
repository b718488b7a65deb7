"""Config files and config text that are not a config: one clear ConfigError (a line from the
CLI, never a traceback) naming the file, where in it, and what a config is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bpttbench.cli import main
from bpttbench.config import ConfigError, load, parse_yaml, validate

REPO = Path(__file__).resolve().parents[1]
DEFAULT = (REPO / "config" / "config.yaml").read_text()


def _cli_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("content, expect", [
    ("dtype: float32: x\n", "is not valid YAML: line 1, column 15: mapping values are not"),
    ("a: 1\n  b: 2\n", "is not valid YAML: line 2"),
    (b"dtype: float32\n\x80\x81\n", "is not a text file: byte 0x80 (line 2) is not UTF-8"),
    ("- 1\n- 2\n", "a config must be a mapping of keys, not a list"),
])
def test_a_file_that_is_not_a_config_is_named_with_the_problem(tmp_path, capsys, content,
                                                               expect):
    path = tmp_path / "c.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for argv in (["plan", "validate", str(path)], ["plan", "jobs", "--config", str(path)],
                 ["gradient-flow", "list", "--config", str(path)]):
        err = _cli_error(capsys, argv)
        assert str(path) in err and expect in err and "a config is a YAML mapping" in err, err


def test_a_folder_or_a_missing_file_is_named(tmp_path, capsys):
    err = _cli_error(capsys, ["plan", "validate", str(tmp_path)])
    assert f"config file {tmp_path} is a folder, not a file" in err
    err = _cli_error(capsys, ["plan", "validate", str(tmp_path / "no.yaml")])
    assert "no.yaml not found" in err and "--config" not in err  # validate takes CONFIG


def test_bad_config_json_names_the_option(capsys):
    err = _cli_error(capsys, ["gradient-flow", "list", "--config-json", '{"dtype": '])
    assert "--config-json is not valid JSON: line 1, column 11" in err
    with pytest.raises(ConfigError, match="--config-json: a config must be a mapping of keys, "
                       "not a list"):
        load(json_text="[1]")


@pytest.mark.parametrize("old, new, key, lines", [
    # a second gradient_flow section (PyYAML would keep only the second: 30 cells, not 120)
    ("compare: []", "compare: []\ngradient_flow:\n  models: lstm\n", "gradient_flow",
     (12, DEFAULT.count("\n") + 1)),
    # a key repeated inside a section
    ("  hidden: 32\n  input_size: 8", "  hidden: 32\n  hidden: 64\n  input_size: 8", "hidden",
     (15, 16)),
])
def test_a_repeated_key_is_refused_naming_it_and_both_lines(tmp_path, old, new, key, lines):
    assert old in DEFAULT
    path = tmp_path / "dup.yaml"
    path.write_text(DEFAULT.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load(path)
    msg = str(err.value)
    assert (f"the key {key!r} appears twice in one mapping (line {lines[0]} and line "
            f"{lines[1]})") in msg and str(path) in msg, msg


def test_yaml_merge_keys_and_the_default_config_still_load():
    assert parse_yaml("a: &x {p: 1, q: 2}\nb:\n  <<: *x\n  q: 3\n", "t") == {
        "a": {"p": 1, "q": 2}, "b": {"p": 1, "q": 3}}
    assert load(REPO / "config" / "config.yaml") == validate(parse_yaml(DEFAULT, "t"))


def test_snakemake_refuses_a_repeated_key_in_its_configfile(tmp_path, snakemake_env):
    path = tmp_path / "dup.yaml"
    path.write_text(DEFAULT.replace("  hidden: 32\n", "  hidden: 32\n  hidden: 64\n", 1))
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--directory",
         str(tmp_path), "--configfile", str(path)],
        capture_output=True, text=True, env=snakemake_env, timeout=120)
    assert run.returncode != 0
    assert "the key 'hidden' appears twice in one mapping (line 15 and line 16)" in (
        run.stdout + run.stderr)


@pytest.mark.parametrize("cfg, expect", [
    ({"claims": {"seeds": []}}, "config key claims.seeds: [] needs at least 1 item(s); "
     "allowed: a list of at least 1 item(s), each value once, each integer >= 0"),
    ({"gradient_flow": {"models": []}}, "config key gradient_flow.models: [] needs at least 1"),
    ({"gradient_flow": {"seeds": [0, 3, 0]}}, "config key gradient_flow.seeds: [0, 3, 0] must "
     "list each value once (0 is repeated)"),
    ({"gradient_flow": {"weight_scale": [2, 1.0, 1]}}, "(1 is repeated)"),  # 1 == 1.0 in JSON
    ({"long_range": {"clip": [None, 1.0, None]}}, "(None is repeated)"),
    ({"compare": ["results/a", "results/a"]}, "('results/a' is repeated); allowed: a list, each "
     "value once"),
])
def test_a_short_or_repeating_list_is_named_as_such(cfg, expect):
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert expect in str(err.value), err.value


def test_a_bad_item_is_still_named_before_a_repeat():
    with pytest.raises(ConfigError, match=r"gradient_flow.seeds\[1\]: -1 is not allowed"):
        validate({"gradient_flow": {"seeds": [0, -1, 0]}})
