"""The agent's own ReadPropertyMultiple framing (drivers/bacnet/rpmcodec.py, fastrpm.py) against bacpypes3.

Both ways: the request octets are compared with what bacpypes3 encodes for the same request, ACKs that
bacpypes3 encodes are decoded here and compared with bacpypes3's own decoding (value type by value type),
and the driver reads the same points from bacpypes3 controllers with the agent's framing and with bacpypes3's
and must get the same samples.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from typing import Any

import pytest
from bacpypes3.apdu import APDU, APCISequence, ReadPropertyMultipleACK, ReadPropertyMultipleRequest
from bacpypes3.basetypes import (
    BinaryPV,
    EngineeringUnits,
    ErrorType,
    PriorityValue,
    PropertyIdentifier,
    PropertyReference,
    ReadAccessResult,
    ReadAccessResultElement,
    ReadAccessResultElementChoice,
    ReadAccessSpecification,
    StatusFlags,
)
from bacpypes3.constructeddata import Any as AnyValue
from bacpypes3.constructeddata import ArrayOf, SequenceOf
from bacpypes3.pdu import PDU, Address
from bacpypes3.primitivedata import (
    BitString,
    Boolean,
    CharacterString,
    Date,
    Double,
    Enumerated,
    Integer,
    Null,
    ObjectIdentifier,
    OctetString,
    Real,
    Time,
    Unsigned,
)
from bacpypes3.vendor import get_vendor_info

from agent.errors import DeviceTimeout
from agent.model import Quality
from drivers.bacnet import rpmcodec as codec
from drivers.bacnet.fastrpm import FastSocket
from drivers.bacnet.values import to_value
from tests.peers.bacnet import BACnetLab, write_profile

VENDOR = get_vendor_info(0)


# ------------------------------------------------------------------------------------------- the request

REQUESTS: list[list[tuple[str, list[tuple[str | int, int | None]]]]] = [
    [("analog-input,1", [("present-value", None)])],
    [("analog-input,1", [("present-value", None), ("status-flags", None), ("units", None)]),
     ("binary-value,7", [("present-value", None)])],
    [("device,4194302", [("object-list", 0), ("object-list", 300), ("object-name", None)])],
    [("analog-value,4194303", [(600, None), (70000, 2), (4194303, 65536)])],  # proprietary, large numbers
    [(f"analog-value,{i}", [("present-value", None)]) for i in range(40)],
]


def _bacpypes3_request_octets(specs: list[tuple[str, list[tuple[str | int, int | None]]]], invoke: int) -> bytes:
    ras = []
    for oid, props in specs:
        refs = []
        for prop, index in props:
            ref = PropertyReference(propertyIdentifier=PropertyIdentifier(prop))
            if index is not None:
                ref.propertyArrayIndex = index
            refs.append(ref)
        ras.append(ReadAccessSpecification(objectIdentifier=ObjectIdentifier(oid), listOfPropertyReferences=refs))
    req = ReadPropertyMultipleRequest(listOfReadAccessSpecs=SequenceOf(ReadAccessSpecification)(ras),
                                      destination=Address("127.0.0.1:47808"))
    # what the agent's header says: no segmentation either way, 1476 octets accepted (code 5)
    req.apduInvokeID, req.apduSeg, req.apduMor, req.apduSA, req.apduMaxSegs, req.apduMaxResp = invoke, 0, 0, 0, 0, 5
    return bytes(req.encode().encode().pduData)


@pytest.mark.parametrize("specs", REQUESTS, ids=["one", "two-objects", "array-index", "large-numbers", "forty"])
def test_request_octets_are_bacpypes3s(specs: list[tuple[str, list[tuple[str | int, int | None]]]]) -> None:
    ours = []
    for oid, props in specs:
        t, i = ObjectIdentifier(oid)
        ours.append((int(t), i, [(int(PropertyIdentifier(p)), idx) for p, idx in props]))
    for invoke in (0, 7, 255):
        datagram = codec.frame_request(invoke, codec.encode_request(ours))
        assert datagram[:2] == b"\x81\x0a" and int.from_bytes(datagram[2:4], "big") == len(datagram)
        assert datagram[4:6] == b"\x01\x04"  # NPDU version 1, expecting a reply, nothing routed
        assert datagram[6:] == _bacpypes3_request_octets(specs, invoke)


def test_request_refuses_what_cannot_be_encoded() -> None:
    for bad in ([(1024, 1, [(85, None)])], [(0, 1 << 22, [(85, None)])], [(0, 1, [(-1, None)])],
                [(0, 1, [(1 << 32, None)])]):
        with pytest.raises(ValueError):
            codec.encode_request(bad)


# ------------------------------------------------------------------------------------------- the ACK

def _error(code: str) -> ErrorType:
    return ErrorType(errorClass="property", errorCode=code)


# (object, property, array index, what the device sends): one ACK element each; the property decides the type
ELEMENTS: list[tuple[str, str | int, int | None, Any]] = [
    ("analog-value,1", "present-value", None, Real(21.5)),
    ("analog-value,2", "present-value", None, Real(-0.0)),
    ("analog-value,3", "present-value", None, Real(1.17549435e-38)),
    ("analog-value,4", "present-value", None, Real(3.4028235e38)),
    ("analog-value,5", "present-value", None, Real(float("inf"))),
    ("analog-value,6", "present-value", None, Real(float("nan"))),
    ("analog-value,7", "present-value", None, Real(17.139999389648438)),
    ("analog-value,8", "present-value", None, Unsigned(7)),  # another type than the property's
    ("analog-value,9", "present-value", None, Null(())),
    ("large-analog-value,1", "present-value", None, Double(1.2345678901234567)),
    ("large-analog-value,2", "present-value", None, Double(-1e300)),
    ("integer-value,1", "present-value", None, Integer(-5)),
    ("integer-value,2", "present-value", None, Integer(-(2**31))),
    ("integer-value,3", "present-value", None, Integer(2**31 - 1)),
    ("integer-value,4", "present-value", None, Integer(0)),
    ("positive-integer-value,1", "present-value", None, Unsigned(0)),
    ("positive-integer-value,2", "present-value", None, Unsigned(2**32 - 1)),
    ("positive-integer-value,3", "present-value", None, Unsigned(300)),
    ("multi-state-value,1", "present-value", None, Unsigned(4)),
    ("binary-value,1", "present-value", None, BinaryPV("active")),
    ("binary-value,2", "present-value", None, BinaryPV("inactive")),
    ("binary-value,3", "present-value", None, BinaryPV(2)),  # not a state: bacpypes3's driver path says False
    ("analog-input,1", "units", None, EngineeringUnits("degrees-celsius")),
    ("analog-input,2", "units", None, EngineeringUnits(98)),
    ("analog-input,3", "units", None, Enumerated(60000)),  # a number the enumeration does not name
    ("analog-input,1", "event-state", None, Enumerated(0)),
    ("analog-input,1", "out-of-service", None, Boolean(True)),
    ("analog-input,2", "out-of-service", None, Boolean(False)),
    ("analog-input,1", "object-name", None, CharacterString("room-temp")),  # at least one character
    ("analog-input,3", "object-name", None, CharacterString("")),  # so bacpypes3 refuses this one
    ("analog-input,2", "description", None, CharacterString("température extérieure")),  # any length
    ("analog-input,3", "description", None, CharacterString("")),
    ("analog-input,4", "description", None, CharacterString("y" * 100)),  # a one-octet length
    ("analog-input,5", "description", None, CharacterString("x" * 300)),  # a two-octet length
    ("analog-input,1", "status-flags", None, StatusFlags([0, 1, 0, 0])),
    ("analog-input,1", "description", None, OctetString(b"\x00\xff")),  # the wrong type: bacpypes3 decides
    ("device,1", "local-date", None, Date((2026 - 1900, 12, 2, 3))),
    ("device,1", "local-time", None, Time((7, 45, 3, 50))),
    ("device,1", "object-list", 0, Unsigned(3)),
    ("device,1", "object-list", 2, ObjectIdentifier("analog-input,1")),
    ("device,1", "object-list", None,
     ArrayOf(ObjectIdentifier)([ObjectIdentifier("device,1"), ObjectIdentifier("analog-input,1")])),
    ("analog-value,1", "priority-array", 8, PriorityValue(null=Null(()))),
    ("analog-value,1", "priority-array", 9, PriorityValue(real=Real(19.5))),
    ("analog-value,1", "relinquish-default", None, Real(21.0)),
    ("analog-input,1", 600, None, Unsigned(5)),  # a proprietary property: no type known
    ("analog-input,1", "cov-increment", None, _error("unknown-property")),
    ("analog-input,99", "present-value", None, ErrorType(errorClass="object", errorCode="unknown-object")),
    ("device,1", "time-of-device-restart", None, BitString([1, 0, 1])),  # the wrong type: bacpypes3 decides
    ("device,1", "vendor-identifier", None, Unsigned(999)),
]


def _ack(elements: list[tuple[str, str | int, int | None, Any]]) -> bytes:
    """A ReadPropertyMultiple-ACK encoded by bacpypes3 (APDU octets from the ComplexACK header on)."""
    results: dict[str, list[Any]] = {}
    for oid, prop, index, value in elements:
        choice = ReadAccessResultElementChoice(propertyAccessError=value) if isinstance(value, ErrorType) \
            else ReadAccessResultElementChoice(propertyValue=AnyValue(value))
        el = ReadAccessResultElement(propertyIdentifier=PropertyIdentifier(prop), readResult=choice)
        if index is not None:
            el.propertyArrayIndex = index
        results.setdefault(oid, []).append(el)
    ack = ReadPropertyMultipleACK(listOfReadAccessResults=[
        ReadAccessResult(objectIdentifier=ObjectIdentifier(oid), listOfResults=els) for oid, els in results.items()])
    ack.apduInvokeID, ack.apduSeg, ack.apduMor = 9, 0, 0
    ack.pduDestination = Address("127.0.0.1:47808")
    return bytes(ack.encode().encode().pduData)


def _theirs(apdu_octets: bytes) -> dict[tuple[int, int, int, int | None], tuple[Any, str | None]]:
    """bacpypes3's decoding of the ACK, each value cast to the property's type as its read_property_multiple
    does, then turned into the agent's value as the driver does."""
    ack = APCISequence.decode(APDU.decode(PDU(apdu_octets, source=Address("127.0.0.1:47808"))))
    out: dict[tuple[int, int, int, int | None], tuple[Any, str | None]] = {}
    for rar in ack.listOfReadAccessResults:
        obj_type, instance = rar.objectIdentifier
        cls = VENDOR.get_object_class(obj_type)
        for el in rar.listOfResults:
            key = (int(obj_type), instance, int(el.propertyIdentifier), el.propertyArrayIndex)
            if el.readResult.propertyAccessError is not None:
                out[key] = (None, str(el.readResult.propertyAccessError.errorCode))
                continue
            vt = codec.value_type(cls.get_property_type(el.propertyIdentifier), el.propertyArrayIndex)
            if vt.datatype is None:
                out[key] = (None, None)
                continue
            try:
                v = el.readResult.propertyValue.cast_out(vt.datatype)
            except Exception as exc:  # what bacpypes3 cannot decode fails the point either way
                out[key] = (None, f"raises {type(exc).__name__}")
                continue
            out[key] = (None, v.strip("-")) if isinstance(v, str) and v.startswith("-no ") else (to_value(v), None)
    return out


