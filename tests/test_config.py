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
        ({"colour": "red"},
         "unknown config key colour; allowed keys under <top level>: allow_large, allow_tf32"),
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
    out = subprocess.run([sys.executable, "-m", "bpttbench.cli", "plan", "validate", str(path)],
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


# --- NaN, infinity and upper bounds (issue 19) -------------------------------------------

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(("config", "key", "reason"), [
    # the five wrong values the issue found accepted
    ({"gradient_flow": {"bias_scale": NAN}}, "gradient_flow.bias_scale", "NaN and infinity"),
    ({"claims": {"pascanu": {"sweep_spectral_norm": [NAN]}}},
     "claims.pascanu.sweep_spectral_norm[0]", "NaN and infinity"),
    ({"gradient_flow": {"weight_scale": 1e300}}, "gradient_flow.weight_scale", "float range"),
    ({"claims": {"float32": {"clip_max_len": 1e300}}}, "claims.float32.clip_max_len",
     "integer >= 10, <= 1000000 (time and memory"),
    ({"long_range": {"threads": 10**12}}, "long_range.threads", "above the limit 1024"),
    # more of the same kind
    ({"claims": {"z": INF}}, "claims.z", "NaN and infinity"),
    ({"long_range": {"lr": -INF}}, "long_range.lr", "NaN and infinity"),
    ({"gradient_flow": {"hidden": 32.0}}, "gradient_flow.hidden", "integer"),
    ({"gradient_flow": {"seq_len": [50, 10**7]}}, "gradient_flow.seq_len[1]", "time and memory"),
    ({"claims": {"gating": {"gate_bias": [0.0, -1e4]}}}, "claims.gating.gate_bias[1]",
     "below the limit -100"),
    ({"bench": {"max_memory_gib": 1e6}}, "bench.max_memory_gib", "memory"),
])
def test_non_finite_and_huge_values_are_refused_with_key_and_reason(config, key, reason):
    with pytest.raises(ConfigError) as err:
        validate(config)
    msg = str(err.value)
    assert f"config key {key}:" in msg and reason in msg, msg


def test_allow_large_lifts_soft_limits_only():
    big = {"long_range": {"threads": 4096}, "gradient_flow": {"weight_scale": [0.5, 5000.0]}}
    with pytest.raises(ConfigError, match="allow_large: true lifts it"):
        validate(big)
    cfg = validate({**big, "allow_large": True})
    assert cfg["long_range"]["threads"] == 4096 and cfg["gradient_flow"]["weight_scale"][1] == 5000
    # NaN and hard limits stay
    for bad in ({"gradient_flow": {"input_scale": NAN}}, {"gradient_flow": {"seeds": [2**40]}}):
        with pytest.raises(ConfigError, match="NaN and infinity|a hard limit"):
            validate({**bad, "allow_large": True})
    # allow_large is not filled in as a default: configs (and their hashes) stay as they were
    assert "allow_large" not in validate({})


def test_cell_memory_estimate_is_bounded():
    cfg = {"gradient_flow": {"seq_len": 100_000, "batch": 4096, "hidden": 512}}
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    # 1e5 * 4096 * 512 * 16 vectors * 4 bytes = 12500 GiB
    assert "about 12500 GiB" in str(err.value) and "gradient_flow.seq_len" in str(err.value)
    assert validate({**cfg, "allow_large": True})["gradient_flow"]["batch"] == 4096


def test_every_numeric_key_has_an_upper_bound_with_a_reason() -> None:
    """Walk the schema: every number or integer a config can hold has x-limit (with why) or a
    maximum. A new key should use a bounded def (size, batch, length, count, scale, ...)."""
    from bpttbench.config import _deref, schema

    root = schema()
    unbounded: list[str] = []

    def walk(node: dict, path: str) -> None:
        node = _deref(root, node)
        for alt in node.get("oneOf", []):
            walk(alt, path)
        if node.get("type") in ("number", "integer"):
            limit = node.get("x-limit", {})
            if not (limit.get("why") and "max" in limit) and not (
                    "maximum" in node or "exclusiveMaximum" in node):
                unbounded.append(path)
        for key, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{key}" if path else key)
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(root, "")
    assert not unbounded, f"numeric keys without an upper bound: {unbounded}"
