"""Typed settings in one place, in four layers (later wins): defaults, a TOML file (``--config``
or ``RAGSERVE_CONFIG``), ``RAGSERVE_*`` environment variables, command-line flags.

``load_settings`` records where each value came from (``ragserve config show``) and reports every
mistake at once, one line each, before anything loads. Every default runs on a laptop with no
downloads.
"""

from __future__ import annotations

import difflib
import os
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from ragserve.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STRATEGIES = ("single", "auto_rag", "ralm", "none")


@dataclass(frozen=True)
class Preset:
    """What a served model id means: how requests naming it retrieve. A request's ``rag`` object
    overrides any of it; ``None`` leaves the server's default."""

    strategy: str = "single"
    index: str | None = None
    retriever: str | None = None
    k: int | None = None
    max_iterations: int | None = None
    speculative: bool | None = None
    description: str = ""


DEFAULT_PRESETS: Mapping[str, Preset] = types.MappingProxyType(
    {
        "ragserve": Preset("single", description="retrieve once, answer over the passages"),
        "ragserve-single": Preset("single", description="retrieve once, answer over the passages"),
        "ragserve-auto": Preset("auto_rag", description="Auto-RAG: the model retrieves in turns"),
        "ragserve-ralm": Preset("ralm", description="In-Context RaLM: retrieve every 4 tokens"),
        "ragserve-none": Preset("none", description="no retrieval: the model alone"),
    }
)


@dataclass(frozen=True)
class Settings:
    index_dir: Path = Path("indexes")
    index: str = "python-docs"  # the default index
    indexes: tuple[str, ...] = ()  # more indexes served beside it (``rag.index`` picks one)
    data_dir: Path = Path("../shared/data")
    generator: str = "llama_cpp"
    model: str | None = None
    upstream: str | None = None
    tokenizer: str | None = None
    n_ctx: int = 4096
    n_threads: int | None = None
    # Requests the llama.cpp backend decodes together, each with an n_ctx-token KV cache.
    slots: int = 8
    # Outputs that do not depend on what else is batched (speculation needs it); off is faster.
    deterministic: bool = True
    host: str = "127.0.0.1"
    port: int = 8000
    retriever: str | None = None
    top_k: int = 4
    max_tokens: int = 256
    max_queued: int = 64  # requests in flight before 503
    # 1 MiB holds a prompt many times the size of any context window this server runs.
    max_body_bytes: int = 1 << 20
    default_model: str = "ragserve"  # the preset a request without ``model`` gets
    presets: Mapping[str, Preset] = field(default_factory=lambda: DEFAULT_PRESETS)
    max_iterations: int = 10  # the most auto_rag turns a request may ask for
    api_keys: tuple[str, ...] = ()  # bearer keys; none: the API is open
    admin_key: str | None = None  # guards /admin routes; none: they answer 403
    rate_limit: int | None = None  # requests per key (or per client address) per rate_period
    rate_period: float = 60.0
    request_timeout: float = 300.0  # seconds a request may run: 504, or an SSE error event
    drain_timeout: float = 30.0  # seconds in-flight requests get to finish after SIGTERM
    # Sharded indexes: their shards run on this Ray cluster ("local": start one), else in-process.
    ray_address: str | None = None
    shard_replicas: int = 1  # Ray Serve replicas per shard
    shard_cpus: float = 1.0  # CPUs each replica reserves on the Ray cluster
    shard_timeout: float = 10.0  # seconds a shard may take before it counts as down
    shard_failure: str = "error"  # a shard down: "error" (503), or "partial" results and a warning

    def with_overrides(self, **overrides: Any) -> Settings:
        """Apply flag values that were given (``None`` means "not given")."""
        return load_settings(base=self, flags=overrides, environ={})[0]

    def served_indexes(self) -> list[str]:
        return list(dict.fromkeys((self.index, *self.indexes)))

    @classmethod
    def load(cls, config: str | Path | None = None, **flags: Any) -> Settings:
        return load_settings(config, flags)[0]


# Environment names that are not RAGSERVE_<FIELD>; settings that never come from the environment.
ENV_NAMES = {"data_dir": "RAGSERVE_DATA"}
NOT_FROM_ENV = frozenset({"presets"})
SECRET = frozenset({"api_keys", "admin_key"})


def env_name(name: str) -> str:
    return ENV_NAMES.get(name, f"RAGSERVE_{name.upper()}")


def load_settings(
    config: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    base: Settings | None = None,
) -> tuple[Settings, dict[str, str]]:
    """The effective settings and, per field, where its value came from. Every mistake in the
    file, the environment or the flags is collected; one ``InputError`` lists them all."""
    environ = os.environ if environ is None else environ
    base = base or Settings()
    hints = get_type_hints(Settings)
    known = {f.name for f in fields(Settings)}
    values: dict[str, Any] = {}
    sources = {name: "default" for name in known}
    problems: list[str] = []

    config = config or environ.get("RAGSERVE_CONFIG")
    if config:
        where = str(config)
        for name, raw in _read_toml(Path(config), problems).items():
            if name not in known:
                problems.append(f"{where}: unknown setting {name!r}{_did_you_mean(name, known)}")
                continue
            _take(values, sources, problems, name, raw, hints[name], where, text=False)
    for name in sorted(known - NOT_FROM_ENV):
        if (raw := environ.get(env_name(name))) is not None:
            _take(values, sources, problems, name, raw, hints[name], env_name(name), text=True)
    for name, raw in (flags or {}).items():
        if name in known and raw is not None:
            flag = f"--{name.replace('_', '-')}"
            _take(
                values, sources, problems, name, raw, hints[name], flag, text=isinstance(raw, str)
            )
    settings = replace(base, **values)
    problems.extend(_check(settings, sources))
    if problems:
        raise InputError("invalid settings:\n  " + "\n  ".join(problems))
    return settings, sources


