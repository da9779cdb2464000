"""The node's configuration: one YAML file plus KNEE_NODE_* environment overrides, validated at start.

Every field has a default, so an empty file runs the embedded node.  An override names the field path in upper
case with underscores, e.g. KNEE_NODE_SCP_PORT=11113 or KNEE_NODE_WORKER_BATCH_SIZE=16; its value is read as
YAML, so KNEE_NODE_DESTINATIONS='[{ae_title: PACS, host: 10.0.0.5, port: 104}]' works for lists.
Any invalid value stops start-up with ConfigError naming the field and the reason.
"""

from __future__ import annotations

import os
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from node.selection import SelectionRules

ENV_PREFIX = "KNEE_NODE_"
DEFAULT_CONFIG = resources.files("node").joinpath("node.yaml")  # every field with its default, documented
# The bundled model ships beside the package (models/, as in a checkout and the container image).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "kl-densenet121"
AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # 16 printable characters, no backslash
SECRET_REFERENCE = re.compile(r"^\$\{(\w+)\}$")  # a credential written ${NAME}: read from the environment


class ConfigError(ValueError):
    """str() is one line: `config: FIELD: reason`."""


def check(condition: bool, reason: str) -> None:
    if not condition:
        raise ValueError(reason)


def check_ae_title(title: str) -> None:
    check(bool(AE_TITLE.match(title)) and title.strip() != "",
          f"ae_title: {title!r} is not an AE title (1-16 characters, no backslash)")


def check_port(port: int, allow_zero: bool = False) -> None:
    check((allow_zero and port == 0) or 1 <= port <= 65535, f"port: {port} is not a TCP port (1-65535)")


@dataclass(frozen=True)
class Peer:
    """A calling AE allowed to send to the node; `host` (address) optional."""

    ae_title: str
    host: str = ""

    def __post_init__(self) -> None:
        check_ae_title(self.ae_title)


ResultObject = Literal["sr", "sc", "seg"]
RESULT_OBJECTS: tuple[ResultObject, ...] = ("sr", "sc", "seg")


@dataclass(frozen=True)
class Destination:
    """Where results go: of each radiograph the objects in `objects`.

    kind dimse: a C-STORE SCP, ae_title@host:port.  kind dicomweb: a STOW-RS service at `url` (its DICOMweb base,
    e.g. https://pacs/dicom-web), with HTTP basic (username, password) or bearer (token) authentication; https
    checks the server's certificate against the node's tls.ca_certificates (else the system's CAs).  `name` tells
    destinations apart (outbox folder, queue, logs, audit): the AE title unless set; required for dicomweb.
    """

    ae_title: str = ""
    host: str = ""
    port: int = 0
    tls: bool = False  # dimse: DICOM TLS with the node's `tls` settings (dicomweb: an https url)
    objects: tuple[ResultObject, ...] = RESULT_OBJECTS  # sr: the report, sc: the overlay image, seg: the Grad-CAM
    kind: Literal["dimse", "dicomweb"] = "dimse"
    name: str = ""
    url: str = ""
    username: str = ""
    password: str = field(default="", repr=False)  # secrets: kept out of repr, logs and reasons
    token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if self.kind == "dimse":
            check(self.ae_title != "", "ae_title: required (kind dimse)")
            check_ae_title(self.ae_title)
            check(self.host != "", "host: required (kind dimse)")
            check(self.port != 0, "port: required (kind dimse)")
            check_port(self.port)
            for name in ("url", "username", "password", "token"):
                check(not getattr(self, name), f"{name}: only for kind dicomweb")
        else:
            check(self.name != "", "name: required (kind dicomweb)")
            check(self.url != "", "url: required (kind dicomweb)")
            url = urlsplit(self.url)
            check(url.scheme in ("http", "https") and bool(url.hostname) and not url.query and not url.fragment,
                  f"url: {self.url!r} is not an http:// or https:// base URL")
            check(url.username is None, "url: credentials go in username and password (the url is logged)")
            for name in ("ae_title", "host", "port", "tls"):
                check(not getattr(self, name), f"{name}: not for kind dicomweb (the url says where, https: TLS)")
            check(not (self.token and self.username), "token: either a token or a username and password")
            check(bool(self.username) == bool(self.password), "password: username and password go together")
        object.__setattr__(self, "name", self.name or self.ae_title)
        check(bool(AE_TITLE.match(self.name)) and self.name.strip() != "",
              f"name: {self.name!r} is not a name (1-16 characters, no backslash, as an AE title)")
        check(len(self.objects) > 0, "objects: at least one of sr, sc, seg")
        check(len(set(self.objects)) == len(self.objects), "objects: each of sr, sc, seg at most once")

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}" if self.kind == "dimse" else f"{self.name} ({self.url})"


