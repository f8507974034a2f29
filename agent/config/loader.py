"""Site configuration and device-type profiles: schema, loading and located validation.

A *profile* (``profiles/*.yaml``) describes a device type: its driver and its points. The *site file*
describes this building: its id, the uplink, and its devices by type with address and overrides. Each driver
contributes the schema of its points and of its connection settings (``agent.contract.registry``); this module glues
them together and turns every problem into ``FILE:LINE: key.path: message``.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator

from agent.config.secrets import SecretRef
from agent.config.yamlloc import Loc, LocatedDoc, clip, load_file
from agent.contract.device import DeviceConfig, DeviceConfigModel, Profile, ProfileMetadata
from agent.contract.points import STRICT, PointBase
from agent.contract.registry import DriverSpec, get_spec, known_drivers
from agent.errors import ConfigError, Problem
from agent.types import ByteSize, Duration, Name, PositiveDuration, parse_listen

# --------------------------------------------------------------------------------------------- profiles




class ProfileHeader(BaseModel):
    """The protocol-independent part of a profile; ``points`` are validated by the driver's point model."""

    model_config = STRICT

    id: Name | None = Field(None, description="device type id; defaults to the file name without .yaml")
    driver: str = Field(description="driver name: " + ", ".join(known_drivers()))
    description: str | None = Field(None, description="what this device type is")
    metadata: ProfileMetadata = Field(default_factory=ProfileMetadata, description="provenance")
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="values applied to every point unless the point sets them"
    )
    device: dict[str, Any] = Field(
        default_factory=dict, description="driver-specific device quirks (e.g. max registers per request)"
    )
    points: list[dict[str, Any]] = Field(description="the points of this device type")




