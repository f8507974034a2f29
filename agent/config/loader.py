"""Site configuration and device-type profiles: schema, loading and located validation.

A *profile* (``profiles/*.yaml``) describes a device type: its driver and its points. The *site file*
describes this building: its id, the uplink, and its devices by type with address and overrides. Each driver
contributes the schema of its points and of its connection settings (``agent.contract.registry``); this module glues
them together and turns every problem into ``FILE:LINE: key.path: message``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator

from agent.config.secrets import SecretRef
from agent.config.yamlloc import Loc, LocatedDoc, load_file
from agent.contract.device import DeviceConfig, DeviceConfigModel, Profile, ProfileMetadata
from agent.contract.points import STRICT, PointBase
from agent.contract.registry import get_spec, known_drivers
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
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key missing"
        elif err["type"] == "string_pattern_mismatch" and loc and loc[-1] in ("id", "name"):
            msg = f"{err['input']!r} is not allowed: use letters, digits, '-', '_' (site id: lower case)"
        out.append(doc.problem(loc, msg))
    return out


def parse_profile(doc: LocatedDoc, default_id: str) -> Profile:
    """Validate one profile document; ConfigError with every located problem."""
    if not isinstance(doc.data, dict):
        raise ConfigError(doc.problem((), "a profile must be a mapping with driver and points"))
    try:
        header = ProfileHeader.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(_problems_from(exc, doc)) from None
    try:
        spec = get_spec(header.driver)
    except KeyError:
        raise ConfigError(
            doc.problem(("driver",), f"unknown driver {header.driver!r}; known: {', '.join(known_drivers())}")
        ) from None
    problems: list[Problem] = []
    points: list[PointBase] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(header.points):
        merged = {**header.defaults, **raw} if isinstance(raw, dict) else raw
        try:
            pt = spec.point_model.model_validate(merged)
        except ValidationError as exc:
            problems.extend(_problems_from(exc, doc, ("points", i)))
            continue
        if pt.name in seen:
            problems.append(doc.problem(("points", i, "name"), f"duplicate point name (also points[{seen[pt.name]}])"))
        seen[pt.name] = i
        if pt.min is not None and pt.max is not None and pt.min > pt.max:
            problems.append(doc.problem(("points", i, "min"), "min is greater than max"))
        points.append(pt)
    if spec.device_model is not None:
        try:
            spec.device_model.model_validate(header.device)
        except ValidationError as exc:
            problems.extend(_problems_from(exc, doc, ("device",)))
    if spec.check_profile is not None and not problems:
        for loc, msg in spec.check_profile(points, header.device):
            problems.append(doc.problem(("points", *loc), msg))
    if problems:
        raise ConfigError(problems)
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
    types keep working."""
    profiles: dict[str, Profile] = {}
    problems: list[Problem] = []
    for d in dirs:
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.yaml")):
            try:
                prof = load_profile(f)
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
    initial: PositiveDuration = Field(1.0, description="first reconnect delay")
    max: PositiveDuration = Field(60.0, description="cap of the reconnect delay")


class UplinkConfig(BaseModel):
    model_config = STRICT
    broker: str = Field(description="mqtt://host:1883 or mqtts://host:8883")
    client_id: str | None = Field(None, description="MQTT client id (default: edge-agent-<site id>)")
    topic_prefix: str = Field("ea/v1", description="first levels of every topic")
    username: str | None = Field(None, description="MQTT user name")
    password: SecretRef | None = Field(None, description="MQTT password by reference")
    tls: TLSConfig | None = Field(None, description="TLS settings; mqtts:// implies TLS with system CAs")
    keepalive: PositiveDuration = Field(30.0, description="MQTT keepalive")
    connect_timeout: PositiveDuration = Field(10.0, description="budget of one connection attempt")
    publish_timeout: PositiveDuration = Field(10.0, description="budget for one PUBACK")
    batch_interval: Duration = Field(1.0, description="telemetry is gathered this long before publishing")
    max_inflight: int = Field(8, ge=1, le=10, description="QoS 1 publishes awaiting PUBACK at once")
    max_message_bytes: ByteSize = Field(
        128 * 1024, ge=4096,
        description="largest payload sent; a larger message is dropped and counted, never retried forever",
    )
    backoff: BackoffConfig = Field(default_factory=BackoffConfig, description="reconnect backoff")

    @field_validator("broker")
    @classmethod
    def _url(cls, v: str) -> str:
        u = urlparse(v)
        if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not u.hostname:
            raise ValueError("broker must look like mqtt://host:1883 or mqtts://host:8883")
        try:
            u.port  # noqa: B018  (raises on a bad port)
        except ValueError as exc:
            raise ValueError(f"bad port in broker URL: {exc}") from None
        return v

    @property
    def host(self) -> str:
        return urlparse(self.broker).hostname or ""

    @property
    def port(self) -> int:
        u = urlparse(self.broker)
        return u.port or (8883 if self.uses_tls else 1883)

    @property
    def uses_tls(self) -> bool:
        return urlparse(self.broker).scheme in ("mqtts", "ssl") or self.tls is not None


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