def _ours(apdu_octets: bytes) -> dict[tuple[int, int, int, int | None], tuple[Any, str | None]]:
    assert apdu_octets[0] == 0x30 and apdu_octets[2] == codec.SERVICE_RPM
    out: dict[tuple[int, int, int, int | None], tuple[Any, str | None]] = {}
    for key, (raw, error) in codec.decode_ack(apdu_octets, 3).items():
        if error is not None:
            from bacpypes3.basetypes import ErrorCode

            out[key] = (None, str(ErrorCode(error[1])))
            continue
        cls = VENDOR.get_object_class(key[0])
        vt = codec.value_type(cls.get_property_type(PropertyIdentifier(key[2])), key[3])
        assert raw is not None
        value, why = codec.decode_value(bytes(raw), vt)
        out[key] = (value, "raises" if why and why.startswith("undecodable") else why)
    return out


def _same(a: tuple[Any, str | None], b: tuple[Any, str | None]) -> bool:
    (va, ea), (vb, eb) = a, b
    if (ea or "").startswith("raises") and (eb or "").startswith("raises"):
        return True
    if isinstance(va, float) and isinstance(vb, float) and math.isnan(va) and math.isnan(vb):
        return ea == eb
    return (va, type(va), ea) == (vb, type(vb), eb)