def _problems_from(exc: ValidationError, doc: LocatedDoc, prefix: Loc = ()) -> list[Problem]:
    out = []
    for err in exc.errors(include_url=False):
        loc = (*prefix, *err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + _unknown_key_hint(exc.title, err["loc"])
        elif err["type"] == "missing":
            msg = "required key missing"
        elif err["type"] == "string_pattern_mismatch" and loc and loc[-1] in ("id", "name"):
            msg = f"{clip(err['input'])} is not allowed: use letters, digits, '-', '_' (site id: lower case)"
        out.append(doc.problem(loc, msg))
    return out


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean X?"`` when a choice is close to ``word``, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=2, cutoff=0.7)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _submodel(annotation: Any) -> type[BaseModel] | None:
    stack = [annotation]
    while stack:
        t = stack.pop()
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
        stack.extend(getattr(t, "__args__", ()))
    return None


@functools.cache
def _models() -> dict[str, type[BaseModel]]:
    """Every configuration model by name (a ValidationError's title), for a did-you-mean on unknown keys."""
    out: dict[str, type[BaseModel]] = {}

    def walk(model: type[BaseModel]) -> None:
        if model.__name__ in out:
            return
        out[model.__name__] = model
        for f in model.model_fields.values():
            stack = [f.annotation]
            while stack:
                t = stack.pop()
                if isinstance(t, type) and issubclass(t, BaseModel):
                    walk(t)
                stack.extend(getattr(t, "__args__", ()))

    models: list[type[BaseModel]] = [SiteModel, ProfileHeader, DeviceConfigModel]
    for name in known_drivers():
        spec = get_spec(name)
        models += [m for m in (spec.point_model, spec.connection_model, spec.device_model) if m is not None]
    for m in models:
        walk(m)
    return out


def _unknown_key_hint(title: str, loc: Sequence[str | int]) -> str:
    """did-you-mean among the keys of the mapping that holds the unknown key."""
    model = _models().get(title)
    for part in loc[:-1]:
        if model is None:
            return ""
        if isinstance(part, int):
            continue
        f = model.model_fields.get(str(part))
        model = _submodel(f.annotation) if f is not None else None
    if model is None or not loc:
        return ""
    return did_you_mean(str(loc[-1]), [f.alias or n for n, f in model.model_fields.items()])


def parse_profile(doc: LocatedDoc, default_id: str) -> Profile:
    """Validate one profile document; ConfigError with every located problem, all found in one pass."""
    if not isinstance(doc.data, dict):
        raise ConfigError(doc.not_a_mapping("a profile needs driver and points"))
    data: dict[Any, Any] = doc.data
    problems: list[Problem] = []
    header: ProfileHeader | None
    try:
        header = ProfileHeader.model_validate(data)
    except ValidationError as exc:
        problems.extend(_problems_from(exc, doc))
        header = None
    driver = header.driver if header else data.get("driver")
    spec: DriverSpec | None = None
    if isinstance(driver, str):
        try:
            spec = get_spec(driver)
        except KeyError:
            hint = did_you_mean(driver, known_drivers())
            problems.append(doc.problem(("driver",), f"unknown driver {clip(driver)}{hint}; "
                                        f"known: {', '.join(known_drivers())}"))
    if spec is None:
        raise ConfigError(problems)

    def part(key: str, kind: type, default: Any) -> Any:
        value = data.get(key, default)
        return value if isinstance(value, kind) else default

    defaults = header.defaults if header else part("defaults", dict, {})
    device = header.device if header else part("device", dict, {})
    raw_points = header.points if header else part("points", list, [])
    points: list[PointBase] = []
    slots: list[Any] = []  # the valid point at its index in the file, None where the point is invalid
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_points):
        slots.append(None)
        if not isinstance(raw, dict):
            if header is not None:
                problems.append(doc.problem(("points", i), "a point must be a mapping with name and address"))
            continue  # else the header's validation said so already
        try:
            pt = spec.point_model.model_validate({**defaults, **raw})
        except ValidationError as exc:
            problems.extend(_problems_from(exc, doc, ("points", i)))
            continue
        if pt.name in seen:
            problems.append(doc.problem(("points", i, "name"), f"duplicate point name (also points[{seen[pt.name]}])"))
        seen[pt.name] = i
        if pt.min is not None and pt.max is not None and pt.min > pt.max:
            problems.append(doc.problem(("points", i, "min"), "min is greater than max"))
        points.append(pt)
        slots[i] = pt
    if spec.device_model is not None:
        try:
            spec.device_model.model_validate(device)
        except ValidationError as exc:
            problems.extend(_problems_from(exc, doc, ("device",)))
    if spec.check_profile is not None:
        for loc, msg in spec.check_profile(slots, device):
            problems.append(doc.problem(("points", *loc), msg))
    if problems:
        raise ConfigError(_dedupe(problems))
    assert header is not None
    return Profile(
        id=header.id or default_id,
        driver=header.driver,
        file=doc.file,
        description=header.description,
        metadata=header.metadata,
        device=header.device,
        points=points,
    )


def load_profile(path: str | Path) -> Profile:
    p = Path(path)
    return parse_profile(load_file(p), p.stem)


def default_profile_dirs() -> list[Path]:
    """Where profiles are looked for, first match wins: $EDGE_AGENT_PROFILES (colon-separated),
    /etc/edge-agent/profiles (site-local), the shipped set (/opt/edge-agent/profiles or the source tree)."""
    dirs: list[Path] = []
    env = os.environ.get("EDGE_AGENT_PROFILES")
    if env:
        dirs += [Path(d) for d in env.split(":") if d]
    dirs.append(Path("/etc/edge-agent/profiles"))
    here = Path(__file__).resolve().parents[2]  # the source tree (agent/config/loader.py)
    dirs += [here / "profiles", Path("/opt/edge-agent/profiles")]
    return dirs


