"""Settings: defaults, every variable, and one-line errors naming the variable."""

from __future__ import annotations

from datetime import time, timedelta

import pytest

from worker.errors import SettingsError
from worker.schedule import Offset
from worker.settings import NOT_FROM_SECRETS, Settings, env_name, load_settings, with_secrets


def test_defaults() -> None:
    s = load_settings({})
    assert s.sidecar_url == "http://127.0.0.1:3500"
    assert (s.host, s.port, s.ops_host, s.ops_port) == ("127.0.0.1", 8080, "0.0.0.0", 9464)
    assert (s.pubsub, s.task_topic, s.reminder_topic, s.dead_letter_topic) == (
        "kafka-pubsub", "task-events", "reminders", "task-events-dlq")
    assert (s.state_store, s.secret_store, s.task_app_id, s.next_occurrence_method) == (
        "statestore", None, "todo-backend", "api/tasks/create-next")
    assert s.all_day_time == time(9, 0) and s.default_reminders == ()
    assert (s.log_format, s.log_level, s.app_id) == ("json", "info", "reminder-worker")
    assert s.dapr_api_token is None and s.app_api_token is None


def test_every_variable() -> None:
    s = load_settings({
        "DAPR_HTTP_ENDPOINT": "http://dapr:3600/", "DAPR_HTTP_PORT": "3501",
        "DAPR_API_TOKEN": "t1", "APP_API_TOKEN": "t2", "REMINDER_APP_ID": "rw",
        "REMINDER_HOST": "0.0.0.0", "REMINDER_PORT": "9000", "REMINDER_OPS_PORT": "9001",
        "REMINDER_PUBSUB": "ps", "REMINDER_TASK_TOPIC": "in", "REMINDER_REMINDER_TOPIC": "out",
        "REMINDER_DEAD_LETTER_TOPIC": "dlq", "REMINDER_STATE_STORE": "st",
        "REMINDER_TASK_APP_ID": "tasks", "REMINDER_NEXT_OCCURRENCE_METHOD": "/next/",
        "REMINDER_ALL_DAY_TIME": "08:30", "REMINDER_DEFAULT_REMINDERS": "PT1H, 30,P1D",
        "REMINDER_LOG_FORMAT": "CONSOLE", "REMINDER_LOG_LEVEL": "debug",
    })
    assert s.sidecar_url == "http://dapr:3600"  # the endpoint wins over the port
    assert s.dapr_api_token is not None and s.dapr_api_token.get_secret_value() == "t1"
    assert "t1" not in repr(s) and "t2" not in repr(s)  # tokens never printed
    assert s.next_occurrence_method == "next" and s.all_day_time == time(8, 30)
    assert s.default_reminders == (Offset(seconds=3600), Offset(seconds=1800), Offset(days=1))
    assert s.log_format == "console"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"DAPR_HTTP_PORT": "abc"}, "DAPR_HTTP_PORT"),
        ({"DAPR_HTTP_PORT": "70000"}, "DAPR_HTTP_PORT"),
        ({"REMINDER_PORT": "-1"}, "REMINDER_PORT"),
        ({"DAPR_HTTP_ENDPOINT": "dapr:3500"}, "DAPR_HTTP_ENDPOINT"),
        ({"REMINDER_PUBSUB": "bad/name"}, "REMINDER_PUBSUB"),
        ({"REMINDER_ALL_DAY_TIME": "9am"}, "REMINDER_ALL_DAY_TIME"),
        ({"REMINDER_ALL_DAY_TIME": "25:00"}, "REMINDER_ALL_DAY_TIME"),
        ({"REMINDER_DEFAULT_REMINDERS": "PT1H,soon"}, "REMINDER_DEFAULT_REMINDERS"),
        ({"REMINDER_LOG_FORMAT": "xml"}, "REMINDER_LOG_FORMAT"),
        ({"REMINDER_LOG_LEVEL": "loud"}, "REMINDER_LOG_LEVEL"),
        ({"REMINDER_NEXT_OCCURRENCE_METHOD": "../admin"}, "REMINDER_NEXT_OCCURRENCE_METHOD"),
        ({"APP_API_TOKEN": "secret:tokens/app"}, "APP_API_TOKEN"),  # no secret store set
        ({"DAPR_API_TOKEN": "secret:t/k", "REMINDER_SECRET_STORE": "s"}, "DAPR_API_TOKEN"),
        ({"DAPR_API_TOKEN": "t1\nx-injected: 1"}, "DAPR_API_TOKEN"),
        ({"DAPR_API_TOKEN": "t1\rx"}, "DAPR_API_TOKEN"),
        ({"DAPR_API_TOKEN": "t1\x00"}, "DAPR_API_TOKEN"),
        ({"DAPR_API_TOKEN": "t1 "}, "DAPR_API_TOKEN"),
        ({"DAPR_API_TOKEN": "\tt1"}, "DAPR_API_TOKEN"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    message = str(info.value)
    assert message.startswith(names + ":") and "\n" not in message


@pytest.mark.parametrize("raw", ["t1\n", "t1\r\n", "t1\n\n"])
def test_dapr_api_token_from_a_file_loses_its_trailing_line_break(raw: str) -> None:
    s = load_settings({"DAPR_API_TOKEN": raw})
    assert s.dapr_api_token is not None and s.dapr_api_token.get_secret_value() == "t1"


def test_a_dapr_api_token_with_a_line_break_inside_is_refused_without_its_value() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"DAPR_API_TOKEN": "s3cret\nx-injected: 1"})
    assert str(info.value) == ("DAPR_API_TOKEN: contains a line break or NUL character; "
                               "only a trailing line break is stripped")