def _key(oid: str, prop: str | int, index: int | None) -> tuple[int, int, int, int | None]:
    t, i = ObjectIdentifier(oid)
    return int(t), i, int(PropertyIdentifier(prop)), index


def test_every_value_type_decodes_as_bacpypes3_decodes_it() -> None:
    octets = _ack(ELEMENTS)
    ours, theirs = _ours(octets), _theirs(octets)
    assert list(ours) == list(theirs) and len(ours) == len(ELEMENTS)
    for oid, prop, index, value in ELEMENTS:
        key = _key(oid, prop, index)
        assert _same(ours[key], theirs[key]), (oid, prop, index, value, ours[key], theirs[key])
    # and what they are, for the common ones (so the comparison cannot pass on two wrong answers)
    pv = {oid: ours[_key(oid, prop, None)][0] for oid, prop, _i, _v in ELEMENTS if prop == "present-value"}
    assert pv["analog-value,1"] == 21.5 and pv["analog-value,7"] == 17.14
    assert pv["large-analog-value,1"] == 1.2345678901234567 and pv["integer-value,2"] == -(2**31)
    assert pv["positive-integer-value,2"] == 2**32 - 1 and pv["binary-value,1"] is True
    assert pv["binary-value,2"] is False and pv["analog-value,9"] is None
    assert ours[_key("analog-input,1", "units", None)] == ("degrees-celsius", None)
    assert ours[_key("analog-input,2", "description", None)] == ("température extérieure", None)
    assert ours[_key("analog-input,4", "description", None)] == ("y" * 100, None)
    assert ours[_key("analog-input,1", "object-name", None)] == ("room-temp", None)
    assert ours[_key("analog-input,99", "present-value", None)] == (None, "unknown-object")


