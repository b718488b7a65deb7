"""Config files and config text that are not a config: one clear ConfigError (a line from the
CLI, never a traceback) naming the file, where in it, and what a config is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bpttbench.cli import main
from bpttbench.config import ConfigError, load, validate
from bpttbench.config_files import parse_yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT = (REPO / "config" / "config.yaml").read_text()


def _cli_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    # one error (a config error lists each bad key on its own line), never a traceback
    assert "Traceback" not in err and err.startswith("bpttbench ") and " error: " in err, err
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


# --- the claims' checks across keys: refused by validate, before any job ---------------

@pytest.mark.parametrize("claims, expect", [
    ({"depth": {"warmup": 80, "seq_len": 150}},
     "claims.depth.warmup=80 leaves fewer than 4 lags of seq_len=150"),
    ({"gating": {"warmup": 60, "seq_len": 120}}, "claims.gating.warmup=60 leaves fewer"),
    ({"gating": {"forget_bias_seq_len": 1000}}, "leaves 400 lags, fewer than 4 memory times"),
    ({"mean_field": {"warmup": 99, "seq_len": 200}}, "claims.mean_field.warmup=99"),
    ({"mean_field": {"calibration_seeds": [7, 100]}}, "must not overlap claims.seeds"),
    ({"mean_field": {"calibration_hidden": [64, 40]}}, "must not overlap"),
    ({"mean_field": {"calibration_hidden": [40]}}, "needs two or more sizes"),
    ({"tied_untied": {"fit_from": 301, "steps": 600}},
     "claims.tied_untied.fit_from=301 must be at most half of steps=600"),
    ({"pascanu": {"warmup": 100, "seq_len": 100}}, "claims.pascanu.warmup=100 must be below"),
])
def test_claim_settings_across_keys_are_refused_by_validate(claims, expect):
    cfg = parse_yaml(DEFAULT, "t")
    for section, keys in claims.items():
        cfg["claims"][section].update(keys)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert f"config key {expect}" in str(err.value) or expect in str(err.value), err.value
    # a claim that is not run never uses its sub-section: not checked
    cfg["claims"]["run"] = [c for c in cfg["claims"]["run"]
                            if c.split("_", 1)[1] not in claims]
    validate(cfg)


def test_plan_validate_refuses_a_claim_setting_across_keys(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(DEFAULT.replace("    fit_from: 60 ", "    fit_from: 400 ", 1))
    err = _cli_error(capsys, ["plan", "validate", str(path)])
    assert "claims.tied_untied.fit_from=400 must be at most half of steps=600" in err


def test_the_default_configs_pass_the_claim_checks():
    for path in sorted((REPO / "config").glob("*.yaml")):
        load(path)


# --- job inputs given by hand: every key checked before any work ----------------------

def _block_spec() -> list[dict]:
    import json

    from bpttbench.config import block_to_json, blocks_by_id

    cells = next(iter(blocks_by_id(load(REPO / "config" / "config.yaml")).values()))
    return json.loads(block_to_json(cells[:2]))


@pytest.mark.parametrize("key, value, allowed", [
    ("model", "transformer", "one of rnn_tanh, rnn_relu, rnn_linear, lstm, gru"),
    ("dtype", "float8", "one of float32, float64, float16, bfloat16"),
    ("seq_len", 0, "integer >= 1"),
    ("hidden", [32], "integer >= 1"),  # one cell has one size
    ("weight_scale", -1.0, "number > 0"),
    ("precision", "float8", "one of none, float16, bfloat16"),
])
def test_a_bad_cell_spec_names_the_key_and_the_allowed_values(tmp_path, capsys, key, value,
                                                              allowed):
    import json

    spec = _block_spec()
    spec[1][key] = value
    out = tmp_path / "cells.json"
    err = _cli_error(capsys, ["gradient-flow", "block", "--spec", json.dumps(spec),
                              "--out", str(out)])
    assert f"--spec cell 1: key {key}: {value!r} is not allowed; allowed: {allowed}" in err, err
    assert not out.exists()


def test_a_cell_spec_with_missing_or_unknown_keys_is_named(capsys):
    err = _cli_error(capsys, ["gradient-flow", "block", "--spec", '[{"model": "lstm", "x": 1}]',
                              "--out", "never.json"])
    assert "--spec cell 0: unknown key(s) x; missing key(s) init, hidden" in err
    err = _cli_error(capsys, ["gradient-flow", "block", "--spec", '{"model": "lstm"}',
                              "--out", "never.json"])
    assert "--spec: a block is a JSON list of cell specs, got dict" in err
    spec = _block_spec()
    spec[0].update(precision="float16", dtype="float64")
    from bpttbench.jobspec import block_from_json

    with pytest.raises(ConfigError, match="autocast .float16. runs a float32 model"):
        block_from_json(__import__("json").dumps(spec))


def test_a_bad_run_spec_names_the_run_and_the_key(capsys):
    import json

    from bpttbench.long_range.spec import runs_to_json
    from bpttbench.planning.jobs import Plan

    runs = next(iter(Plan(load(REPO / "config" / "config.yaml")).long_range.values()))
    spec = json.loads(runs_to_json(runs))
    spec[0]["model"] = "transformer"
    err = _cli_error(capsys, ["long-range", "run", "--spec", json.dumps(spec), "--out",
                              "never.json"])
    assert "--spec run 0: key model: 'transformer' is not allowed; allowed: one of" in err


def test_report_manifest_takes_only_a_complete_config_and_a_tag_name(tmp_path, capsys):
    from bpttbench.planning.jobs import config_json

    summary = tmp_path / "summary.csv"
    summary.write_text("status\nok\n")
    full = config_json(load(REPO / "config" / "config.yaml"))
    base = ["report", "manifest", "--summary", str(summary), "--out", str(tmp_path / "m.json")]
    err = _cli_error(capsys, [*base, "--config-json", "{}", "--hw-tag", "cpu-x"])
    assert "--config-json lacks the key(s) hardware_tag, device" in err
    err = _cli_error(capsys, [*base, "--config-json", '{"dtype": "f"}', "--hw-tag", "cpu-x"])
    assert "--config-json: invalid bpttbench config:" in err.replace("\n", "")
    for tag in ("../../x", "auto", ""):
        err = _cli_error(capsys, [*base, "--config-json", full, "--hw-tag", tag])
        assert f"--hw-tag {tag!r} is not a result set's tag" in err
    assert not (tmp_path / "m.json").exists()


def test_the_checks_find_each_claims_section_as_the_registry_does():
    from bpttbench.claims import CLAIMS
    from bpttbench.claims.checks import claim_section

    assert {c: claim_section(c) for c in CLAIMS} == {c: s.section for c, s in CLAIMS.items()}
