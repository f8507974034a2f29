"""``modbus`` driver: Modbus TCP, RTU (serial) and RTU over TCP.

This module holds the schema only (pydantic models): importing it never imports pymodbus. The runtime lives
in ``drivers.modbus.driver`` and is imported only when a device of this driver runs.

Addresses are **0-based protocol addresses**, the number that travels in the request frame. Register maps
that print 1-based "register numbers" (40001, 30001, 3204 for protocol address 3203) must be converted by the
profile author; we do not guess, because the same printed number means different things in different
manuals. Hex strings ("0x0034") are accepted because many maps print hex.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.contract.points import PointBase
from agent.contract.registry import DriverSpec
from agent.contract.writes import bounds, is_null, parse_number, to_bool, to_number, to_text
from agent.types import Duration

Table = Literal["coil", "discrete_input", "holding", "input"]
DataType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]

BIT_TABLES = ("coil", "discrete_input")
REGISTER_TABLES = ("holding", "input")
TYPE_REGISTERS = {
    "bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4,
    "float32": 2, "float64": 4,
}
MAX_REGISTERS = 125  # FC3/FC4 limit of the Modbus specification
MAX_BITS = 2000  # FC1/FC2 limit
MAX_WRITE_REGISTERS = 123  # FC16 limit


def _reference(address: int) -> tuple[str, str, int] | None:
    """(table, what, 0-based address) when ``address`` reads as a 3xxxx / 4xxxx reference number."""
    if 30001 <= address <= 39999:
        return "input", "input register", address - 30001
    if 40001 <= address <= 49999:
        return "holding", "holding register", address - 40001
    return None


def reference_hint(table: str, address: int) -> str | None:
    """For an address that looks like a 3xxxx/4xxxx reference number, what it likely means.

    Such addresses are valid (some devices map registers there), so they are not refused; the hint goes with
    exception 2 (illegal data address) and with ``edge-agent plan``.
    """
    ref = _reference(address)
    if ref is None:
        return None
    ref_table, what, zero = ref
    fix = f"address: {zero}" if ref_table == table else f"table: {ref_table}, address: {zero}"
    return (f"address {address} looks like a {str(address)[0]}xxxx reference number: {what} {address} is "
            f"0-based address {zero} ({fix})")


def _address(v: Any) -> Any:
    if isinstance(v, str):
        s = v.strip().lower()
        if s.startswith("0x"):
            try:
                return int(s, 16)
            except ValueError:
                raise ValueError(f"bad hex address {v!r}") from None
        if s.endswith("h") and all(c in "0123456789abcdef" for c in s[:-1]) and s[:-1]:
            return int(s[:-1], 16)
        if s.isdigit():
            n = int(s)
            ref = _reference(n)
            if ref is not None:
                raise ValueError(
                    f"address {v!r} is quoted and looks like a {s[0]}xxxx reference number ({ref[1]} {n} is "
                    f"0-based address {ref[2]}): give the 0-based protocol address as a number"
                )
            raise ValueError(
                f"address {v!r} is quoted: write the number without quotes (address: {n}) or as hex "
                f"('0x{n:04X}')"
            )
        raise ValueError(
            f"address {v!r}: give the 0-based protocol address as a number or hex (0x0034 or 0034h)"
        )
    return v


class ModbusPoint(PointBase):
    """One Modbus value: where it lives (table, address) and how its registers decode."""

    table: Table = Field(
        description="coil (FC1/5/15), discrete_input (FC2), holding (FC3/6/16) or input register (FC4)"
    )
    address: int = Field(
        ge=0, le=65535,
        description="0-based protocol address as sent in the frame (register 40001 is holding address 0); "
        "decimal or hex string '0x0034' / '0034h'",
    )
    type: DataType = Field(
        "uint16",
        description="value type; bool on a coil/discrete input, or with `bit` a bit of a holding/input register",
    )
    length: int | None = Field(
        None, ge=1, le=MAX_REGISTERS, description="string only: number of registers (2 characters each)"
    )
    bit: int | None = Field(
        None, ge=0, le=15, description="bool in a register: bit number, 0 = least significant bit"
    )
    byte_order: ByteOrder = Field(
        "ABCD",
        validation_alias=AliasChoices("byte_order", "word_order"),
        description="(alias word_order) order of the bytes as they arrive, A = most significant: ABCD "
        "big-endian (Modbus default), CDAB word-swapped (low word first), BADC bytes swapped in each word, "
        "DCBA little-endian. "
        "Generalises to 64-bit (ABCD: words high to low; CDAB: words low to high). Strings: ABCD = first "
        "character in the high byte, BADC = in the low byte",
    )
    scale: float = Field(1.0, description="value = raw * scale + offset (numeric types)")
    offset: float = Field(0.0, description="value = raw * scale + offset (numeric types)")

    _norm_address = field_validator("address", mode="before")(_address)

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: float) -> float:
        if v == 0:
            raise ValueError("scale must not be 0")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ModbusPoint:
        bits = self.table in BIT_TABLES
        if bits and self.type != "bool":
            raise ValueError(f"a {self.table} holds one bit: type must be bool")
        if bits and self.bit is not None:
            raise ValueError("bit applies to holding/input registers, not to coils or discrete inputs")
        if not bits and self.type == "bool" and self.bit is None:
            raise ValueError("bool in a register needs `bit` (0-15)")
        if self.bit is not None and self.type != "bool":
            raise ValueError("bit needs type bool")
        if self.type == "string" and self.length is None:
            raise ValueError("string needs `length` (registers)")
        if self.type != "string" and self.length is not None:
            raise ValueError("length applies to strings only")
        if self.access == "read-write" and self.table in ("discrete_input", "input"):
            raise ValueError(f"{self.table} points are read-only in Modbus: use access: read")
        if self.address + self.register_count - 1 > 65535:
            raise ValueError("point extends past address 65535")
        if (self.scale != 1.0 or self.offset != 0.0) and self.type in ("bool", "string"):
            raise ValueError("scale/offset apply to numeric types only")
        return self

    def parse_write(self, text: str) -> Any:
        if self.type == "string":
            return text
        if is_null(text):
            return None  # refused by check_write with the reason
        if self.table in BIT_TABLES or self.type == "bool":
            return to_bool(text)
        return parse_number(text)

    def check_write(self, value: Any) -> Any:
        """Bits: true/false, 1/0, on/off, active/inactive. Numbers: finite, never a boolean, whole for an
        unscaled integer type, within min/max and (after scale/offset) within the type. Strings: text."""
        if value is None:
            raise ValueError("null (relinquish) is BACnet only: a Modbus point takes a value")
        if self.table in BIT_TABLES or self.type == "bool":
            return to_bool(value)
        if self.type == "string":
            value = to_text(value)
        else:
            whole = self.type.startswith(("int", "uint")) and self.scale == 1.0 and self.offset == 0.0
            value = bounds(to_number(value, integer=whole), self.min, self.max)
        from agent.errors import WriteRefused

        from .codec import encode

        try:
            encode(self, value)  # what the registers can hold
        except WriteRefused as exc:
            raise ValueError(str(exc).removeprefix(f"{self.name}: ")) from None
        return value

    @property
    def register_count(self) -> int:
        """Registers (or bits, for coils/discrete inputs) this point spans."""
        if self.table in BIT_TABLES:
            return 1
        if self.type == "string":
            return self.length or 1
        return TYPE_REGISTERS[self.type]

    @property
    def end(self) -> int:
        return self.address + self.register_count


class ModbusConnection(BaseModel):
    """How to reach the device (site file ``connection:``)."""

    model_config = ConfigDict(extra="forbid")
    transport: Literal["tcp", "rtu", "rtu-over-tcp"] = Field(
        "tcp", description="tcp (Modbus TCP), rtu (serial RS-485/232) or rtu-over-tcp (RTU frames via a "
        "transparent serial server)"
    )
    host: str | None = Field(None, description="tcp / rtu-over-tcp: gateway or device IP address or name")
    port: int = Field(502, ge=1, le=65535, description="tcp / rtu-over-tcp: TCP port")
    unit: int = Field(1, ge=0, le=255, description="unit id (slave address); 1-247 on serial lines")
    serial_port: str | None = Field(None, description="rtu: serial device, e.g. /dev/ttyUSB0")
    baudrate: int = Field(19200, description="rtu: bits per second")
    parity: Literal["N", "E", "O"] = Field("E", description="rtu: parity N(one), E(ven), O(dd)")
    stopbits: Literal[1, 2] = Field(1, description="rtu: stop bits")
    bytesize: Literal[7, 8] = Field(8, description="rtu: data bits")
    inter_frame_gap: Duration | None = Field(
        None, description="rtu: silence between frames (default 3.5 character times; 1.75 ms above 19200 baud)"
    )
    tcp_client: Literal["native", "pymodbus"] = Field(
        "native", description="tcp: the agent's own Modbus TCP client (transaction ids, cheaper per request) or "
        "pymodbus' client; devices sharing one endpoint use what the first of them says"
    )
    max_outstanding: int = Field(
        1, ge=1, le=16,
        description="tcp with the native client: the reads of one poll cycle are sent this many at a time on the "
        "connection (several outstanding transactions, told apart by transaction id); 1: one at a time. Only "
        "for devices and gateways that accept it",
    )
    breaker_threshold: int = Field(
        3, ge=1, le=100, description="consecutive timeouts after which the device is probed only occasionally"
    )
    breaker_probe: Duration = Field(
        60.0, description="while the breaker is open, one probe request this often; other polls fail fast"
    )

    @model_validator(mode="after")
    def _needs(self) -> ModbusConnection:
        if self.transport in ("tcp", "rtu-over-tcp") and not self.host:
            raise ValueError(f"transport {self.transport} needs host")
        if self.transport == "rtu":
            if not self.serial_port:
                raise ValueError("transport rtu needs serial_port")
            if not 1 <= self.unit <= 247:
                raise ValueError("unit on a serial line must be 1-247")
        return self

    def line_settings(self) -> tuple[object, ...]:
        """What every device on one serial line must agree on."""
        return (self.baudrate, self.parity, self.stopbits, self.bytesize) if self.transport == "rtu" else ()

    @property
    def bus_key(self) -> str:
        """One key per physical bus: devices sharing it share one client and one lock."""
        if self.transport == "rtu":
            return f"rtu:{self.serial_port}"
        return f"{self.transport}:{self.host}:{self.port}"

    @property
    def frame_gap(self) -> float:
        """Silence required between RTU frames (Modbus over serial line spec, 2.5.1.1)."""
        if self.transport == "tcp":
            return 0.0
        if self.inter_frame_gap is not None:
            return self.inter_frame_gap
        if self.baudrate > 19200:
            return 0.00175
        char_bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return 3.5 * char_bits / self.baudrate


class ModbusDeviceQuirks(BaseModel):
    """The profile's ``device:`` section: what this device type tolerates."""

    model_config = ConfigDict(extra="forbid")
    max_registers: int = Field(
        MAX_REGISTERS, ge=1, le=MAX_REGISTERS, description="most registers one read may ask for"
    )
    max_bits: int = Field(MAX_BITS, ge=1, le=MAX_BITS, description="most coils/discrete inputs one read may ask for")
    max_gap: int = Field(
        16, ge=0, le=MAX_REGISTERS,
        description="unused registers a read may span to join two points (0: only adjacent points are joined)",
    )
    max_bit_gap: int = Field(64, ge=0, le=MAX_BITS, description="unused bits a coil/discrete-input read may span")
    gap_fill: bool = Field(True, description="false: never read registers no point uses (same as max_gap 0)")
    pause: Duration = Field(0.0, description="wait at least this long between two requests to this device")
    write_multiple: bool = Field(
        False, description="true: write single registers and coils with FC16/FC15 (devices without FC6/FC5)"
    )
    busy_retry_delay: Duration = Field(0.05, description="wait before retrying after exception 6 (busy)")