# the elements above that bacpypes3 decodes (everything else is decoded here)
LEFT_TO_BACPYPES3 = {
    ("analog-value,8", "present-value", None),  # an Unsigned where the property is a Real
    ("analog-value,9", "present-value", None),  # a Null
    ("analog-input,1", "object-name", None),  # bacpypes3's object-name has a minimum length
    ("analog-input,3", "object-name", None),
    ("analog-input,5", "description", None),  # a string of 300 octets
    ("analog-input,1", "status-flags", None),  # bit strings, dates, times, object identifiers
    ("analog-input,1", "description", None),
    ("device,1", "local-date", None),
    ("device,1", "local-time", None),
    ("device,1", "object-list", 2),
    ("device,1", "object-list", None),  # a whole array
    ("analog-value,1", "priority-array", 8),  # a CHOICE
    ("analog-value,1", "priority-array", 9),
    ("analog-input,1", 600, None),  # no type known: None, as bacpypes3 gives
    ("device,1", "time-of-device-restart", None),
}


def test_values_taken_here_and_those_left_to_bacpypes3(monkeypatch: pytest.MonkeyPatch) -> None:
    """The common kinds really are decoded here: bacpypes3's decoding is not called for them."""
    left: list[bytes] = []
    real_slow = codec._slow

    def counting(raw: bytes, vt: codec.ValueType) -> Any:
        left.append(bytes(raw))
        return real_slow(raw, vt)

    monkeypatch.setattr(codec, "_slow", counting)
    octets = _ack(ELEMENTS)
    _ours(octets)
    expected = {_value_octets(v) for oid, prop, index, v in ELEMENTS if (oid, prop, index) in LEFT_TO_BACPYPES3}
    assert len(left) == len(LEFT_TO_BACPYPES3) and set(left) == expected


def _value_octets(value: Any) -> bytes:
    """What a value looks like between the opening and closing tag 4 (as bacpypes3 encodes it)."""
    return bytes(AnyValue(value).encode().encode().pduData)


def test_damaged_acks_fail_cleanly() -> None:
    """Truncated, bit-flipped and random replies either parse or raise Malformed: nothing else escapes."""
    rng = random.Random(15)
    good = _ack(ELEMENTS)
    cases = [good[:n] for n in range(3, len(good))]
    for _ in range(3000):
        b = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(3, len(b))] = rng.randrange(256)
        cases.append(bytes(b))
    cases += [bytes([0x30, 1, 14]) + rng.randbytes(rng.randint(0, 64)) for _ in range(3000)]
    parsed = 0
    for c in cases:
        try:
            results = codec.decode_ack(c, 3)
        except codec.Malformed:
            continue
        parsed += 1
        for key, (raw, _error) in results.items():
            if raw is not None:
                cls = VENDOR.get_object_class(key[0] % 60)
                prop_type = cls.get_property_type(PropertyIdentifier(key[2] % 400)) if cls else None
                _value, why = codec.decode_value(bytes(raw), codec.value_type(prop_type, key[3]))
                assert why is None or isinstance(why, str)
    assert parsed > 100  # bit flips inside values still parse