@dataclass(frozen=True)
class TlsConfig:
    """DICOM TLS (PS3.15 B.1): on for the SCP when a certificate is given, for each destination marked `tls`."""

    certificate: Path | None = None  # PEM: the node's certificate (server, and client when a peer asks)
    private_key: Path | None = None  # PEM, unencrypted
    ca_certificates: Path | None = None  # PEM bundle that peers' certificates must chain to
    require_peer_certificate: bool = True  # the SCP accepts only callers with a certificate from that bundle

    def __post_init__(self) -> None:
        check((self.certificate is None) == (self.private_key is None),
              "private_key: certificate and private_key go together")
        check(not self.require_peer_certificate or self.certificate is None or self.ca_certificates is not None,
              "ca_certificates: needed to check peer certificates (or set require_peer_certificate: false)")


@dataclass(frozen=True)
class ScpConfig:
    ae_title: str = "KNEE_NODE"
    bind_address: str = "0.0.0.0"
    port: int = 11112
    max_pdu: int = 0  # 0: unlimited
    max_associations: int = 16
    allow_any_peer: bool = False
    peers: tuple[Peer, ...] = ()
    keep_unselected: bool = False  # keep instances the selection rules pass over, in data_dir/unselected
    min_free_disk_mb: int = 1024  # refuse (0xA700) rather than fill the disk below this

    def __post_init__(self) -> None:
        check_ae_title(self.ae_title)
        check_port(self.port, allow_zero=True)
        check(self.max_pdu == 0 or self.max_pdu >= 4096, "max_pdu: must be 0 (unlimited) or at least 4096")
        check(self.max_associations >= 1, "max_associations: must be at least 1")
        check(self.min_free_disk_mb >= 0, "min_free_disk_mb: must be 0 or more")


@dataclass(frozen=True)
class QueueConfig:
    backend: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str = ""  # backend redis: redis://HOST:6379/0 (rediss:// for TLS)
    max_depth: int = 10000  # jobs waiting or running; beyond it the SCP answers 0xA700
    lease_seconds: float = 300.0
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.backend == "redis":
            check(self.redis_url.startswith(("redis://", "rediss://", "unix://")),
                  f"redis_url: {self.redis_url!r} is not a redis://, rediss:// or unix:// URL (backend redis)")
        else:
            check(self.redis_url == "", "redis_url: only used by backend redis (set queue.backend: redis)")
        check(self.max_depth >= 1, "max_depth: must be at least 1")
        check(self.lease_seconds > 0, "lease_seconds: must be positive")
        check(self.max_attempts >= 1, "max_attempts: must be at least 1")


@dataclass(frozen=True)
class WorkerConfig:
    model: Path = DEFAULT_MODEL_DIR
    device: str = "auto"
    threads: int = 0  # CPU threads for the model; 0: torch's default (all cores)
    batch_size: int = 8
    max_wait_ms: int = 0  # 0: a batch is what is queued when the worker is free

    def __post_init__(self) -> None:
        check(self.device == "auto" or re.fullmatch(r"cpu|cuda(:\d+)?", self.device) is not None,
              f"device: {self.device!r} is not auto, cpu, cuda or cuda:N")
        check(self.threads >= 0, "threads: must be 0 or more")
        check(1 <= self.batch_size <= 512, "batch_size: must be 1-512")
        check(0 <= self.max_wait_ms <= 60000, "max_wait_ms: must be 0-60000")