def load_profiles(dirs: Iterable[Path]) -> tuple[dict[str, Profile], list[Problem]]:
    """Load every ``*.yaml`` in the directories. A broken profile is reported, not fatal: devices of other
    types keep working. A stray site file (or a backup of one) in a profile folder is reported and skipped."""
    profiles: dict[str, Profile] = {}
    problems: list[Problem] = []
    for d in dirs:
        try:
            if not d.is_dir():
                continue
            files = sorted(d.glob("*.yaml"))
        except OSError as exc:
            problems.append(Problem(str(d), None, "", f"cannot list profile folder: {exc.strerror or exc}"))
            continue
        for f in files:
            try:
                doc = load_file(f)
                if isinstance(doc.data, dict) and "driver" not in doc.data and (
                        {"site", "uplink", "devices"} & set(doc.data)):
                    problems.append(doc.problem((), "looks like a site file, not a profile: ignored (site files "
                                                "do not belong in a profile folder)"))
                    continue
                prof = parse_profile(doc, f.stem)
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            profiles.setdefault(prof.id, prof)
    return profiles, problems


# ------------------------------------------------------------------------------------------------- site


class SiteInfo(BaseModel):
    model_config = STRICT
    id: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="site id, lower case letters, digits, - and _; appears in every MQTT topic",
    )
    name: str | None = Field(None, description="human name of the building")
    timezone: str | None = Field(
        None, description="IANA zone of the building (e.g. Europe/Paris) for time windows of door commands; "
        "default: the box's local time"
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        if v is not None:
            import zoneinfo

            try:
                zoneinfo.ZoneInfo(v)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown timezone {v!r} (an IANA name such as Europe/Paris)") from None
        return v


class TLSConfig(BaseModel):
    model_config = STRICT
    ca_file: str | None = Field(None, description="CA bundle to verify the broker (default: system CAs)")
    cert_file: str | SecretRef | None = Field(None, description="client certificate (mutual TLS)")
    key_file: str | SecretRef | None = Field(
        None, description="client private key: a path or a secret reference ({credential: mqtt-key})"
    )
    server_hostname: str | None = Field(None, description="override the name checked in the broker cert")


class BackoffConfig(BaseModel):
    model_config = STRICT
    initial: PositiveDuration = Field(1.0, description="shortest wait before a reconnect attempt")
    max: PositiveDuration = Field(15.0, description="longest wait before a reconnect attempt (random in between)")

    @model_validator(mode="after")
    def _order(self) -> BackoffConfig:
        if self.initial > self.max:
            raise ValueError(f"initial ({self.initial:g} s) is longer than max ({self.max:g} s)")
        return self


MAX_SOCKET_PATH = 107  # bytes of a Unix socket path (sun_path holds 108 with the final NUL)
MQTT_MAX_STRING = 65535  # bytes of a UTF-8 string or binary field in an MQTT packet
MQTT_MAX_PACKET = 268_435_455  # the largest MQTT packet (remaining length field)
MAX_CLIENT_ID = 256  # bytes; MQTT allows 65535, brokers commonly far less (AWS IoT: 128)
MAX_TOPIC_PREFIX = 256  # bytes
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _mqtt_string(v: str, what: str, limit: int) -> str:
    if _CONTROL.search(v):
        raise ValueError(f"{what} must not hold control characters")
    n = len(v.encode("utf-8", "surrogatepass"))
    if n > limit:
        raise ValueError(f"{what} is {n} bytes long; the limit is {limit}")
    return v


class UplinkConfig(BaseModel):
    model_config = STRICT
    broker: str = Field(description="mqtt://host:1883 (cleartext) or mqtts://host:8883 (TLS)")
    client_id: str | None = Field(
        None, description=f"MQTT client id, 1-{MAX_CLIENT_ID} bytes (default: edge-agent-<site id>)")
    topic_prefix: str = Field("ea/v1", description="first levels of every topic")
    username: str | None = Field(None, description="MQTT user name")
    password: SecretRef | None = Field(None, description="MQTT password by reference")
    tls: TLSConfig | None = Field(None, description="TLS settings, only with mqtts:// (which alone decides TLS)")
    allow_insecure: bool = Field(
        False, description="true allows a user name or password over cleartext mqtt:// to a non-loopback host")
    keepalive: PositiveDuration = Field(30.0, description="MQTT keepalive (1s to 65535s)")
    connect_timeout: PositiveDuration = Field(10.0, description="budget of one connection attempt")
    publish_timeout: PositiveDuration = Field(10.0, description="budget for one PUBACK")
    batch_interval: Duration = Field(1.0, description="telemetry is gathered this long before publishing")
    max_inflight: int = Field(8, ge=1, le=10, description="QoS 1 publishes awaiting PUBACK at once")
    max_message_bytes: ByteSize = Field(
        128 * 1024, ge=4096, le=MQTT_MAX_PACKET - MQTT_MAX_STRING - 16,
        description="largest payload sent; a larger message is dropped and counted, never retried forever",
    )
    backoff: BackoffConfig = Field(default_factory=BackoffConfig, description="reconnect backoff")

    @field_validator("broker")
    @classmethod
    def _url(cls, v: str) -> str:
        if len(v) > 1024 or _CONTROL.search(v) or " " in v:
            raise ValueError("broker must look like mqtt://host:1883 or mqtts://host:8883")
        u = urlparse(v)
        if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not u.hostname:
            raise ValueError("broker must look like mqtt://host:1883 or mqtts://host:8883")
        try:
            port = u.port
        except ValueError as exc:
            raise ValueError(f"bad port in broker URL: {exc}") from None
        if port == 0:
            raise ValueError("bad port in broker URL: 0")
        if u.username is not None or u.password is not None:
            raise ValueError("no credentials in the broker URL: use uplink.username and uplink.password")
        if u.path not in ("", "/") or u.query or u.fragment or u.params:
            raise ValueError("the broker URL is scheme://host:port, without path, query or fragment")
        if not _HOST.match(u.hostname) or len(u.hostname) > 253:
            raise ValueError(f"bad host name in broker URL: {u.hostname!r}")
        return v

    @field_validator("keepalive")
    @classmethod
    def _keepalive(cls, v: float) -> float:
        if not 1 <= v <= 65535:
            raise ValueError(f"keepalive of {v:g} s is outside what MQTT allows (1s to 65535s, about 18h)")
        return v

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v:
            raise ValueError("client_id must not be empty (leave it out for edge-agent-<site id>)")
        return _mqtt_string(v, "client_id", MAX_CLIENT_ID)

    @field_validator("username")
    @classmethod
    def _username(cls, v: str | None) -> str | None:
        return v if v is None else _mqtt_string(v, "username", MQTT_MAX_STRING)

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v:
            raise ValueError("topic_prefix must not be empty (topics would start with '/')")
        if "+" in v or "#" in v:
            raise ValueError(f"topic_prefix {v!r} holds an MQTT wildcard (+ or #): it cannot be published to")
        if v.startswith("$"):
            raise ValueError("topic_prefix must not start with '$' (reserved for the broker's own topics)")
        if v.startswith("/") or v.endswith("/") or "//" in v:
            raise ValueError(f"topic_prefix {v!r} has an empty level: no leading, trailing or double '/'")
        return _mqtt_string(v, "topic_prefix", MAX_TOPIC_PREFIX)

    @property
    def host(self) -> str:
        return urlparse(self.broker).hostname or ""

    @property
    def port(self) -> int:
        u = urlparse(self.broker)
        return u.port or (8883 if self.uses_tls else 1883)

    @property
    def uses_tls(self) -> bool:
        """The scheme alone decides: mqtts:// (or ssl://) is TLS, mqtt:// (or tcp://) is cleartext."""
        return urlparse(self.broker).scheme in ("mqtts", "ssl")

    @property
    def loopback(self) -> bool:
        host = self.host
        if host == "localhost" or host.endswith(".localhost"):
            return True
        try:
            ip = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped.is_loopback
        return ip.is_loopback

    @property
    def cleartext_credentials(self) -> bool:
        """A user name or password would cross the network unencrypted (loopback is not the network)."""
        return not self.uses_tls and not self.loopback and (self.username is not None or self.password is not None)


_HOST = re.compile(r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*\.?"
                   r"|[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?)$")


class OutboxConfig(BaseModel):
    model_config = STRICT
    max_bytes: ByteSize = Field(64 * 1024 * 1024, ge=256 * 1024,
                                description="disk budget of queued messages, e.g. 64MiB (at least 256KiB)")
    sync: Literal["full", "normal"] = Field(
        "full", description="full survives power loss (fsync per commit); normal survives process crashes"
    )


class PipelineConfig(BaseModel):
    model_config = STRICT
    max_silence: Duration = Field(
        900.0, description="an unchanged value is re-sent after this long (report-by-exception heartbeat)"
    )




class MetricsConfig(BaseModel):
    """Prometheus metrics (docs/observability.md); both outputs are off unless set."""

    model_config = STRICT
    listen: str | None = Field(
        None, description="serve /metrics on a loopback address (127.0.0.1:9464, [::1]:9464) or a Unix "
        "socket (unix:/run/edge-agent/metrics.sock); off when unset",
    )
    textfile: str | None = Field(
        None, description="write the metrics to this .prom file for node exporter's textfile collector",
    )
    textfile_interval: PositiveDuration = Field(15.0, description="how often the textfile is rewritten")

    @field_validator("listen")
    @classmethod
    def _loopback_only(cls, v: str | None) -> str | None:
        if v is not None:
            parse_listen(v)
        return v

    @field_validator("textfile")
    @classmethod
    def _prom_file(cls, v: str | None) -> str | None:
        if v is not None and not v.endswith(".prom"):
            raise ValueError("node exporter reads only files ending in .prom")
        return v


class StatusConfig(BaseModel):
    model_config = STRICT
    socket: str | None = Field(
        None, description="Unix socket for `edge-agent status` (default: $RUNTIME_DIRECTORY or state_dir)"
    )

    @field_validator("socket")
    @classmethod
    def _socket(cls, v: str | None) -> str | None:
        if v is not None:
            n = len(os.fsencode(v))
            if not v or n > MAX_SOCKET_PATH:
                raise ValueError(f"a Unix socket path is 1 to {MAX_SOCKET_PATH} bytes long (this one: {n})")
        return v


class SiteModel(BaseModel):
    model_config = STRICT
    site: SiteInfo = Field(description="this building")
    state_dir: str | None = Field(
        None, description="where the outbox lives (default: $STATE_DIRECTORY or /var/lib/edge-agent)"
    )
    profiles_dirs: list[str] = Field(default_factory=list, max_length=16,
                                     description="extra profile directories, first wins (at most 16)")
    uplink: UplinkConfig = Field(description="MQTT broker connection")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="durable queue")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="report-by-exception")
    status: StatusConfig = Field(default_factory=StatusConfig, description="local status socket")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus metrics")
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="uvloop (libuv: about a tenth less CPU per polled point, bench/site_poll.py) or "
        "asyncio's own event loop"
    )
    devices: list[DeviceConfigModel] = Field(default_factory=list, description="devices of this building")