def check_profile(points: Sequence[PointBase], device: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """Cross-point checks: overlapping points, points larger than one request allows."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    try:
        quirks = ModbusDeviceQuirks.model_validate(device)
    except ValueError:
        quirks = ModbusDeviceQuirks()  # device: errors are reported by the device model
    pts = [(i, p) for i, p in enumerate(points) if isinstance(p, ModbusPoint)]
    for i, p in pts:
        if p.table in REGISTER_TABLES and p.register_count > quirks.max_registers:
            problems.append(
                ((i, "length"), f"point spans {p.register_count} registers; this device reads at most "
                 f"{quirks.max_registers} per request")
            )
    by_table: dict[str, list[tuple[int, ModbusPoint]]] = {}
    for i, p in pts:
        by_table.setdefault(p.table, []).append((i, p))
    for table, items in by_table.items():
        items.sort(key=lambda ip: (ip[1].address, ip[0]))
        active: list[tuple[int, ModbusPoint]] = []
        for ib, b in items:
            active = [(ia, a) for ia, a in active if a.end > b.address]
            for ia, a in active:
                if a.bit is not None or b.bit is not None:
                    # a bit may be read beside its whole status word; the same bit twice is a typo
                    if a.bit == b.bit and a.address == b.address:
                        problems.append(((ib, "bit"), f"same bit as points[{ia}] ({a.name})"))
                    continue
                problems.append(
                    ((ib, "address"), f"overlaps points[{ia}] ({a.name}, {table} {a.address}-{a.end - 1})")
                )
            active.append((ib, b))
    return problems


SPEC = DriverSpec(
    name="modbus",
    point_model=ModbusPoint,
    connection_model=ModbusConnection,
    driver_class="drivers.modbus.driver:ModbusDriver",
    device_model=ModbusDeviceQuirks,
    check_profile=check_profile,
    description="Modbus TCP / RTU / RTU over TCP: energy meters, heat meters, controllers",
)