def test_reply_header_takes_only_direct_replies() -> None:
    ack = b"\x81\x0a\x00\x0b\x01\x00" + bytes([0x30, 5, 14])
    assert codec.reply_header(ack) == (codec.PDU_COMPLEX_ACK, 5, 9)
    assert codec.reply_header(ack[:8] + bytes([12])) == (codec.PDU_COMPLEX_ACK, 5, -1)  # another service
    assert codec.reply_header(b"\x81\x0b" + ack[2:]) is None  # a broadcast
    assert codec.reply_header(b"\x81\x04" + ack[2:]) is None  # forwarded by a BBMD
    assert codec.reply_header(ack[:5] + b"\x08" + ack[6:]) is None  # SNET present: from behind a router
    assert codec.reply_header(ack[:5] + b"\x80" + ack[6:]) is None  # a network-layer message
    assert codec.reply_header(ack[:6] + bytes([0x38, 5, 0, 1, 14])) is None  # segmented: bacpypes3's
    assert codec.reply_header(ack[:6] + bytes([0x50, 5, 14])) == (codec.PDU_ERROR, 5, 8)
    assert codec.reply_header(ack[:6] + bytes([0x71, 5, 4])) == (codec.PDU_ABORT, 5, 8)
    assert codec.reply_header(ack[:6] + bytes([0x00, 5, 5, 14])) is None  # a request


def test_invoke_ids_skip_those_bacpypes3_has_outstanding() -> None:
    class Proto:
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            pass

    class Req:
        def __init__(self, invoke: int) -> None:
            self.apduInvokeID = invoke

    addr = Address("127.0.0.10:47808")
    app: Any = type("App", (), {})()
    app.next_invoke_id = 10
    app._requests = {addr: [(Req(10), None), (Req(11), None)]}
    sock = FastSocket(transport=None, protocol=Proto(), app=app, local=("127.0.0.3", 47809))  # type: ignore[arg-type]
    assert sock._invoke_id(("127.0.0.10", 47808), addr) == 12
    assert app.next_invoke_id == 13
    app.next_invoke_id = 255
    assert sock._invoke_id(("127.0.0.11", 47808), Address("127.0.0.11:47808")) == 255
    assert app.next_invoke_id == 0
    sock.close()


# ------------------------------------------------------------------------------------- against peers

KIND_POINTS = """\
- {name: ai1, object_type: analog-input, instance: 1}
- {name: ai4, object_type: analog-input, instance: 4}
- {name: av1, object_type: analog-value, instance: 1}
- {name: bv1, object_type: binary-value, instance: 1}
- {name: bi1, object_type: binary-input, instance: 1}
- {name: msv1, object_type: multi-state-value, instance: 1}
- {name: ao1, object_type: analog-output, instance: 1}
- {name: bo1, object_type: binary-output, instance: 1}
- {name: mso1, object_type: multi-state-output, instance: 1}
- {name: iv1, object_type: integer-value, instance: 1}
- {name: piv1, object_type: positive-integer-value, instance: 1}
- {name: lav1, object_type: large-analog-value, instance: 1}
- {name: csv1, object_type: characterstring-value, instance: 1}
- {name: units, object_type: analog-input, instance: 1, property: units}
- {name: flags, object_type: analog-input, instance: 1, property: status-flags}
- {name: oos, object_type: analog-input, instance: 1, property: out-of-service}
- {name: desc, object_type: analog-input, instance: 4, property: description}
- {name: state, object_type: analog-input, instance: 1, property: event-state}
- {name: pa8, object_type: analog-value, instance: 1, property: priority-array, array_index: 8}
- {name: pa16, object_type: analog-value, instance: 1, property: priority-array, array_index: 16}
- {name: pa0, object_type: analog-value, instance: 1, property: priority-array, array_index: 0}
- {name: pa, object_type: analog-value, instance: 1, property: priority-array}
- {name: texts, object_type: multi-state-value, instance: 1, property: state-text, array_index: 2}
- {name: restart, object_type: device, instance: 1001, property: time-of-device-restart}
- {name: ghost, object_type: analog-input, instance: 99}
- {name: noprop, object_type: binary-input, instance: 1, property: cov-increment}
- {name: vendor_prop, object_type: analog-input, instance: 3, property: 600}
"""


