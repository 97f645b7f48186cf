"""Configuration: validation into one error, the loaders, the URL forms, no leaked secrets."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest

from backpressure_client import (
    Backpressure,
    BackpressureConfig,
    ConfigError,
    WindowPolicy,
    _config,
)

PROM = "http://prometheus:9090"
SIGNAL_FIELDS = {"backpressure_monitoring_url": PROM, "backpressure_queries": ("up == 0",)}


def problems_of(**kwargs: Any) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        BackpressureConfig(**kwargs)
    return info.value.problems


# -- validation ------------------------------------------------------------------


def test_defaults_are_valid_and_documented_values() -> None:
    config = BackpressureConfig()
    assert (config.congestion_window_min, config.congestion_window_max) == (10, 100)
    assert config.enable_backpressure is True
    assert config.monitoring_cadence == 60.0
    assert config.wait_timeout == 0.0
    assert config.window_policy == WindowPolicy()
    assert config.effective_query_timeout == 10.0
    assert config.effective_stale_after == 180.0


def test_every_bad_field_is_named_in_one_error() -> None:
    with pytest.raises(ConfigError) as info:
        BackpressureConfig(
            enable_backpressure="yes",  # type: ignore[arg-type]
            backpressure_monitoring_url="ftp://prometheus",
            backpressure_queries=('"up > 1"', 3, " "),  # type: ignore[arg-type]
            congestion_window_min=0,
            congestion_window_max=-5,
            monitoring_cadence=0,
            query_timeout=-1,
            stale_after=float("nan"),
            failure_policy="maybe",  # type: ignore[arg-type]
            wait_timeout=-1,
            max_waiters=-1,
            window_policy=WindowPolicy(
                increase_step=0,
                decrease_factor=1.5,
                min_utilisation=2,
                decrease_once_per_reading="yes",  # type: ignore[arg-type]
                decrease_once_per_rtt=None,  # type: ignore[arg-type]
                react_to_drops=1,  # type: ignore[arg-type]
            ),
        )
    expected = [
        "enable_backpressure='yes'",
        "backpressure_monitoring_url='ftp://prometheus'",
        "backpressure_queries[0]='\"up > 1\"'",
        "backpressure_queries[1]=3",
        "backpressure_queries[2]=' '",
        "congestion_window_min=0",
        "congestion_window_max=-5",
        "monitoring_cadence=0",
        "query_timeout=-1",
        "stale_after=nan",
        "failure_policy='maybe'",
        "wait_timeout=-1",
        "max_waiters=-1",
        "window_policy.increase_step=0",
        "window_policy.decrease_factor=1.5",
        "window_policy.min_utilisation=2",
        "window_policy.decrease_once_per_reading='yes'",
        "window_policy.decrease_once_per_rtt=None",
        "window_policy.react_to_drops=1",
    ]
    problems = info.value.problems
    for name_and_value in expected:
        named = [p for p in problems if p.startswith(name_and_value + ":")]
        assert len(named) == 1, f"{name_and_value} not named exactly once in {problems}"
        assert named[0] in str(info.value)
    assert len(problems) == len(expected)
    assert str(info.value).startswith(
        f"invalid backpressure configuration ({len(expected)} problems):\n  - "
    )


BAD_CONFIGS: dict[str, tuple[dict[str, Any], str]] = {
    "max below min": (
        {"congestion_window_min": 5, "congestion_window_max": 4},
        "congestion_window_max=4: must be >= congestion_window_min (5)",
    ),
    "min not an integer": ({"congestion_window_min": 1.5}, "congestion_window_min=1.5: "),
    "min a bool": ({"congestion_window_min": True}, "congestion_window_min=True: "),
    "cadence negative": ({"monitoring_cadence": -1}, "monitoring_cadence=-1: "),
    "cadence a string": ({"monitoring_cadence": "60"}, "monitoring_cadence='60': "),
    "cadence infinite": ({"monitoring_cadence": float("inf")}, "monitoring_cadence=inf: "),
    "query timeout not below cadence": (
        {"monitoring_cadence": 5, "query_timeout": 5},
        "query_timeout=5: must be below monitoring_cadence (5 s)",
    ),
    "no queries while enabled with a URL": (
        {"backpressure_monitoring_url": PROM},
        "backpressure_queries=(): no queries while enable_backpressure is true",
    ),
    "queries without a URL": (
        {"backpressure_queries": ("up == 0",)},
        "backpressure_monitoring_url=None: backpressure_queries need the Prometheus URL",
    ),
    "queries as one string": (
        {**SIGNAL_FIELDS, "backpressure_queries": "up == 0"},
        "backpressure_queries='up == 0': must be a list of query strings, not one string",
    ),
    "queries as None": (
        {**SIGNAL_FIELDS, "backpressure_queries": None},
        "backpressure_queries=None: must be a list of query strings",
    ),
    "query in single quotes": (
        {**SIGNAL_FIELDS, "backpressure_queries": ["'up == 0'"]},
        "backpressure_queries[0]=\"'up == 0'\": is wrapped in quotes",
    ),
    "query in backticks": (
        {**SIGNAL_FIELDS, "backpressure_queries": ["`up`"]},
        "backpressure_queries[0]='`up`': is wrapped in quotes",
    ),
    "empty query": ({**SIGNAL_FIELDS, "backpressure_queries": [""]}, "backpressure_queries[0]=''"),
    "URL without a scheme": (
        {**SIGNAL_FIELDS, "backpressure_monitoring_url": "prometheus:9090"},
        "backpressure_monitoring_url='prometheus:9090': must be an http:// or https:// URL",
    ),
    "URL without a host": (
        {**SIGNAL_FIELDS, "backpressure_monitoring_url": "http://:9090"},
        "backpressure_monitoring_url='http://:9090': must be an http:// or https:// URL",
    ),
    "URL with a bad port": (
        {**SIGNAL_FIELDS, "backpressure_monitoring_url": "http://prometheus:99999"},
        "backpressure_monitoring_url='http://prometheus:99999': is not a valid URL",
    ),
    "URL not a string": (
        {**SIGNAL_FIELDS, "backpressure_monitoring_url": 9090},
        "backpressure_monitoring_url=9090: must be a string",
    ),
    "policy given by name": ({"window_policy": "seed"}, "window_policy='seed': must be a Window"),
    "unknown failure policy": ({"failure_policy": "open"}, "failure_policy='open': must be"),
    "max_waiters a float": ({"max_waiters": 2.0}, "max_waiters=2.0: must be an integer >= 0"),
    "wait_timeout NaN": ({"wait_timeout": float("nan")}, "wait_timeout=nan: "),
}


@pytest.mark.parametrize(("kwargs", "problem"), BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_a_bad_field_is_named_with_its_value(kwargs: dict[str, Any], problem: str) -> None:
    problems = problems_of(**kwargs)
    assert len(problems) == 1, problems
    assert problems[0].startswith(problem), problems[0]


def test_one_problem_reads_as_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        BackpressureConfig(congestion_window_min=0)
    assert str(info.value) == (
        "invalid backpressure configuration: congestion_window_min=0: must be an integer >= 1"
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"enable_backpressure": False},
        {"enable_backpressure": False, "backpressure_monitoring_url": PROM},
        SIGNAL_FIELDS,
        {**SIGNAL_FIELDS, "backpressure_monitoring_url": "https://prom.example/prefix/"},
        {"congestion_window_min": 1, "congestion_window_max": 1},
        {"failure_policy": "fail_closed", "stale_after": 0.5, "query_timeout": 59.9},
        {"wait_timeout": 2, "max_waiters": 0},
        {"window_policy": WindowPolicy.seed()},
    ],
)
def test_valid_configs_are_accepted(kwargs: dict[str, Any]) -> None:
    BackpressureConfig(**kwargs)


def test_queries_given_as_any_iterable_are_stored_as_a_tuple() -> None:
    config = BackpressureConfig(
        backpressure_monitoring_url=PROM,
        backpressure_queries=["up == 0", "rate(x[5m]) > 1"],  # type: ignore[arg-type]
    )
    assert config.backpressure_queries == ("up == 0", "rate(x[5m]) > 1")
    generated = BackpressureConfig(
        backpressure_monitoring_url=PROM,
        backpressure_queries=(q for q in ["up == 0"]),  # type: ignore[arg-type]
    )
    assert generated.backpressure_queries == ("up == 0",)
    assert hash(config) == hash(config.replace())


def test_config_is_immutable_and_replace_validates() -> None:
    config = BackpressureConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.congestion_window_min = 1  # type: ignore[misc]
    assert config.replace(congestion_window_min=1).congestion_window_min == 1
    with pytest.raises(ConfigError, match="congestion_window_min=0"):
        config.replace(congestion_window_min=0)


def test_effective_timeouts_follow_the_cadence() -> None:
    config = BackpressureConfig(monitoring_cadence=8)
    assert (config.effective_query_timeout, config.effective_stale_after) == (2.0, 24.0)
    config = BackpressureConfig(monitoring_cadence=8, query_timeout=1, stale_after=5)
    assert (config.effective_query_timeout, config.effective_stale_after) == (1.0, 5.0)


# -- the monitoring URL -------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("http://prometheus:9090/api/v1/query", "http://prometheus:9090"),
        ("http://prometheus:9090/api/v1/query/", "http://prometheus:9090"),
        ("http://prometheus:9090", "http://prometheus:9090"),
        ("http://prometheus:9090/", "http://prometheus:9090"),
        ("https://example.com/prom/api/v1/query", "https://example.com/prom"),
        ("https://example.com/prom/", "https://example.com/prom"),
        (" http://prometheus:9090/api/v1/query ", "http://prometheus:9090"),
        ("http://u:p@prometheus:9090/api/v1/query", "http://u:p@prometheus:9090"),
        # The query string goes with each request, not into the base URL.
        ("http://prometheus:9090/api/v1/query?x=1", "http://prometheus:9090"),
    ],
)
def test_monitoring_url_may_be_a_base_url_or_the_seeds_query_url(given: str, base: str) -> None:
    config = BackpressureConfig(**{**SIGNAL_FIELDS, "backpressure_monitoring_url": given})
    assert config.prometheus_base_url == base


def test_no_monitoring_url_means_no_base_url() -> None:
    assert BackpressureConfig().prometheus_base_url is None


# -- secrets ---------------------------------------------------------------------------

SECRET = "s3cr3t"
SECRET_URLS = [
    f"http://alice:{SECRET}@prometheus:9090/api/v1/query",
    f"https://prom.example/api/v1/query?token={SECRET}",
    f"http://prom.example/?access_token={SECRET}&x=1",
    f"http://alice:{SECRET}@prom.example/?api_key={SECRET}",
    f"http://alice:{SECRET}@prom.example/?client_secret={SECRET}",
]
BAD_SECRET_URLS = [
    f"ftp://alice:{SECRET}@prometheus",
    f"alice:{SECRET}@prometheus:9090",
    f"http://alice:{SECRET}@prometheus:notaport",
    f"http://alice:{SECRET} x@[::1",
    f"http://alice:{SECRET}@/no-host",
    f"http://alice:pass/{SECRET}@prometheus:9090",  # unescaped "/" in the password
    f"http://alice:pass?{SECRET}@prometheus:9090",  # unescaped "?" in the password
    f"http://alice:pass#{SECRET}@prometheus:9090",  # unescaped "#" in the password
]


def assert_no_secret(text: str) -> None:
    assert SECRET not in text, text


@pytest.mark.parametrize("url", SECRET_URLS)
def test_secrets_in_the_url_never_reach_repr_or_errors(url: str) -> None:
    config = BackpressureConfig(backpressure_monitoring_url=url, backpressure_queries=("up",))
    assert config.backpressure_monitoring_url == url, "the URL itself is kept for use"
    assert_no_secret(repr(config))
    assert_no_secret(str(config))
    assert "***" in repr(config)
    with pytest.raises(ConfigError) as info:
        config.replace(congestion_window_min=0)
    assert_no_secret(str(info.value))
    for cfg in (config, config.replace(enable_backpressure=False)):
        bp = Backpressure(cfg, registry=None)
        try:
            assert_no_secret(repr(bp))
            assert_no_secret(repr(bp.config))
            assert_no_secret(repr(bp.stats()))
        finally:
            bp.close()


@pytest.mark.parametrize("url", BAD_SECRET_URLS)
def test_secrets_in_a_bad_url_never_reach_the_error(url: str) -> None:
    problems = problems_of(backpressure_monitoring_url=url, backpressure_queries=("up",))
    assert len(problems) == 1
    assert problems[0].startswith("backpressure_monitoring_url=")
    with pytest.raises(ConfigError) as info:
        BackpressureConfig(backpressure_monitoring_url=url, backpressure_queries=("up",))
    assert_no_secret(str(info.value))
    assert_no_secret(repr(info.value))


def test_secrets_in_odd_values_never_reach_the_error() -> None:
    problems = problems_of(
        backpressure_monitoring_url=f"http://alice:{SECRET}@{'x' * 100}.example".encode(),
        backpressure_queries=({"url": f"http://alice:{SECRET}@prometheus"},),
    )
    assert len(problems) == 2
    for problem in problems:
        assert_no_secret(problem)


def test_secrets_in_env_values_never_reach_the_error() -> None:
    with pytest.raises(ConfigError) as info:
        BackpressureConfig.from_env(
            {"BACKPRESSURE_MONITORING_URL": f"ftp://alice:{SECRET}@prometheus"}
        )
    assert "BACKPRESSURE_MONITORING_URL" in str(info.value)
    assert_no_secret(str(info.value))


# -- from_mapping -------------------------------------------------------------------------


def test_from_mapping_builds_the_same_config_as_the_constructor() -> None:
    data = {
        "backpressure_monitoring_url": PROM,
        "backpressure_queries": ["up == 0"],
        "congestion_window_min": 2,
        "congestion_window_max": 20,
        "monitoring_cadence": 15,
        "window_policy": {"increase_step": 2, "react_to_drops": False},
    }
    config = BackpressureConfig.from_mapping(json.loads(json.dumps(data)))
    assert config == BackpressureConfig(
        backpressure_monitoring_url=PROM,
        backpressure_queries=("up == 0",),
        congestion_window_min=2,
        congestion_window_max=20,
        monitoring_cadence=15,
        window_policy=WindowPolicy(increase_step=2, react_to_drops=False),
    )


@pytest.mark.parametrize(
    ("given", "policy"),
    [
        ("seed", WindowPolicy.seed()),
        ("default", WindowPolicy()),
        ({}, WindowPolicy()),
        ({"min_utilisation": 0.25}, WindowPolicy(min_utilisation=0.25)),
        (WindowPolicy.seed(), WindowPolicy.seed()),
    ],
)
def test_from_mapping_reads_the_window_policy(given: object, policy: WindowPolicy) -> None:
    assert BackpressureConfig.from_mapping({"window_policy": given}).window_policy == policy


def test_from_mapping_names_unknown_keys_with_every_other_problem() -> None:
    with pytest.raises(ConfigError) as info:
        BackpressureConfig.from_mapping(
            {
                "congestion_window_mn": 3,
                "congestion_window_max": 0,
                "window_policy": {"decrease_factor": 2, "speed": "fast"},
            }
        )
    problems = info.value.problems
    assert problems[0].startswith("'congestion_window_mn': unknown setting; known settings are")
    assert "congestion_window_min" in problems[0], "the message lists the known settings"
    assert any(p.startswith("window_policy.speed: unknown setting") for p in problems)
    assert any(p.startswith("congestion_window_max=0:") for p in problems)
    assert len(problems) == 3


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("fast", "window_policy='fast': must be 'default', 'seed' or a mapping"),
        (5, "window_policy=5: must be 'default', 'seed' or a mapping"),
        ({"decrease_factor": 2}, "window_policy.decrease_factor=2: "),
    ],
)
def test_from_mapping_names_a_bad_window_policy(given: object, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        BackpressureConfig.from_mapping({"window_policy": given})
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(problem)


# -- from_env ---------------------------------------------------------------------------------


def documented_env_vars() -> dict[str, str]:
    """The variable -> field table of the _config module docstring."""
    assert _config.__doc__
    return dict(re.findall(r"``(BACKPRESSURE_\w+)``\s+``([\w.]+)``", _config.__doc__))


#: a valid, non-default value for every variable, and the field value it must give.
ENV_VALUES: dict[str, tuple[str, object]] = {
    "BACKPRESSURE_ENABLED": ("off", False),
    "BACKPRESSURE_MONITORING_URL": (f"{PROM}/api/v1/query", f"{PROM}/api/v1/query"),
    "BACKPRESSURE_QUERIES": ("up == 0\n  rate(x[5m]) > 1  \n", ("up == 0", "rate(x[5m]) > 1")),
    "BACKPRESSURE_WINDOW_MIN": ("3", 3),
    "BACKPRESSURE_WINDOW_MAX": (" 30 ", 30),
    "BACKPRESSURE_CADENCE": ("15", 15.0),
    "BACKPRESSURE_QUERY_TIMEOUT": ("2.5", 2.5),
    "BACKPRESSURE_STALE_AFTER": ("90", 90.0),
    "BACKPRESSURE_FAILURE_POLICY": ("fail_closed", "fail_closed"),
    "BACKPRESSURE_WAIT_TIMEOUT": ("0.5", 0.5),
    "BACKPRESSURE_MAX_WAITERS": ("7", 7),
    "BACKPRESSURE_WINDOW_POLICY": ("SEED", WindowPolicy.seed()),
    "BACKPRESSURE_WINDOW_INCREASE_STEP": ("3", 3),
    "BACKPRESSURE_WINDOW_DECREASE_FACTOR": ("0.7", 0.7),
    "BACKPRESSURE_WINDOW_MIN_UTILISATION": ("0.25", 0.25),
    "BACKPRESSURE_WINDOW_DECREASE_ONCE_PER_READING": ("yes", True),
    "BACKPRESSURE_WINDOW_DECREASE_ONCE_PER_RTT": ("1", True),
    "BACKPRESSURE_WINDOW_REACT_TO_DROPS": ("true", True),
    "BACKPRESSURE_WINDOW_INCREASE_PER": ("rtt", "rtt"),
    "BACKPRESSURE_WINDOW_SLOW_START": ("off", False),
}


def test_every_variable_the_loader_reads_is_documented_and_tested() -> None:
    documented = documented_env_vars()
    read = set(_config._ENV.values()) | {"BACKPRESSURE_WINDOW_POLICY"}
    read |= {"BACKPRESSURE_WINDOW_" + f.upper() for f in _config._POLICY_FIELDS}
    assert set(documented) == read
    assert set(ENV_VALUES) == read


def field_value(config: BackpressureConfig, path: str) -> object:
    value: object = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("var", ENV_VALUES)
def test_each_documented_variable_sets_its_field(var: str) -> None:
    raw, expected = ENV_VALUES[var]
    env = {var: raw}
    if var in ("BACKPRESSURE_MONITORING_URL", "BACKPRESSURE_QUERIES"):
        env.setdefault("BACKPRESSURE_MONITORING_URL", PROM)
        env.setdefault("BACKPRESSURE_QUERIES", "up")
    if var == "BACKPRESSURE_WINDOW_MIN":
        env["BACKPRESSURE_WINDOW_MAX"] = "10"
    config = BackpressureConfig.from_env(env)
    assert field_value(config, documented_env_vars()[var]) == expected


def test_all_variables_together() -> None:
    config = BackpressureConfig.from_env({var: raw for var, (raw, _) in ENV_VALUES.items()})
    for var, (_, expected) in ENV_VALUES.items():
        if var != "BACKPRESSURE_WINDOW_POLICY":
            assert field_value(config, documented_env_vars()[var]) == expected, var
    # The preset is the base that the single-option variables change.
    assert config.window_policy == WindowPolicy(
        increase_step=3,
        decrease_factor=0.7,
        min_utilisation=0.25,
        decrease_once_per_reading=True,
        decrease_once_per_rtt=True,
        react_to_drops=True,
        increase_per="rtt",
        slow_start=False,
    )
    policy_only = BackpressureConfig.from_env(
        {"BACKPRESSURE_WINDOW_POLICY": "seed", "BACKPRESSURE_WINDOW_INCREASE_STEP": "2"}
    )
    assert policy_only.window_policy == WindowPolicy.seed().replace(increase_step=2)


def test_queries_may_be_a_json_list() -> None:
    config = BackpressureConfig.from_env(
        {"BACKPRESSURE_MONITORING_URL": PROM, "BACKPRESSURE_QUERIES": '["up == 0", "a\\nb"]'}
    )
    assert config.backpressure_queries == ("up == 0", "a\nb")


def test_empty_and_missing_variables_keep_the_defaults() -> None:
    assert BackpressureConfig.from_env({}) == BackpressureConfig()
    assert BackpressureConfig.from_env(dict.fromkeys(ENV_VALUES, "  ")) == BackpressureConfig()


def test_from_env_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_VALUES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BACKPRESSURE_WINDOW_MIN", "4")
    assert BackpressureConfig.from_env().congestion_window_min == 4


def test_every_bad_variable_is_named_in_one_error() -> None:
    env = {
        "BACKPRESSURE_ENABLED": "maybe",
        "BACKPRESSURE_WINDOW_MIN": "ten",
        "BACKPRESSURE_MAX_WAITERS": "1.5",
        "BACKPRESSURE_QUERIES": "[1,",
        "BACKPRESSURE_WINDOW_POLICY": "fancy",
        "BACKPRESSURE_WINDOW_REACT_TO_DROPS": "sometimes",
        "BACKPRESSURE_WINDOW_INCREASE_STEP": "1.5",
        "BACKPRESSURE_WINDOW_SLOW_START": "later",
        # These parse, and the config then finds them out of range:
        "BACKPRESSURE_CADENCE": "-5",
        "BACKPRESSURE_WINDOW_DECREASE_FACTOR": "2",
        "BACKPRESSURE_FAILURE_POLICY": "open",
    }
    with pytest.raises(ConfigError) as info:
        BackpressureConfig.from_env(env)
    problems = info.value.problems
    for var in env:
        assert len([p for p in problems if var + "=" in p or f"(from {var})" in p]) == 1, (
            var,
            problems,
        )
    assert len(problems) == len(env)
    cadence = next(p for p in problems if "BACKPRESSURE_CADENCE" in p)
    assert cadence.startswith("monitoring_cadence=-5.0: ")
    assert cadence.endswith("(from BACKPRESSURE_CADENCE)")
    assert "BACKPRESSURE_WINDOW_MIN='ten': cannot be read as int" in problems