@dataclass
class Secrets:
    password: SecretStr | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass
class Site:
    file: str
    model: SiteModel
    devices: list[DeviceConfig]
    profiles: dict[str, Profile]
    secrets: Secrets
    problems: list[Problem] = field(default_factory=list)  # devices skipped, broken profiles

    @property
    def id(self) -> str:
        return self.model.site.id

    @property
    def state_dir(self) -> Path:
        if self.model.state_dir:
            return Path(self.model.state_dir)
        env = os.environ.get("STATE_DIRECTORY")
        return Path(env.split(":")[0]) if env else Path("/var/lib/edge-agent")

    @property
    def socket_path(self) -> Path:
        """Where the agent listens: status.socket, else $RUNTIME_DIRECTORY (systemd), else the state dir."""
        if self.model.status.socket:
            return Path(self.model.status.socket)
        env = os.environ.get("RUNTIME_DIRECTORY")
        return (Path(env.split(":")[0]) if env else self.state_dir) / "agent.sock"

    def client_socket_path(self) -> Path:
        """Where a command run outside the service finds the agent: as above, but without the service's
        environment the systemd runtime directory is tried first."""
        if self.model.status.socket or os.environ.get("RUNTIME_DIRECTORY"):
            return self.socket_path
        for cand in (Path("/run/edge-agent/agent.sock"), self.state_dir / "agent.sock"):
            if cand.exists():
                return cand
        return self.state_dir / "agent.sock"


