"""Settings from the environment (docs/events.md, "Settings"): loaded once by the CLI,
frozen, passed down."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import time, timedelta
from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from worker.errors import SettingsError
from worker.rules.kinds import parse_duration
from worker.rules.quiet import QuietHours, parse_quiet_hours
from worker.schedule import Offset, parse_offset

SECRET_PREFIX = "secret:"
# These reach the sidecar, name the secret store, or are used before the secrets are
# read (the ops port opens and logging starts before the sidecar answers), and so
# cannot come from the secret store. Every other setting may be `secret:NAME/KEY`.
NOT_FROM_SECRETS = frozenset(
    {"dapr_http_endpoint", "dapr_http_port", "dapr_api_token", "secret_store",
     "sidecar_timeout", "ops_host", "ops_port", "log_format", "log_level"}
)
# Never echoed in an error message.
SECRET_VALUED = frozenset({"dapr_api_token", "app_api_token"})
MAX_ECHOED = 80  # characters of a bad value an error message repeats
# Each delivery and job trigger is answered within this many seconds: below daprd's
# appDelivery timeout (components/resiliency.yaml, 30 s), so the worker answers RETRY
# and stops the handler before daprd gives up on the call and redelivers meanwhile.
DEFAULT_HANDLER_DEADLINE = 20.0
# Seconds per sidecar call: 3 attempts x 6 s + backoff stay within the handler deadline,
# so it may only be lowered (tests of a hung sidecar lower it to fail fast).
MAX_SIDECAR_TIMEOUT = 6.0
_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_METHOD = re.compile(r"^[A-Za-z0-9._~/-]{1,500}$")
_NOT_IN_HEADER = re.compile(r"[\r\n\x00]")


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(BaseSettings):
    """Every setting (docs/events.md, "Settings"). Field aliases are the environment names."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=True)

    dapr_http_endpoint: str | None = Field(None, validation_alias=_env("DAPR_HTTP_ENDPOINT"))
    dapr_http_port: int = Field(3500, ge=1, le=65535, validation_alias=_env("DAPR_HTTP_PORT"))
    dapr_api_token: SecretStr | None = Field(None, validation_alias=_env("DAPR_API_TOKEN"))
    app_api_token: SecretStr | None = Field(None, validation_alias=_env("APP_API_TOKEN"))
    app_id: str = Field("reminder-worker", validation_alias=_env("REMINDER_APP_ID"))
    host: str = Field("127.0.0.1", validation_alias=_env("REMINDER_HOST"))
    port: int = Field(8080, ge=0, le=65535, validation_alias=_env("REMINDER_PORT"))
    ops_host: str = Field("0.0.0.0", validation_alias=_env("REMINDER_OPS_HOST"))
    ops_port: int = Field(9464, ge=0, le=65535, validation_alias=_env("REMINDER_OPS_PORT"))
    pubsub: str = Field("kafka-pubsub", validation_alias=_env("REMINDER_PUBSUB"))
    task_topic: str = Field("task-events", validation_alias=_env("REMINDER_TASK_TOPIC"))
    reminder_topic: str = Field("reminders", validation_alias=_env("REMINDER_REMINDER_TOPIC"))
    dead_letter_topic: str = Field(
        "task-events-dlq", validation_alias=_env("REMINDER_DEAD_LETTER_TOPIC")
    )
    state_store: str = Field("statestore", validation_alias=_env("REMINDER_STATE_STORE"))
    secret_store: str | None = Field(None, validation_alias=_env("REMINDER_SECRET_STORE"))
    task_app_id: str = Field("todo-backend", validation_alias=_env("REMINDER_TASK_APP_ID"))
    next_occurrence_method: str = Field(
        "api/tasks/create-next", validation_alias=_env("REMINDER_NEXT_OCCURRENCE_METHOD")
    )
    all_day_time: time = Field(time(9, 0), validation_alias=_env("REMINDER_ALL_DAY_TIME"))
    default_reminders: Annotated[tuple[Offset, ...], NoDecode] = Field(
        (), validation_alias=_env("REMINDER_DEFAULT_REMINDERS")
    )
    # the reminder rules (docs/reminders.md); kept as text (validated here) so a copy
    # re-validates unchanged
    misfire_grace: str = Field("PT1H", validation_alias=_env("REMINDER_MISFIRE_GRACE"))
    quiet_hours: str = Field("", validation_alias=_env("REMINDER_QUIET_HOURS"))
    handler_deadline: float = Field(DEFAULT_HANDLER_DEADLINE, gt=0, le=600,
                                    validation_alias=_env("REMINDER_HANDLER_DEADLINE"))
    sidecar_timeout: float = Field(MAX_SIDECAR_TIMEOUT, gt=0, le=MAX_SIDECAR_TIMEOUT,
                                   validation_alias=_env("REMINDER_SIDECAR_TIMEOUT"))
    log_format: Literal["json", "console"] = Field(
        "json", validation_alias=_env("REMINDER_LOG_FORMAT")
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", validation_alias=_env("REMINDER_LOG_LEVEL")
    )
    # Settings given as `secret:NAME/KEY` (field -> (name, key)): until `with_secrets`
    # those fields hold their defaults, never the reference text.
    _refs: dict[str, tuple[str, str]] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only what `load_settings` passes: it reads the environment itself, so that a
        `secret:` value never reaches a field's validation."""
        return (init_settings,)

    @field_validator("dapr_http_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("dapr_api_token")
    @classmethod
    def _dapr_token(cls, value: SecretStr | None) -> SecretStr | None:
        """DAPR_API_TOKEN is sent as a header on every sidecar call. A trailing line
        break (CR/LF), the usual last byte of a token read from a secret file, is
        stripped; any other CR, LF or NUL would end or split the header line (a header
        injected into every call), so it is a settings error. So is a space or tab at
        either end, which a header value cannot carry (h11 refuses it at every call)."""
        if value is None:
            return None
        token = value.get_secret_value().rstrip("\r\n")
        if _NOT_IN_HEADER.search(token):
            raise ValueError("contains a line break or NUL character; only a trailing "
                             "line break is stripped")
        if token != token.strip(" \t"):
            raise ValueError("begins or ends with a space or tab, which a header cannot carry")
        return SecretStr(token)

    @field_validator("app_api_token")
    @classmethod
    def _app_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty, which would turn the token check off; "
                             "unset it instead (not recommended)")
        return value

    @field_validator("pubsub", "task_topic", "reminder_topic", "dead_letter_topic",
                     "state_store", "task_app_id", "app_id")
    @classmethod
    def _component_name(cls, value: str) -> str:
        if not _COMPONENT.match(value):
            raise ValueError("must match [A-Za-z0-9][A-Za-z0-9._-]*")
        return value

    @field_validator("secret_store")
    @classmethod
    def _secret_store(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if not _COMPONENT.match(value):
            raise ValueError("must match [A-Za-z0-9][A-Za-z0-9._-]*")
        return value

    @field_validator("next_occurrence_method")
    @classmethod
    def _method(cls, value: str) -> str:
        value = value.strip("/")
        if not _METHOD.match(value) or ".." in value:
            raise ValueError("must be a URL path like api/tasks/create-next")
        return value

    @field_validator("all_day_time", mode="before")
    @classmethod
    def _all_day(cls, value: object) -> object:
        if isinstance(value, str) and not re.fullmatch(r"\d{2}:\d{2}(:\d{2})?", value):
            raise ValueError("must be HH:MM")
        return value

    @field_validator("default_reminders", mode="before")
    @classmethod
    def _offsets(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            return tuple(parse_offset(p) for p in parts)
        return value

    @field_validator("misfire_grace")
    @classmethod
    def _grace(cls, value: str) -> str:
        parse_duration(value.strip(), "misfire grace")
        return value.strip()

    @field_validator("quiet_hours")
    @classmethod
    def _quiet(cls, value: str) -> str:
        if value.strip():
            parse_quiet_hours(value)
        return value.strip()

    @property
    def misfire_grace_delta(self) -> timedelta:
        return parse_duration(self.misfire_grace, "misfire grace")

    @property
    def default_quiet_hours(self) -> QuietHours | None:
        return parse_quiet_hours(self.quiet_hours) if self.quiet_hours else None

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @property
    def sidecar_url(self) -> str:
        return self.dapr_http_endpoint or f"http://127.0.0.1:{self.dapr_http_port}"

    def secret_refs(self) -> dict[str, tuple[str, str]]:
        """Settings given as `secret:NAME/KEY`, as field -> (name, key); empty once
        resolved (`with_secrets`)."""
        return dict(self._refs)


def env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    assert isinstance(alias, AliasChoices)
    return str(alias.choices[0])


def _field_of(name: str) -> str | None:
    return next((f for f in Settings.model_fields if env_name(f) == name), None)


def _echo(field: str, value: object) -> str:
    """` (got 'x')` after an error, or nothing for a token."""
    if field in SECRET_VALUED or not isinstance(value, str):
        return ""
    text = value if len(value) <= MAX_ECHOED else value[:MAX_ECHOED] + "..."
    return f" (got {text!r})"


def _validate(data: Mapping[str, object], *, from_store: frozenset[str] = frozenset()
              ) -> Settings:
    """Settings from `data` (environment names -> values); SettingsError with one line
    naming the variable and, unless it is a token or came from the secret store
    (`from_store`: fields), repeating the value."""
    try:
        return Settings.model_validate(dict(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "?"  # the alias: environment name
        field = _field_of(name) or name
        msg = str(err["msg"]).removeprefix("Value error, ")
    except ValueError as exc:  # raised by parse_offset outside pydantic's wrapping
        field, name, msg = "default_reminders", "REMINDER_DEFAULT_REMINDERS", str(exc)
    value = data.get(name)
    if field in from_store:
        if isinstance(value, str) and value.strip():
            msg = msg.replace(value.strip(), "...")  # a secret is never repeated
        raise SettingsError(f"{name}: value from the secret store is invalid: {msg}")
    said = isinstance(value, str) and value.strip() and value.strip() in msg
    raise SettingsError(f"{name}: {msg}{'' if said else _echo(field, value)}")


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Validate the environment (None: os.environ); SettingsError with one line naming
    the variable. A `secret:NAME/KEY` value is checked for its form only: its field
    keeps its default until `with_secrets` puts the value in and validates it."""
    given: dict[str, str] = {}
    for name, value in (os.environ if environ is None else environ).items():
        if (field := _field_of(name)) is not None:
            given[name] = value
    refs: dict[str, tuple[str, str]] = {}
    for name, value in given.items():
        if not value.startswith(SECRET_PREFIX):
            continue
        field = _field_of(name)
        assert field is not None
        if field in NOT_FROM_SECRETS:
            raise SettingsError(f"{name}: cannot be read from a secret store (it is needed "
                                "before the secrets are read)")
        secret, sep, key = value[len(SECRET_PREFIX):].partition("/")
        if not secret or (sep and not key):
            raise SettingsError(f"{name}: secret reference must be secret:NAME/KEY")
        refs[field] = (secret, key if sep else secret)
    settings = _validate({k: v for k, v in given.items() if _field_of(k) not in refs})
    if refs and settings.secret_store is None:
        first = env_name(next(iter(refs)))
        raise SettingsError(f"{first}: uses secret: but REMINDER_SECRET_STORE is not set")
    settings._refs = refs
    return settings


def with_secrets(settings: Settings, resolved: Mapping[str, str]) -> Settings:
    """A copy of `settings` with secret references replaced by their values, validated
    as the environment's would be (an error never repeats the value)."""
    data: dict[str, object] = {
        env_name(f): v for f, v in settings.model_dump().items() if v is not None}
    for name, value in list(data.items()):
        if isinstance(value, SecretStr):
            data[name] = value.get_secret_value()
    data["REMINDER_DEFAULT_REMINDERS"] = ",".join(o.iso() for o in settings.default_reminders)
    data["REMINDER_ALL_DAY_TIME"] = settings.all_day_time.strftime("%H:%M:%S")
    for field, value in resolved.items():
        data[env_name(field)] = value
    return _validate(data, from_store=frozenset(resolved))
