"""Bad configs are refused before any job runs, naming the key and the allowed values."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from bpttbench.config import ConfigError, cells_by_id, load, validate


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"colour": "red"}, "unknown config key colour; allowed keys under <top level>: allow_tf32"),
        ({"gradient_flow": {"modles": ["gru"]}}, "unknown config key gradient_flow.modles"),
        ({"gradient_flow": {"models": ["gru", "transformer"]}},
         "config key gradient_flow.models[1]: 'transformer' is not allowed; allowed: one of "
         "rnn_tanh, rnn_relu, rnn_linear, lstm, gru"),
        ({"gradient_flow": {"seq_len": [100, 0]}},
         "config key gradient_flow.seq_len[1]: 0 is not allowed; allowed: integer >= 1"),
        ({"gradient_flow": {"hidden": -4}}, "config key gradient_flow.hidden: -4 is not allowed"),
        ({"gradient_flow": {"batch": "16"}},
         "config key gradient_flow.batch: '16' is not allowed; allowed: integer >= 1"),
        ({"gradient_flow": {"weight_scale": 0}}, "config key gradient_flow.weight_scale: 0"),
        ({"dtype": "float8"}, "config key dtype: 'float8' is not allowed; allowed: one of "
         "float32, float64, float16, bfloat16"),
        ({"device": "tpu"}, "allowed: one of auto, cpu, cuda"),
        ({"allow_tf32": "yes"}, "config key allow_tf32: 'yes' is not allowed; allowed: boolean"),
        ({"jacobian_backend": "jax"}, "allowed: one of auto, cupy, torch, numpy"),
    ],
)
def test_bad_config_is_refused_with_the_key_named(config: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(config)
    assert expected in str(err.value)


def test_defaults_fill_in_and_lists_sweep() -> None:
    cfg = validate({"gradient_flow": {"models": "gru", "seq_len": [10, 20], "weight_scale": 1.5,
                                      "seeds": [3, 4, 5]}})
    assert cfg["dtype"] == "float32" and cfg["gradient_flow"]["hidden"] == 32
    cells = cells_by_id(cfg)
    assert len(cells) == 2 * 3
    assert "gru-orthogonal-h32-T20-s1.5-seed4" in cells


def test_shipped_configs_are_valid(repo) -> None:
    for name in ("config/config.yaml", "config/gpu.yaml"):
        cfg = load(repo / name)
        assert cells_by_id(cfg)


def test_non_mapping_config_file_is_refused(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="a config must be a mapping"):
        load(path)


def test_cli_refuses_bad_config_with_exit_2(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"gradient_flow": {"models": ["lstm", "rnn_sigmoid"]}}))
    out = subprocess.run([sys.executable, "-m", "bpttbench.cli", "validate-config", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "gradient_flow.models[1]: 'rnn_sigmoid' is not allowed" in out.stderr


def test_snakemake_refuses_bad_config_before_any_job(tmp_path, repo, snakemake_env) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"gradient_flow": {"seq_len": -5}}))
    out = subprocess.run(
        ["snakemake", "-s", str(repo / "Snakefile"), "--directory", str(tmp_path), "--configfile",
         str(cfg), "-n"], capture_output=True, text=True, env=snakemake_env,
    )
    assert out.returncode != 0
    assert "config key gradient_flow.seq_len: -5 is not allowed" in out.stdout + out.stderr
    assert not (tmp_path / "results").exists()