def test_secret_references_resolve() -> None:
    s = load_settings({"APP_API_TOKEN": "secret:tokens/app", "REMINDER_SECRET_STORE": "vault",
                       "REMINDER_DEFAULT_REMINDERS": "PT10M"})
    assert s.secret_refs() == {"app_api_token": ("tokens", "app")}
    resolved = with_secrets(s, {"app_api_token": "s3cret"})
    assert resolved.app_api_token is not None
    assert resolved.app_api_token.get_secret_value() == "s3cret"
    assert resolved.default_reminders == (Offset(seconds=600),)
    assert resolved.secret_refs() == {}


def test_sidecar_timeout_may_only_be_lowered() -> None:
    assert load_settings({}).sidecar_timeout == 6.0
    assert load_settings({"REMINDER_SIDECAR_TIMEOUT": "0.25"}).sidecar_timeout == 0.25
    with pytest.raises(SettingsError, match="REMINDER_SIDECAR_TIMEOUT"):
        load_settings({"REMINDER_SIDECAR_TIMEOUT": "7"})


# A valid value for every setting that may come from the secret store (issue 20: any
# setting but those needed before the secrets are read), and what it becomes.
FROM_SECRETS = {
    "APP_API_TOKEN": ("tok", lambda s: s.app_api_token.get_secret_value()),
    "REMINDER_APP_ID": ("rw", lambda s: s.app_id),
    "REMINDER_HOST": ("0.0.0.0", lambda s: s.host),
    "REMINDER_PORT": ("9000", lambda s: s.port == 9000),
    "REMINDER_PUBSUB": ("ps", lambda s: s.pubsub),
    "REMINDER_TASK_TOPIC": ("in", lambda s: s.task_topic),
    "REMINDER_REMINDER_TOPIC": ("out", lambda s: s.reminder_topic),
    "REMINDER_DEAD_LETTER_TOPIC": ("dlq", lambda s: s.dead_letter_topic),
    "REMINDER_STATE_STORE": ("st", lambda s: s.state_store),
    "REMINDER_TASK_APP_ID": ("tasks", lambda s: s.task_app_id),
    "REMINDER_NEXT_OCCURRENCE_METHOD": ("next", lambda s: s.next_occurrence_method),
    "REMINDER_ALL_DAY_TIME": ("08:30", lambda s: s.all_day_time == time(8, 30)),
    "REMINDER_DEFAULT_REMINDERS": ("PT15M", lambda s: s.default_reminders == (
        Offset(seconds=900),)),
    "REMINDER_MISFIRE_GRACE": ("PT2H", lambda s: s.misfire_grace_delta == timedelta(hours=2)),
    "REMINDER_QUIET_HOURS": ("22:00-07:00", lambda s: s.default_quiet_hours is not None),
    "REMINDER_HANDLER_DEADLINE": ("10", lambda s: s.handler_deadline == 10.0),
}


def test_every_setting_may_be_a_secret_but_those_needed_before_secrets_are_read() -> None:
    names = {env_name(f) for f in Settings.model_fields}
    assert names == set(FROM_SECRETS) | {env_name(f) for f in NOT_FROM_SECRETS}
    for name in sorted(names - set(FROM_SECRETS)):
        with pytest.raises(SettingsError, match=f"^{name}: cannot be read from a secret store"):
            load_settings({"REMINDER_SECRET_STORE": "vault", name: "secret:s/k"})


@pytest.mark.parametrize("name", sorted(FROM_SECRETS))
def test_a_secret_reference_is_accepted_and_validated_once_resolved(name: str) -> None:
    """The reference is not validated as the setting's value ("not an ISO 8601
    duration"): the value is, once read from the store; an invalid one is an error
    that never repeats it."""
    value, check = FROM_SECRETS[name]
    field = next(f for f in Settings.model_fields if env_name(f) == name)
    s = load_settings({name: "secret:rw-settings/k", "REMINDER_SECRET_STORE": "vault"})
    assert s.secret_refs() == {field: ("rw-settings", "k")}
    resolved = with_secrets(s, {field: value})
    assert resolved.secret_refs() == {}
    assert check(resolved) in (True, value)
    if name not in ("REMINDER_HOST", "REMINDER_APP_ID"):  # any text is a host or id
        bad = "not valid at all/" if name != "APP_API_TOKEN" else " "
        with pytest.raises(SettingsError, match=f"^{name}: value from the secret store "
                                                "is invalid") as info:
            with_secrets(s, {field: bad})
        assert bad.strip() not in str(info.value) or not bad.strip()


@pytest.mark.parametrize(("env", "shown"), [
    ({"REMINDER_MISFIRE_GRACE": "PT1X"}, "'PT1X'"),
    ({"DAPR_HTTP_PORT": "abc"}, "'abc'"),
    ({"REMINDER_PUBSUB": "bad/name"}, "'bad/name'"),
    ({"REMINDER_LOG_LEVEL": "loud"}, "'loud'"),
    ({"REMINDER_HANDLER_DEADLINE": "9999"}, "'9999'"),
])
def test_a_bad_value_is_shown(env: dict[str, str], shown: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    assert shown in str(info.value) and str(info.value).count(shown) == 1


def test_a_bad_token_is_never_shown() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"APP_API_TOKEN": "   "})
    assert str(info.value) == ("APP_API_TOKEN: is empty, which would turn the token check "
                               "off; unset it instead (not recommended)")
