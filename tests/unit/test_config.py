"""Settings in layers (defaults, TOML, environment, flags), where each came from, and every
mistake reported at once, one line each."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragserve.cli import main
from ragserve.config import DEFAULT_PRESETS, Settings, describe, load_settings
from ragserve.errors import InputError


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ragserve.toml"
    path.write_text(text)
    return path


def test_later_layers_win_and_sources_say_which(tmp_path: Path) -> None:
    config = toml(tmp_path, 'port = 9001\nn_ctx = 1024\nindexes = ["a", "b"]\nmax_queued = 8\n')
    env = {"RAGSERVE_PORT": "9002", "RAGSERVE_DATA": "/data", "RAGSERVE_DETERMINISTIC": "off"}
    s, src = load_settings(config, {"n_ctx": 512, "host": None}, env)
    assert (s.port, s.n_ctx, s.indexes, s.max_queued) == (9002, 512, ("a", "b"), 8)
    assert s.data_dir == Path("/data") and s.deterministic is False
    assert src["port"] == "RAGSERVE_PORT" and src["n_ctx"] == "--n-ctx"
    assert src["max_queued"] == str(config) and src["host"] == "default"
    assert s.served_indexes() == ["python-docs", "a", "b"]


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    config = toml(tmp_path, "rate_limit = 5\n")
    s, _ = load_settings(None, {}, {"RAGSERVE_CONFIG": str(config)})
    assert s.rate_limit == 5


def test_every_mistake_is_one_line(tmp_path: Path) -> None:
    config = toml(tmp_path, 'prot = 1\nn_ctx = "big"\nslots = 0\ndefault_model = "gpt-5"\n')
    with pytest.raises(InputError) as e:
        load_settings(config, {}, {"RAGSERVE_MAX_QUEUED": "many", "RAGSERVE_API_KEYS": "short"})
    lines = e.value.message.splitlines()[1:]
    assert len(lines) == 6, lines
    text = "\n".join(lines)
    assert "unknown setting 'prot' (did you mean 'port'?)" in text
    assert "n_ctx: expected an integer, got 'big'" in text
    assert "RAGSERVE_MAX_QUEUED: max_queued: expected an integer" in text
    assert "slots: must be at least 1" in text
    assert "default_model: 'gpt-5' is not a preset" in text
    assert "RAGSERVE_API_KEYS: api_keys: every key must be at least 8 characters" in text


def test_bad_toml_and_missing_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not valid TOML"):
        load_settings(toml(tmp_path, "port = \n"), {}, {})
    with pytest.raises(InputError, match="no such config file"):
        load_settings(tmp_path / "absent.toml", {}, {})


def test_presets_add_to_the_built_in_ones_and_are_checked(tmp_path: Path) -> None:
    config = toml(
        tmp_path,
        'indexes = ["wiki"]\n[presets.wiki-auto]\nstrategy = "auto_rag"\nindex = "wiki"\n'
        "max_iterations = 3\nspeculative = true\n",
    )
    s, _ = load_settings(config, {}, {})
    assert set(DEFAULT_PRESETS) < set(s.presets)
    p = s.presets["wiki-auto"]
    assert (p.strategy, p.index, p.max_iterations, p.speculative) == ("auto_rag", "wiki", 3, True)
    bad = toml(tmp_path, '[presets.x]\nstrategy = "magic"\nindx = "a"\n')
    with pytest.raises(InputError, match="unknown field 'indx' \\(did you mean 'index'\\?\\)"):
        load_settings(bad, {}, {})
    bad = toml(tmp_path, '[presets.x]\nstrategy = "magic"\nindex = "elsewhere"\n')
    with pytest.raises(InputError) as e:
        load_settings(bad, {}, {})
    assert "unknown strategy 'magic'" in e.value.message
    assert "index 'elsewhere' is not served" in e.value.message


def test_defaults_read_nothing_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGSERVE_PORT", "1234")
    assert Settings().port == 8000 and Settings.load().port == 1234


def test_secrets_are_masked(tmp_path: Path) -> None:
    s, src = load_settings(None, {}, {"RAGSERVE_API_KEYS": "k-00000001,k-00000002",
                                      "RAGSERVE_ADMIN_KEY": "adm-000001"})  # fmt: skip
    rows = {name: (value, source) for name, value, source in describe(s, src)}
    assert rows["api_keys"] == ("<2 keys>", "RAGSERVE_API_KEYS")
    assert rows["admin_key"][0] == "<set>"


def test_config_show_prints_values_and_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGSERVE_SLOTS", "3")
    config = toml(tmp_path, "n_ctx = 1024\n")
    assert main(["config", "show", "--config", str(config), "--port", "9100"]) == 0
    out = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert out["port"].split()[1:] == ["9100", "(--port)"]
    assert out["slots"].split()[1:] == ["3", "(RAGSERVE_SLOTS)"]
    assert out["n_ctx"].endswith(f"({config})")
    assert main(["config", "show", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_shard_settings_are_checked() -> None:
    env = {"RAGSERVE_SHARD_FAILURE": "ignore", "RAGSERVE_SHARD_REPLICAS": "0"}
    with pytest.raises(InputError) as e:
        load_settings(None, {"shard_timeout": -1.0}, env)
    text = e.value.message
    assert (
        "RAGSERVE_SHARD_FAILURE" in text and "unknown mode 'ignore'; use error or partial" in text
    )
    assert "shard_replicas: must be at least 1" in text
    assert "shard_timeout: must be a positive number of seconds" in text
    settings, sources = load_settings(None, {"ray_address": "auto"}, {"RAGSERVE_SHARD_CPUS": "0.5"})
    assert (settings.ray_address, settings.shard_cpus) == ("auto", 0.5)
    assert sources["ray_address"] == "--ray-address"  # also spelt --ray