def _resolve_secret(doc: LocatedDoc, loc: Loc, ref: str | SecretRef | None, kind: Literal["value", "path"],
                    problems: list[Problem]) -> SecretStr | None:
    if ref is None:
        return None
    if isinstance(ref, str):
        if kind == "path" and not Path(ref).is_file():
            problems.append(doc.problem(loc, f"file not found: {ref}"))
            return None
        return SecretStr(ref)
    try:
        return ref.resolve(kind)
    except ValueError as exc:
        problems.append(doc.problem(loc, str(exc)))
        return None


def build_device(doc: LocatedDoc, index: int, dm: DeviceConfigModel,
                 profiles: dict[str, Profile]) -> DeviceConfig:
    loc: Loc = ("devices", index)
    prof = profiles.get(dm.type)
    if prof is None:
        known = ", ".join(sorted(profiles)) or "none found"
        raise ConfigError(doc.problem((*loc, "type"), f"unknown device type {clip(dm.type)}"
                                      f"{did_you_mean(dm.type, profiles)} (known: {known})"))
    spec = get_spec(prof.driver)
    problems: list[Problem] = []
    try:
        conn = spec.connection_model.model_validate(dm.connection)
    except ValidationError as exc:
        problems.extend(_problems_from(exc, doc, (*loc, "connection")))
        conn = None
    points: list[PointBase] = []
    by_name = {p.name: p for p in prof.points}
    for pname in dm.overrides:
        if pname not in by_name:
            problems.append(doc.problem((*loc, "overrides", pname), f"no point {clip(pname)} in profile {prof.id}"))
    for p in prof.points:
        ov = dm.overrides.get(p.name)
        if ov:
            try:
                p = type(p).model_validate({**p.model_dump(exclude_unset=True), **ov})
            except ValidationError as exc:
                problems.extend(_problems_from(exc, doc, (*loc, "overrides", p.name)))
                continue
        points.append(p)
    if conn is not None and spec.check_device is not None:
        problems += [doc.problem((*loc, *sub), msg) for sub, msg in spec.check_device(prof.device or {}, conn)]
    if conn is not None and spec.expand_points is not None and not problems:
        points, found = spec.expand_points(points, conn)
        problems += [doc.problem((*loc, "connection", *sub), msg) for sub, msg in found]
    if problems or conn is None:
        raise ConfigError(problems)
    return DeviceConfig(dm.name, dm.type, prof.driver, spec, dm, prof, conn, points)