@dataclass(frozen=True)
class DispatchConfig:
    max_attempts: int = 10
    backoff_seconds: float = 2.0  # first retry delay; doubles each attempt, with jitter
    max_backoff_seconds: float = 300.0
    timeout_seconds: float = 30.0  # network timeout: each wait of an association or an HTTP request

    def __post_init__(self) -> None:
        check(self.max_attempts >= 1, "max_attempts: must be at least 1")
        check(0 < self.backoff_seconds <= self.max_backoff_seconds,
              "backoff_seconds: must be positive and at most max_backoff_seconds")
        check(self.timeout_seconds > 0, "timeout_seconds: must be positive")


@dataclass(frozen=True)
class MetricsConfig:
    bind_address: str = "127.0.0.1"
    port: int = 9464  # Prometheus /metrics and /healthz; 0: off

    def __post_init__(self) -> None:
        check_port(self.port, allow_zero=True)


EMAIL_ADDRESS = re.compile(r"^[^@\s,<>]+@[^@\s,<>]+$")


@dataclass(frozen=True)
class AlertsConfig:
    """Alerts to an administrator (node.alerts): on when a webhook or e-mail recipients are set."""

    webhook_url: str = ""  # http:// or https://: each alert POSTed as JSON
    email_to: tuple[str, ...] = ()
    email_from: str = ""  # "": knee-node@HOSTNAME
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_username: str = ""
    smtp_password: str = field(default="", repr=False)
    backlog_seconds: float = 3600.0  # alert when a queue's oldest unfinished job is older; 0: no backlog alerts
    repeat_seconds: float = 900.0  # at most one alert per kind and queue in this time; later ones sum up

    def __post_init__(self) -> None:
        if self.webhook_url:
            url = urlsplit(self.webhook_url)
            check(url.scheme in ("http", "https") and bool(url.hostname),
                  f"webhook_url: {self.webhook_url!r} is not an http:// or https:// URL")
        for address in (*self.email_to, *([self.email_from] if self.email_from else [])):
            check(bool(EMAIL_ADDRESS.match(address)), f"email: {address!r} is not an e-mail address")
        check(not self.email_to or self.smtp_host != "", "smtp_host: needed to send e-mail (email_to is set)")
        check(bool(self.email_to) or not (self.smtp_host or self.email_from),
              "email_to: required when smtp_host or email_from is set (the recipients)")
        check_port(self.smtp_port)
        check(bool(self.smtp_username) == bool(self.smtp_password), "smtp_password: goes with smtp_username")
        check(self.backlog_seconds >= 0, "backlog_seconds: must be 0 (off) or more")
        check(self.repeat_seconds > 0, "repeat_seconds: must be positive")

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url or self.email_to)


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path("data")
    spool_dir: Path | None = None  # None: data_dir/spool
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    scp: ScpConfig = field(default_factory=ScpConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    selection: SelectionRules = field(default_factory=SelectionRules)
    queue: QueueConfig = field(default_factory=QueueConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    destinations: tuple[Destination, ...] = ()
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)

    def __post_init__(self) -> None:
        names = [destination.name for destination in self.destinations]
        twice = next((name for name in names if names.count(name) > 1), None)
        check(twice is None, f"destinations: two are named {twice!r} (set `name` to tell them apart)")

    @property
    def spool(self) -> Path:
        """Received images until analysed: shared storage when receivers and workers run on several hosts."""
        return self.spool_dir or self.data_dir / "spool"


def load_config(path: Path | None, environ: typing.Mapping[str, str] = os.environ) -> Config:
    """Read `path` (None: the bundled node/node.yaml), apply KNEE_NODE_* overrides, validate; relative paths are
    taken from the config file's folder (the working directory for the bundled one)."""
    source = path or DEFAULT_CONFIG
    try:
        raw = yaml.safe_load(source.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"config: {source}: {error}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {source}: expected a mapping at the top level")
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX):
            apply_override(raw, name, value)
    base = path.parent if path is not None else Path.cwd()
    config = build(Config, raw, "")
    return resolve_paths(read_secrets(config, environ), base)


