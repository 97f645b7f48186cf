"""Configuration: one frozen, validated value object.

:class:`BackpressureConfig` carries the seed design's fields in snake_case plus
this package's options.  It is validated once, at construction: every problem
is collected into one :class:`~backpressure_client.ConfigError`.  Credentials in
the monitoring URL never appear in its repr or in any error message.

Environment variables (:meth:`BackpressureConfig.from_env`):

=================================================  ============================================
variable                                           field
=================================================  ============================================
``BACKPRESSURE_ENABLED``                           ``enable_backpressure``
``BACKPRESSURE_MONITORING_URL``                    ``backpressure_monitoring_url``
``BACKPRESSURE_QUERIES``                           ``backpressure_queries`` (see below)
``BACKPRESSURE_WINDOW_MIN``                        ``congestion_window_min``
``BACKPRESSURE_WINDOW_MAX``                        ``congestion_window_max``
``BACKPRESSURE_CADENCE``                           ``monitoring_cadence`` (seconds)
``BACKPRESSURE_QUERY_TIMEOUT``                     ``query_timeout`` (seconds)
``BACKPRESSURE_STALE_AFTER``                       ``stale_after`` (seconds)
``BACKPRESSURE_FAILURE_POLICY``                    ``failure_policy``
``BACKPRESSURE_WAIT_TIMEOUT``                      ``wait_timeout`` (seconds)
``BACKPRESSURE_MAX_WAITERS``                       ``max_waiters``
``BACKPRESSURE_WINDOW_POLICY``                     ``window_policy``: ``default`` or ``seed``
``BACKPRESSURE_WINDOW_INCREASE_STEP``              ``window_policy.increase_step``
``BACKPRESSURE_WINDOW_DECREASE_FACTOR``            ``window_policy.decrease_factor``
``BACKPRESSURE_WINDOW_MIN_UTILISATION``            ``window_policy.min_utilisation``
``BACKPRESSURE_WINDOW_DECREASE_ONCE_PER_READING``  ``window_policy.decrease_once_per_reading``
``BACKPRESSURE_WINDOW_DECREASE_ONCE_PER_RTT``      ``window_policy.decrease_once_per_rtt``
``BACKPRESSURE_WINDOW_REACT_TO_DROPS``             ``window_policy.react_to_drops``
``BACKPRESSURE_WINDOW_INCREASE_PER``               ``window_policy.increase_per``
``BACKPRESSURE_WINDOW_SLOW_START``                 ``window_policy.slow_start``
=================================================  ============================================

``BACKPRESSURE_QUERIES`` holds one query per line, or a JSON list of strings.
Booleans read ``1``/``true``/``yes``/``on`` and ``0``/``false``/``no``/``off``.
An empty variable counts as unset.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal
from urllib.parse import urlsplit

from ._errors import ConfigError
from ._redact import redact_text, redact_url
from ._window import WindowPolicy

__all__ = ["BackpressureConfig", "FailurePolicy"]

FailurePolicy = Literal["fail_open", "fail_closed"]

_ENV: dict[str, str] = {
    "enable_backpressure": "BACKPRESSURE_ENABLED",
    "backpressure_monitoring_url": "BACKPRESSURE_MONITORING_URL",
    "backpressure_queries": "BACKPRESSURE_QUERIES",
    "congestion_window_min": "BACKPRESSURE_WINDOW_MIN",
    "congestion_window_max": "BACKPRESSURE_WINDOW_MAX",
    "monitoring_cadence": "BACKPRESSURE_CADENCE",
    "query_timeout": "BACKPRESSURE_QUERY_TIMEOUT",
    "stale_after": "BACKPRESSURE_STALE_AFTER",
    "failure_policy": "BACKPRESSURE_FAILURE_POLICY",
    "wait_timeout": "BACKPRESSURE_WAIT_TIMEOUT",
    "max_waiters": "BACKPRESSURE_MAX_WAITERS",
}
_POLICY_ENV_PREFIX = "BACKPRESSURE_WINDOW_"
_POLICY_FIELDS = tuple(f.name for f in fields(WindowPolicy))


@dataclass(frozen=True)
class BackpressureConfig:
    """How a :class:`~backpressure_client.Backpressure` limiter behaves.

    :param enable_backpressure: when false the limiter admits every request
        (it still counts them) and its repr says so.
    :param backpressure_monitoring_url: the Prometheus server, as a base URL
        (``http://prometheus:9090``) or as the seed gives it
        (``http://prometheus:9090/api/v1/query``).  ``None`` when no PromQL
        queries are used.  User-info in it is used but never shown.
    :param backpressure_queries: PromQL queries; each one *fires* while its
        instant query returns a non-empty result.
    :param congestion_window_min: the smallest window and the starting one,
        in requests (>= 1).
    :param congestion_window_max: the largest window, in requests (>= min).
    :param monitoring_cadence: seconds between two polls of a signal (> 0).
    :param query_timeout: seconds one signal query may take (> 0, below
        the cadence); ``None`` means a quarter of the cadence, at most 10 s.
    :param stale_after: seconds after which a signal whose polls keep failing
        stops counting its last good reading; ``None`` means 3 cadences.
    :param failure_policy: what a stale signal counts as: ``"fail_open"``
        (not firing) or ``"fail_closed"`` (firing).
    :param wait_timeout: seconds a caller waits for a slot by default; ``0``
        (the default) fails fast with ``BackpressureError``.
    :param max_waiters: callers that may wait at once; more are rejected
        with ``QueueFullError``.
    :param window_policy: how the window grows and shrinks; see
        :class:`~backpressure_client.WindowPolicy`.
    """

    enable_backpressure: bool = True
    backpressure_monitoring_url: str | None = field(default=None, repr=False)
    backpressure_queries: tuple[str, ...] = ()
    congestion_window_min: int = 10
    congestion_window_max: int = 100
    monitoring_cadence: float = 60.0
    query_timeout: float | None = None
    stale_after: float | None = None
    failure_policy: FailurePolicy = "fail_open"
    wait_timeout: float = 0.0
    max_waiters: int = 1024
    window_policy: WindowPolicy = field(default_factory=WindowPolicy)

    def __post_init__(self) -> None:
        queries = self.backpressure_queries
        if isinstance(queries, Iterable) and not isinstance(queries, (str, bytes, tuple)):
            object.__setattr__(self, "backpressure_queries", tuple(queries))
        problems = self._problems()
        if problems:
            raise ConfigError(problems)

    # -- validation -----------------------------------------------------

    def _problems(self) -> list[str]:
        out: list[str] = []
        if not isinstance(self.enable_backpressure, bool):
            out.append(f"enable_backpressure={self.enable_backpressure!r}: must be true or false")
        lo, hi = self.congestion_window_min, self.congestion_window_max
        lo_ok = _is_int(lo) and lo >= 1
        if not lo_ok:
            out.append(f"congestion_window_min={lo!r}: must be an integer >= 1")
        if not _is_int(hi) or hi < 1:
            out.append(f"congestion_window_max={hi!r}: must be an integer >= 1")
        elif lo_ok and hi < lo:
            out.append(f"congestion_window_max={hi!r}: must be >= congestion_window_min ({lo!r})")
        cadence_ok = _positive(self.monitoring_cadence)
        if not cadence_ok:
            out.append(
                f"monitoring_cadence={self.monitoring_cadence!r}: must be a number of seconds > 0"
            )
        if self.query_timeout is not None:
            if not _positive(self.query_timeout):
                out.append(f"query_timeout={self.query_timeout!r}: must be a number of seconds > 0")
            elif cadence_ok and self.query_timeout >= self.monitoring_cadence:
                out.append(
                    f"query_timeout={self.query_timeout!r}: must be below "
                    f"monitoring_cadence ({self.monitoring_cadence!r} s)"
                )
        if self.stale_after is not None and not _positive(self.stale_after):
            out.append(f"stale_after={self.stale_after!r}: must be a number of seconds > 0")
        if self.failure_policy not in ("fail_open", "fail_closed"):
            out.append(
                f"failure_policy={self.failure_policy!r}: must be 'fail_open' or 'fail_closed'"
            )
        w = self.wait_timeout
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            out.append(f"wait_timeout={w!r}: must be a finite number of seconds >= 0")
        if not _is_int(self.max_waiters) or self.max_waiters < 0:
            out.append(f"max_waiters={self.max_waiters!r}: must be an integer >= 0")
        if isinstance(self.window_policy, WindowPolicy):
            out.extend(self.window_policy.problems())
        else:
            out.append(f"window_policy={self.window_policy!r}: must be a WindowPolicy")
        out.extend(self._query_problems())
        return out

    def _query_problems(self) -> list[str]:
        out: list[str] = []
        queries = self.backpressure_queries
        url = self.backpressure_monitoring_url
        queries_named = True
        if isinstance(queries, (str, bytes)):
            out.append(
                f"backpressure_queries={_short(queries)}: must be a list of query strings, "
                "not one string"
            )
            queries = ()
        elif not isinstance(queries, tuple):  # __post_init__ made any iterable a tuple
            out.append(f"backpressure_queries={_short(queries)}: must be a list of query strings")
            queries = ()
        else:
            queries_named = False
        for i, q in enumerate(queries):
            where = f"backpressure_queries[{i}]"
            if not isinstance(q, str):
                out.append(f"{where}={_short(q)}: must be a string, got {type(q).__name__}")
            elif not q.strip():
                out.append(f"{where}={q!r}: is empty")
            elif len(q.strip()) >= 2 and q.strip()[0] == q.strip()[-1] and q.strip()[0] in "\"'`":
                out.append(
                    f"{where}={_short(q)}: is wrapped in quotes; remove them "
                    "(PromQL queries are given bare)"
                )
        if url is not None:
            problem = url_problem(url)
            if problem:
                out.append(problem)
        if self.enable_backpressure:
            if url is not None and not queries and not queries_named:
                out.append(
                    "backpressure_queries=(): no queries while enable_backpressure is true and "
                    "a monitoring URL is set; give at least one PromQL query"
                )
            if url is None and queries:
                out.append(
                    "backpressure_monitoring_url=None: backpressure_queries need the "
                    "Prometheus URL to query"
                )
        return out

    # -- derived values -----------------------------------------------------

    @property
    def prometheus_base_url(self) -> str | None:
        """The Prometheus base URL: no seed-style ``/api/v1/query`` suffix, no query string.

        Query parameters of ``backpressure_monitoring_url`` (``?token=...``)
        are not part of it: the signals send them with every query.
        """
        url = self.backpressure_monitoring_url
        if url is None:
            return None
        from ._promql import split_prometheus_url  # _promql imports this module

        return split_prometheus_url(url)[0]

    @property
    def effective_query_timeout(self) -> float:
        """``query_timeout``, or its default: a quarter of the cadence, at most 10 s."""
        if self.query_timeout is not None:
            return float(self.query_timeout)
        from ._signals import default_query_timeout  # _signals imports this module

        return default_query_timeout(self.monitoring_cadence)

    @property
    def effective_stale_after(self) -> float:
        """``stale_after``, or its default: three cadences."""
        if self.stale_after is not None:
            return float(self.stale_after)
        from ._signals import default_stale_after  # _signals imports this module

        return default_stale_after(self.monitoring_cadence)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "backpressure_monitoring_url":
                shown.append(f"{f.name}={redact_url(value) if value else value!r}")
            else:
                shown.append(f"{f.name}={value!r}")
        return f"BackpressureConfig({', '.join(shown)})"

    def replace(self, **changes: Any) -> BackpressureConfig:
        """A validated copy with *changes* applied."""
        return replace(self, **changes)

    # -- loaders -------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> BackpressureConfig:
        """Build a config from a mapping of field names (for example parsed JSON or TOML).

        ``window_policy`` may be ``"seed"``, ``"default"``, a mapping of
        :class:`WindowPolicy` fields, or a ``WindowPolicy``.  Unknown keys are
        errors, reported with the rest.

        :raises ConfigError: naming every bad key and value.
        """
        known = {f.name for f in fields(cls)}
        problems = [
            f"{key!r}: unknown setting; known settings are {', '.join(sorted(known))}"
            for key in data
            if key not in known
        ]
        kwargs = {k: v for k, v in data.items() if k in known}
        if "window_policy" in kwargs:
            policy, policy_problems = _policy_from(kwargs["window_policy"])
            problems.extend(policy_problems)
            kwargs["window_policy"] = policy
        if "backpressure_queries" in kwargs and isinstance(kwargs["backpressure_queries"], list):
            kwargs["backpressure_queries"] = tuple(kwargs["backpressure_queries"])
        try:
            config = cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(problems + list(exc.problems)) from None
        if problems:
            raise ConfigError(problems)
        return config

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BackpressureConfig:
        """Build a config from ``BACKPRESSURE_*`` environment variables.

        Unset variables keep their defaults; the table in this module's
        docstring lists them.

        :param environ: the variables to read; ``os.environ`` by default.
        :raises ConfigError: naming every bad variable and value.
        """
        env = os.environ if environ is None else environ
        problems: list[str] = []
        data: dict[str, Any] = {}
        types: dict[str, Callable[[str], Any]] = {
            "enable_backpressure": _parse_bool,
            "backpressure_monitoring_url": str,
            "backpressure_queries": _parse_queries,
            "congestion_window_min": int,
            "congestion_window_max": int,
            "monitoring_cadence": float,
            "query_timeout": float,
            "stale_after": float,
            "failure_policy": str,
            "wait_timeout": float,
            "max_waiters": int,
        }
        for name, var in _ENV.items():
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            try:
                data[name] = types[name](raw.strip() if name != "backpressure_queries" else raw)
            except (ValueError, TypeError):
                shown = redact_url(raw) if name == "backpressure_monitoring_url" else raw
                problems.append(f"{var}={shown!r}: cannot be read as {_type_name(types[name])}")
        policy: dict[str, Any] = {}
        preset = env.get("BACKPRESSURE_WINDOW_POLICY", "").strip().lower()
        if preset:
            if preset in ("seed", "default"):
                data["window_policy"] = preset
            else:
                problems.append(
                    f"BACKPRESSURE_WINDOW_POLICY={preset!r}: must be 'default' or 'seed'"
                )
        for fname in _POLICY_FIELDS:
            var = _POLICY_ENV_PREFIX + fname.upper()
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            parse = _POLICY_PARSERS.get(fname, float)
            try:
                policy[fname] = parse(raw.strip())
            except ValueError:
                problems.append(f"{var}={raw!r}: cannot be read as {_type_name(parse)}")
        if policy:
            base = _policy_from(data.get("window_policy", "default"))[0]
            data["window_policy"] = replace(base, **policy)
        try:
            config = cls.from_mapping(data)
        except ConfigError as exc:
            raise ConfigError(problems + [_env_name(p) for p in exc.problems]) from None
        if problems:
            raise ConfigError(problems)
        return config


def _env_name(problem: str) -> str:
    name = problem.split("=", 1)[0].split("[", 1)[0]
    var = _ENV.get(name)
    if var is None and name.startswith("window_policy."):
        var = _POLICY_ENV_PREFIX + name.split(".", 1)[1].upper()
    return f"{problem} (from {var})" if var else problem


def _policy_from(value: Any) -> tuple[WindowPolicy, list[str]]:
    if isinstance(value, WindowPolicy):
        return value, []
    if value == "seed":
        return WindowPolicy.seed(), []
    if value == "default":
        return WindowPolicy(), []
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in _POLICY_FIELDS]
        if unknown:
            return WindowPolicy(), [
                f"window_policy.{k}: unknown setting; known settings are "
                f"{', '.join(_POLICY_FIELDS)}"
                for k in unknown
            ]
        return WindowPolicy(**value), []
    return WindowPolicy(), [
        f"window_policy={value!r}: must be 'default', 'seed' or a mapping of policy fields"
    ]


def _type_name(parse: Callable[[str], Any]) -> str:
    return str(getattr(parse, "__name__", "a value"))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _short(value: object) -> str:
    # Redact before cutting: a cut could split a URL's user-info from its "@".
    text = redact_text(repr(value))
    return text if len(text) <= 80 else text[:77] + "..."


def url_problem(url: object, field: str = "backpressure_monitoring_url") -> str | None:
    """The problem with a Prometheus *url* given as *field*, or ``None`` when it is usable.

    Shared by every place that takes a Prometheus URL; the message never
    shows credentials.
    """
    if not isinstance(url, str):
        return f"{field}={_short(url)}: must be a string"
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return f"{field}={redact_url(url)!r}: is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return (
            f"{field}={redact_url(url)!r}: must be an http:// or https:// "
            "URL with a host, such as http://prometheus:9090"
        )
    return None


def _parse_bool(raw: str) -> bool:
    text = raw.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


_parse_bool.__name__ = "bool"


def _parse_queries(raw: str) -> tuple[str, ...]:
    text = raw.strip()
    if text.startswith("["):
        loaded = json.loads(text)
        if not isinstance(loaded, list):
            raise ValueError(raw)
        return tuple(loaded)
    return tuple(line.strip() for line in text.splitlines() if line.strip())


_POLICY_PARSERS: dict[str, Callable[[str], Any]] = {
    "increase_step": int,
    "increase_per": str,
    "decrease_once_per_reading": _parse_bool,
    "decrease_once_per_rtt": _parse_bool,
    "react_to_drops": _parse_bool,
    "slow_start": _parse_bool,
}

_parse_queries.__name__ = "queries (one per line, or a JSON list)"