MAX_DEVICES = 2000  # devices in one site file; documented in docs/profiles.md


def load_site(path: str | Path, *, strict: bool = True) -> Site:
    """Load and validate a site file and the profiles it uses, reporting every problem in one pass.

    ``strict`` (validate): any problem raises. Not strict (run): a problem in one device entry or one profile
    is collected in ``Site.problems`` and that device is skipped, so the others still run; only problems of
    the site itself (``site``, ``uplink``, ``outbox``..., never a profile) raise.
    """
    doc = load_file(path)
    if not isinstance(doc.data, dict):
        raise ConfigError(doc.not_a_mapping("a site file needs site, uplink and devices"))
    data: dict[Any, Any] = doc.data
    fatal: list[Problem] = []  # the site itself: the agent cannot start with them
    dev_problems: list[Problem] = []  # one device entry each: that device is skipped at run time
    entries: list[Any] = []
    raw_devices = data.get("devices")
    if isinstance(raw_devices, list) and len(raw_devices) > MAX_DEVICES:
        fatal.append(doc.problem(("devices",), f"{len(raw_devices)} devices; the limit is {MAX_DEVICES}"))
    elif isinstance(raw_devices, list):
        entries = raw_devices
    model: SiteModel | None
    try:
        model = SiteModel.model_validate({**data, "devices": []} if isinstance(raw_devices, list) else data)
    except ValidationError as exc:
        fatal.extend(_problems_from(exc, doc))
        model = None
    dmodels: list[tuple[int, DeviceConfigModel]] = []
    for i, entry in enumerate(entries):
        try:
            dmodels.append((i, DeviceConfigModel.model_validate(entry)))
        except ValidationError as exc:
            dev_problems.extend(_problems_from(exc, doc, ("devices", i)))
    raw_dirs = model.profiles_dirs if model else data.get("profiles_dirs")
    base = Path(doc.file).parent
    dirs = [base / d for d in raw_dirs if isinstance(d, str)] if isinstance(raw_dirs, list) else []
    profiles, prof_problems = load_profiles([*dirs, *default_profile_dirs()])
    secrets = Secrets()
    if model is not None:
        _check_uplink(doc, model.uplink, secrets, fatal)
    devices: list[DeviceConfig] = []
    names: dict[str, int] = {}
    for i, dm in dmodels:
        if dm.name in names:
            msg = f"duplicate device name (also devices[{names[dm.name]}])"
            dev_problems.append(doc.problem(("devices", i, "name"), msg))
            continue
        names[dm.name] = i
        try:
            devices.append(build_device(doc, i, dm, profiles))
        except ConfigError as exc:
            dev_problems.extend(exc.problems)
    # A broken profile matters to validate only if a device of this site would have used it.
    used = prof_problems_for(prof_problems, [dm for _, dm in dmodels], profiles)
    site: Site | None = None
    if model is not None and not fatal:
        model = model.model_copy(update={"devices": [dm for _, dm in dmodels]})
        site = Site(str(doc.file), model, devices, profiles, secrets, _dedupe([*dev_problems, *prof_problems]))
    if site is None or fatal or (strict and (dev_problems or used)):
        raise ConfigError(_dedupe([*fatal, *dev_problems, *used]))
    return site