class SiteModel(BaseModel):
    model_config = STRICT
    site: SiteInfo = Field(description="this building")
    state_dir: str | None = Field(
        None, description="where the outbox lives (default: $STATE_DIRECTORY or /var/lib/edge-agent)"
    )
    profiles_dirs: list[str] = Field(default_factory=list, description="extra profile directories, first wins")
    uplink: UplinkConfig = Field(description="MQTT broker connection")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="durable queue")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="report-by-exception")
    status: StatusConfig = Field(default_factory=StatusConfig, description="local status socket")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus metrics")
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
        raise ConfigError(doc.problem((*loc, "type"), f"unknown device type {dm.type!r} (known: {known})"))
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
            problems.append(doc.problem((*loc, "overrides", pname), f"no point {pname!r} in profile {prof.id}"))
    for p in prof.points:
        ov = dm.overrides.get(p.name)
        if ov:
            try:
                p = type(p).model_validate({**p.model_dump(exclude_unset=True), **ov})
            except ValidationError as exc:
                problems.extend(_problems_from(exc, doc, (*loc, "overrides", p.name)))
                continue
        points.append(p)
    if problems or conn is None:
        raise ConfigError(problems)
    return DeviceConfig(dm.name, dm.type, prof.driver, spec, dm, prof, conn, points)


def load_site(path: str | Path, *, strict: bool = True) -> Site:
    """Load and validate a site file and the profiles it uses.

    ``strict`` (validate): any problem raises. Not strict (run): problems in one device or one profile are
    collected in ``Site.problems`` and that device is skipped, so the others still run.
    """
    doc = load_file(path)
    if not isinstance(doc.data, dict):
        raise ConfigError(doc.problem((), "the site file must be a mapping with site, uplink and devices"))
    try:
        model = SiteModel.model_validate(doc.data)
    except ValidationError as exc:
        problems = _problems_from(exc, doc)
        dev_only = all(p.key.startswith("devices[") for p in problems)
        if strict or not dev_only:
            raise ConfigError(problems) from None
        # Keep the devices that are valid; the broken ones are reported and skipped.
        data = dict(doc.data)
        bad = {int(p.key.split("[")[1].split("]")[0]) for p in problems}
        data["devices"] = [d for i, d in enumerate(data.get("devices") or []) if i not in bad]
        model = SiteModel.model_validate(data)
        pre_problems = problems
    else:
        pre_problems = []
    base = Path(doc.file).parent
    dirs = [(base / d) if not Path(d).is_absolute() else Path(d) for d in model.profiles_dirs]
    profiles, prof_problems = load_profiles([*dirs, *default_profile_dirs()])
    problems = list(pre_problems)
    secrets = Secrets()
    up = model.uplink
    secrets.password = _resolve_secret(doc, ("uplink", "password"), up.password, "value", problems)
    if up.tls is not None:
        if up.tls.ca_file and not Path(up.tls.ca_file).is_file():
            problems.append(doc.problem(("uplink", "tls", "ca_file"), f"file not found: {up.tls.ca_file}"))
        c = _resolve_secret(doc, ("uplink", "tls", "cert_file"), up.tls.cert_file, "path", problems)
        k = _resolve_secret(doc, ("uplink", "tls", "key_file"), up.tls.key_file, "path", problems)
        secrets.cert_file = c.get_secret_value() if c else None
        secrets.key_file = k.get_secret_value() if k else None
        if bool(up.tls.cert_file) != bool(up.tls.key_file):
            problems.append(doc.problem(("uplink", "tls"), "cert_file and key_file go together"))
    fatal = list(problems)
    devices: list[DeviceConfig] = []
    names: dict[str, int] = {}
    for i, dm in enumerate(model.devices):
        if dm.name in names:
            msg = f"duplicate device name (also devices[{names[dm.name]}])"
            (fatal if strict else problems).append(doc.problem(("devices", i, "name"), msg))
            continue
        names[dm.name] = i
        try:
            devices.append(build_device(doc, i, dm, profiles))
        except ConfigError as exc:
            problems.extend(exc.problems)
            if strict:
                fatal.extend(exc.problems)
    # A broken profile matters only if a device of this site uses it, or in strict mode.
    if strict:
        fatal.extend(prof_problems_for(prof_problems, model.devices, profiles))
    else:
        problems.extend(prof_problems)
    if strict and fatal:
        raise ConfigError(_dedupe(fatal))
    if not strict and any(p.key.startswith(("uplink", "site", "outbox")) for p in problems):
        raise ConfigError(_dedupe(problems))
    return Site(str(doc.file), model, devices, profiles, secrets, _dedupe(problems))


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