def apply_override(raw: dict[str, Any], name: str, value: str) -> None:
    """Put an environment value at its field path, matching KNEE_NODE_SCP_MAX_PDU to scp.max_pdu."""
    key = name[len(ENV_PREFIX):].lower()
    target, cls = raw, Config
    while True:
        match = next((f for f in fields(cls) if key == f.name or key.startswith(f.name + "_")), None)
        if match is None:
            raise ConfigError(f"config: {name}: no such field")
        kind = typing.get_type_hints(cls)[match.name]
        if key != match.name and is_dataclass(kind):
            target = target.setdefault(match.name, {})
            key, cls = key[len(match.name) + 1:], kind
            continue
        if key != match.name:
            raise ConfigError(f"config: {name}: no such field")
        try:
            target[match.name] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"config: {name}: not a valid value") from None
        return


def build(cls: type, raw: Any, path: str) -> Any:
    """An instance of dataclass `cls` from `raw`, every field type-checked, errors prefixed by the field path."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {path or 'top level'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"config: {path + '.' if path else ''}{unknown[0]}: unknown field")
    prefix = f"{path}." if path else ""
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in raw]
    if missing:
        raise ConfigError(f"config: {prefix}{missing[0]}: required")
    values = {name: convert(hints[name], value, prefix + name) for name, value in raw.items()}
    try:
        return cls(**values)
    except ValueError as error:  # __post_init__ checks say "field: reason"
        raise ConfigError(f"config: {prefix}{error}") from None


def convert(kind: Any, value: Any, path: str) -> Any:
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if is_dataclass(kind):
        return build(kind, value, path)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"config: {path}: expected a list, got {value!r}")
        return tuple(convert(arguments[0], item, f"{path}[{i}]") for i, item in enumerate(value))
    if origin is types.UnionType and type(None) in arguments:  # optional: null or the other type
        return None if value is None else convert(next(a for a in arguments if a is not type(None)), value, path)
    if origin is Literal:
        if value not in arguments:
            raise ConfigError(f"config: {path}: {value!r} is not one of {', '.join(map(str, arguments))}")
        return value
    if kind is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"config: {path}: expected a path, got {value!r}")
        return Path(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float, str, bool) and type(value) is kind:
        return value
    if kind is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # an AE title or host that YAML read as a number
    expected = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    raise ConfigError(f"config: {path}: expected {expected.get(kind, kind)}, got {value!r}")


def read_secrets(config: Config, environ: typing.Mapping[str, str]) -> Config:
    """Destination credentials written `${NAME}` replaced by the environment variable NAME (the file need not
    hold them)."""
    destinations = []
    for index, destination in enumerate(config.destinations):
        values = {}
        for name in ("username", "password", "token"):
            reference = SECRET_REFERENCE.match(getattr(destination, name))
            if reference is not None:
                if reference[1] not in environ:
                    raise ConfigError(f"config: destinations[{index}].{name}: environment variable {reference[1]} "
                                      "is not set")
                values[name] = environ[reference[1]]
        try:
            destinations.append(replace(destination, **values))
        except ValueError as error:
            raise ConfigError(f"config: destinations[{index}].{error}") from None
    return replace(config, destinations=tuple(destinations))


def resolve_paths(config: Config, base: Path) -> Config:
    def absolute(path: Path) -> Path:
        return path if path.is_absolute() else (base / path).resolve()

    tls = {name: absolute(value) for name in ("certificate", "private_key", "ca_certificates")
           if (value := getattr(config.tls, name)) is not None}
    for name, path in tls.items():
        if not path.is_file():
            raise ConfigError(f"config: tls.{name}: {path} not found")
    return replace(config, data_dir=absolute(config.data_dir), tls=replace(config.tls, **tls),
                   spool_dir=absolute(config.spool_dir) if config.spool_dir else None,
                   worker=replace(config.worker, model=absolute(config.worker.model)))