def _read_toml(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        problems.append(f"{path}: no such config file")
    except (OSError, UnicodeDecodeError) as e:
        problems.append(f"{path}: cannot read: {e}")
    except tomllib.TOMLDecodeError as e:
        problems.append(f"{path}: not valid TOML: {e}")
    return {}


def _did_you_mean(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _take(
    values: dict[str, Any],
    sources: dict[str, str],
    problems: list[str],
    name: str,
    raw: Any,
    hint: Any,
    where: str,
    *,
    text: bool,
) -> None:
    try:
        values[name] = _presets(raw, where) if name == "presets" else _convert(raw, hint, text)
        sources[name] = where
    except (TypeError, ValueError) as e:
        problems.append(f"{where}: {name}: {e}")


def _convert(raw: Any, hint: Any, text: bool) -> Any:
    """``raw`` as the field's type; ``text``: it came from the environment or a flag."""
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) in (Union, types.UnionType):
        if raw is None or (text and raw.strip().lower() in ("", "none", "null")):
            return None
        return _convert(raw, args[0], text)
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        if text and raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if text and raw.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise ValueError(f"expected an integer, got {raw!r}")
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
    if hint is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise ValueError(f"expected a number, got {raw!r}")
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
    if hint in (str, Path):
        if not isinstance(raw, (str, Path)):
            raise ValueError(f"expected a string, got {raw!r}")
        return hint(raw)
    if get_origin(hint) is tuple:
        items = [s.strip() for s in raw.split(",")] if isinstance(raw, str) else raw
        if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
            raise ValueError(f"expected a list of strings, got {raw!r}")
        return tuple(s for s in items if s)
    raise TypeError(f"cannot read a {hint} setting")  # pragma: no cover


def _presets(raw: Any, where: str) -> Mapping[str, Preset]:
    """``[presets.NAME]`` tables, added to (or replacing) the built-in presets."""
    if not isinstance(raw, dict):
        raise ValueError("expected a table of [presets.NAME] tables")
    out = dict(DEFAULT_PRESETS)
    hints = get_type_hints(Preset)
    for name, table in raw.items():
        if not isinstance(table, dict):
            raise ValueError(f"{name}: expected a table")
        unknown = set(table) - set(hints)
        if unknown:
            first = sorted(unknown)[0]
            raise ValueError(f"{name}: unknown field {first!r}{_did_you_mean(first, set(hints))}")
        out[name] = Preset(**{k: _convert(v, hints[k], False) for k, v in table.items()})
    return types.MappingProxyType(out)


def _check(s: Settings, sources: Mapping[str, str]) -> list[str]:
    """Values of the right type that still make no sense, each named with where it came from."""
    out: list[str] = []

    def bad(name: str, why: str) -> None:
        out.append(f"{sources[name]}: {name}: {why}")

    for name in ("n_ctx", "slots", "port", "top_k", "max_tokens", "max_queued", "max_body_bytes"):
        if getattr(s, name) < 1:
            bad(name, "must be at least 1")
    if not 1 <= s.max_iterations <= 20:
        bad("max_iterations", "must be between 1 and 20")
    if s.n_threads is not None and s.n_threads < 1:
        bad("n_threads", "must be at least 1")
    if s.rate_limit is not None and s.rate_limit < 1:
        bad("rate_limit", "must be at least 1 (leave it out for no limit)")
    if s.shard_replicas < 1:
        bad("shard_replicas", "must be at least 1")
    if s.shard_cpus < 0:
        bad("shard_cpus", "must not be negative")
    if s.shard_failure not in ("error", "partial"):
        bad("shard_failure", f"unknown mode {s.shard_failure!r}; use error or partial")
    for name in ("rate_period", "request_timeout", "drain_timeout", "shard_timeout"):
        if not getattr(s, name) > 0:
            bad(name, "must be a positive number of seconds")
    if s.generator not in ("llama_cpp", "openai", "vllm"):
        bad("generator", f"unknown generator {s.generator!r}; use llama_cpp, openai or vllm")
    served = s.served_indexes()
    for name, p in s.presets.items():
        if p.strategy not in STRATEGIES:
            bad("presets", f"{name}: unknown strategy {p.strategy!r}; use {', '.join(STRATEGIES)}")
        if p.index is not None and p.index not in served:
            bad("presets", f"{name}: index {p.index!r} is not served (served: {', '.join(served)})")
    if s.default_model not in s.presets:
        bad("default_model", f"{s.default_model!r} is not a preset ({', '.join(s.presets)})")
    if any(len(k) < 8 for k in s.api_keys):
        bad("api_keys", "every key must be at least 8 characters")
    return out


def describe(settings: Settings, sources: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(name, value, source) per setting, secrets masked: what ``ragserve config show`` prints."""
    rows = []
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if f.name in SECRET and value:
            shown = f"<{len(value)} keys>" if isinstance(value, tuple) else "<set>"
        elif f.name == "presets":
            shown = ", ".join(f"{n}={p.strategy}" for n, p in value.items())
        elif isinstance(value, tuple):
            shown = ",".join(value)
        else:
            shown = str(value)
        rows.append((f.name, shown, sources.get(f.name, "default")))
    return rows