def _check_uplink(doc: LocatedDoc, up: UplinkConfig, secrets: Secrets, problems: list[Problem]) -> None:
    """What the schema cannot see: secrets that must resolve, TLS settings the scheme does not use,
    credentials that would cross the network in cleartext."""
    loc: Loc = ("uplink",)
    secrets.password = _resolve_secret(doc, (*loc, "password"), up.password, "value", problems)
    if secrets.password is not None:
        n = len(secrets.password.get_secret_value().encode("utf-8", "surrogatepass"))
        if n > MQTT_MAX_STRING:
            problems.append(doc.problem((*loc, "password"), f"the password is {n} bytes; MQTT allows "
                                        f"{MQTT_MAX_STRING}"))
    if up.tls is not None:
        if not up.uses_tls:
            problems.append(doc.problem((*loc, "tls"), f"tls: is set but the broker URL {up.broker!r} is cleartext: "
                                        "use mqtts://host:8883 (the scheme decides)"))
        if up.tls.ca_file and not Path(up.tls.ca_file).is_file():
            problems.append(doc.problem((*loc, "tls", "ca_file"), f"file not found: {up.tls.ca_file}"))
        c = _resolve_secret(doc, (*loc, "tls", "cert_file"), up.tls.cert_file, "path", problems)
        k = _resolve_secret(doc, (*loc, "tls", "key_file"), up.tls.key_file, "path", problems)
        secrets.cert_file = c.get_secret_value() if c else None
        secrets.key_file = k.get_secret_value() if k else None
        if bool(up.tls.cert_file) != bool(up.tls.key_file):
            problems.append(doc.problem((*loc, "tls"), "cert_file and key_file go together"))
    if up.cleartext_credentials and not up.allow_insecure:
        key = "password" if up.password is not None else "username"
        problems.append(doc.problem((*loc, key), f"credentials would be sent in cleartext to {up.host} (mqtt://): "
                                    "use mqtts://, or set uplink.allow_insecure: true to accept that"))


def prof_problems_for(prof_problems: list[Problem], devices: Sequence[DeviceConfigModel],
                      profiles: dict[str, Profile]) -> list[Problem]:
    """Profile problems worth failing validation for: those in files of types that are missing."""
    missing = {d.type for d in devices if d.type not in profiles}
    return [p for p in prof_problems if Path(p.file).stem in missing]


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen = set()
    out = []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out