async def _both(lab: BACnetLab, sim: Any, points: str) -> tuple[Any, Any]:
    write_profile(lab.tmp, "kinds", points)
    write_profile(lab.tmp, "kinds-b3", points, device="rpm_codec: bacpypes3")
    ours = await lab.driver("kinds", sim, name="ours")
    theirs = await lab.driver("kinds-b3", sim, name="theirs")
    return ours, theirs


def _compare(a: list[Any], b: list[Any]) -> None:
    assert [s.point for s in a] == [s.point for s in b]
    for x, y in zip(a, b, strict=True):
        assert (x.value, type(x.value), x.quality, x.error) == (y.value, type(y.value), y.quality, y.error), (x, y)


async def test_same_samples_as_bacpypes3_from_a_controller(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim(kinds=True, move=False, max_apdu=1476)  # one reply fits: framed by the agent
    ours, theirs = await _both(bacnet_lab, sim, KIND_POINTS)
    ip, port = sim.host.rsplit(":", 1)
    assert ours.fast is not None and ours.fast.dest == (ip, int(port))
    assert theirs.fast is None
    # values of every kind, including the edges of each type
    for objid, value in [("analog-value,1", -0.0), ("integer-value,1", -(2**31)),
                         ("positive-integer-value,1", 2**32 - 1), ("large-analog-value,1", -1.2345678901234567e300),
                         ("characterstring-value,1", "Ünïcode ✓"),
                         ("analog-input,1", 17.139999389648438), ("binary-value,1", "inactive"),
                         ("multi-state-output,1", 3), ("analog-output,1", float("inf"))]:
        sim.obj(objid).presentValue = value
    sim.obj("analog-value,1").priorityArray[15] = PriorityValue(real=Real(19.5))
    sent = ours._bus.fast.sent
    a = await ours.read(ours.device.enabled_points)
    b = await theirs.read(theirs.device.enabled_points)
    _compare(a, b)
    got = {s.point: s for s in a}
    assert got["iv1"].value == -(2**31) and got["piv1"].value == 2**32 - 1 and got["csv1"].value == "Ünïcode ✓"
    assert got["ai1"].value == 17.14 and got["bv1"].value is False and got["units"].value == "degrees-celsius"
    assert got["pa16"].value == 19.5 and got["pa8"].value is None and got["pa0"].value == 16
    assert (got["ghost"].quality, got["ghost"].error) == (Quality.ERROR, "unknown-object")
    assert (got["noprop"].quality, got["noprop"].error) == (Quality.ERROR, "unknown-property")
    assert ours._bus.fast.sent > sent  # the poll went out framed by the agent
    # a second poll: the unchanged octets give the same values; a changed value is seen
    sim.obj("analog-input,4").presentValue = 9.25
    a2 = await ours.read(ours.device.enabled_points)
    b2 = await theirs.read(theirs.device.enabled_points)
    _compare(a2, b2)
    assert {s.point: s.value for s in a2}["ai4"] == 9.25


async def test_fast_polls_and_bacpypes3_requests_share_the_socket(bacnet_lab: BACnetLab) -> None:
    """bacpypes3's own requests (ReadProperty, WriteProperty) on the same socket as the agent's framed
    polls, at the same time: every reply reaches its requester."""
    sim = await bacnet_lab.sim(move=False)
    write_profile(bacnet_lab.tmp, "ahu", """\
        - {name: supply, object_type: analog-input, instance: 1}
        - {name: setpoint, object_type: analog-value, instance: 1, access: read-write, priority: 8}
        - {name: mode, object_type: multi-state-value, instance: 1}
    """)
    drv = await bacnet_lab.driver("ahu", sim)
    setpoint = next(p for p in drv.device.points if p.name == "setpoint")

    async def polls() -> None:
        for _ in range(30):
            got = {s.point: s for s in await drv.read(drv.device.enabled_points)}
            assert got["supply"].value == 16.0 and got["mode"].value == 4

    async def others() -> None:
        for i in range(30):
            assert await drv._rp("analog-input,3", "present-value") == 21.0
            await drv.write(setpoint, 18.0 + (i % 5))

    before = drv._bus.fast.sent
    await asyncio.gather(polls(), others())
    assert drv._bus.fast.sent >= before + 30
    assert sim.requests["ReadPropertyRequest"] >= 30 and sim.requests["WritePropertyRequest"] == 30


async def test_a_device_without_rpm_is_read_property_by_property(bacnet_lab: BACnetLab,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A Reject to the agent's framed request: bacpypes3 asks again, gets the same Reject, and the driver
    reads the points one by one as before."""
    sim = await bacnet_lab.sim(rpm=False, move=False)
    write_profile(bacnet_lab.tmp, "ahu", """\
        - {name: supply, object_type: analog-input, instance: 1}
        - {name: room, object_type: analog-input, instance: 3}
    """, device="read_property_multiple: auto")
    drv = await bacnet_lab.driver("ahu", sim)
    drv.facts.rpm = True  # as if the device listed the service and then refused it
    with caplog.at_level(logging.INFO, logger="drivers.bacnet"):
        got = {s.point: s.value for s in await drv.read(drv.device.enabled_points)}
    assert got == {"supply": 16.0, "room": 21.0}
    assert "Reject to a ReadPropertyMultiple" in caplog.text
    assert drv.facts.rpm is False


async def test_framed_polls_follow_the_device_to_a_new_address(bacnet_lab: BACnetLab) -> None:
    """An I-Am from a new address moves the driver (DHCP): the agent's framed polls go there too."""
    old = await bacnet_lab.sim(move=False)
    new = await bacnet_lab.sim(move=False)
    new.obj("analog-input,1").presentValue = 33.5
    write_profile(bacnet_lab.tmp, "ahu", "- {name: supply, object_type: analog-input, instance: 1}\n")
    drv = await bacnet_lab.driver("ahu", old)
    assert [s.value for s in await drv.read(drv.device.enabled_points)] == [16.0]
    drv.address = Address(new.host)  # what heard_from() does for a device without a fixed address
    sent = drv._bus.fast.sent
    assert [s.value for s in await drv.read(drv.device.enabled_points)] == [33.5]
    assert drv._bus.fast.sent == sent + 1 and drv.fast.dest == Address(new.host).addrTuple


async def test_a_device_that_never_answers_the_agents_framing_is_read_through_bacpypes3(
        bacnet_lab: BACnetLab, caplog: pytest.LogCaptureFixture) -> None:
    """A controller that ignores requests not accepting a segmented reply (the agent's framing) but answers
    bacpypes3's: the first poll times out once, bacpypes3 answers it, and that point set stays with bacpypes3.
    A device that answered the framing before and then falls silent is a timeout, with no second request."""
    sim = await bacnet_lab.sim(move=False)
    assert sim.app is not None
    sim.app.mute_unless_segmented_ok = True
    write_profile(bacnet_lab.tmp, "ahu", "- {name: supply, object_type: analog-input, instance: 1}\n"
                  "- {name: mode, object_type: multi-state-value, instance: 1}\n")
    drv = await bacnet_lab.driver("ahu", sim, timeout=0.5)
    with caplog.at_level(logging.WARNING):
        got = {s.point: s.value for s in await drv.read(drv.device.enabled_points)}
    assert got == {"supply": 16.0, "mode": 4}
    assert "no answer to the agent's own ReadPropertyMultiple" in caplog.text
    sent = drv._bus.fast.sent
    for _ in range(3):
        assert {s.point: s.value for s in await drv.read(drv.device.enabled_points)} == got
    assert drv._bus.fast.sent == sent  # bacpypes3 reads it now: no framed request, no timeout

    other = await bacnet_lab.sim(move=False)  # answers the framing, then goes silent
    write_profile(bacnet_lab.tmp, "ahu2", "- {name: supply, object_type: analog-input, instance: 1}\n")
    drv2 = await bacnet_lab.driver("ahu2", other, name="ahu2", timeout=0.5)
    assert [s.value for s in await drv2.read(drv2.device.enabled_points)] == [16.0]
    assert other.app is not None
    other.app.mute_unless_segmented_ok = True
    other.requests.clear()
    with pytest.raises(DeviceTimeout):
        await drv2.read(drv2.device.enabled_points)
    assert other.requests["ReadPropertyMultipleRequest"] == 1  # no fallback request for a proven framing
