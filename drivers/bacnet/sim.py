"""A simulated air-handler / room controller on BACnet/IP (a real bacpypes3 device, for tests and the demo).

    python -m drivers.bacnet.sim --address 127.0.0.2/8 --instance 1001

Objects: supply/return/room/outdoor temperature and humidity (analog inputs, moving), a writable room
setpoint (commandable analog value, priority array), fan command (commandable binary value), fan status
(binary input following the command), operating mode (multi-state value) and optionally many extra analog
values for batching tests. Options emulate small controllers: ``--max-apdu 206 --no-segmentation`` makes
the device abort replies that do not fit one APDU (bacpypes3 itself would happily send them), ``--no-rpm``
rejects ReadPropertyMultiple. Every confirmed request is counted per service (``requests``). The device object
carries ``time-of-device-restart`` (the start time); ``--announce ADDR`` sends an I-Am once bound, as
controllers do at start; ``--hold`` imports everything and binds only on a line from stdin, so a test can
restart the controller in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import signal
import sys
from collections import Counter
from types import SimpleNamespace
from typing import Any

from bacpypes3.apdu import AbortPDU, ComplexAckPDU, ConfirmedRequestPDU, RejectPDU
from bacpypes3.app import Application
from bacpypes3.basetypes import DateTime, EngineeringUnits, Segmentation, TimeStamp
from bacpypes3.local.analog import AnalogInputObject, AnalogValueObject, AnalogValueObjectCmd
from bacpypes3.local.binary import BinaryInputObject, BinaryValueObjectCmd
from bacpypes3.local.multistate import MultiStateValueObject
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import Date, ObjectIdentifier, Time

MODES = ["off", "heat", "cool", "auto"]


class SimApplication(Application):
    """bacpypes3 application that counts requests and honours its own max APDU for replies."""

    requests: Counter[str]
    reply_limit: int | None = None
    rpm: bool = True
    # a quirk for tests: confirmed requests that do not accept a segmented reply get no answer at all
    mute_unless_segmented_ok: bool = False

    async def indication(self, apdu: Any) -> None:
        if isinstance(apdu, ConfirmedRequestPDU):
            self.requests[type(apdu).__name__] += 1
            if self.mute_unless_segmented_ok and not apdu.apduSA:
                return
        if not self.rpm and type(apdu).__name__ == "ReadPropertyMultipleRequest":
            # a device without the service answers Reject unrecognized-service
            await self.response(RejectPDU(reason="unrecognizedService", context=apdu))
            return
        await super().indication(apdu)

    async def response(self, apdu: Any) -> None:
        if self.reply_limit is not None and isinstance(apdu, ComplexAckPDU):
            if _encoded_size(apdu) > self.reply_limit:
                abort = AbortPDU(srv=True, invoke_id=apdu.apduInvokeID, reason="segmentationNotSupported")
                abort.pduDestination = apdu.pduDestination
                await super().response(abort)
                return
        await super().response(apdu)


def _kind_objects() -> list[Any]:
    """One commandable object of each present-value type a write can carry (``kinds=True``): outputs, INTEGER,
    Unsigned, Double and CharacterString values, each at instance 1, relinquish default as present value."""
    from bacpypes3 import object as std
    from bacpypes3.local.analog import AnalogOutputObject
    from bacpypes3.local.binary import BinaryOutputObject
    from bacpypes3.local.cmd import Commandable
    from bacpypes3.local.multistate import MultiStateOutputObject
    from bacpypes3.local.object import Object as LocalObject

    def cmd(base: type) -> type:
        return type(f"Local{base.__name__}", (Commandable, LocalObject, base), {})

    specs: list[tuple[type, str, Any, dict[str, Any]]] = [
        (AnalogOutputObject, "analog-output", 50.0, {"units": EngineeringUnits.percent}),
        (BinaryOutputObject, "binary-output", "inactive", {}),
        (MultiStateOutputObject, "multi-state-output", 1, {"numberOfStates": 3}),
        (cmd(std.IntegerValueObject), "integer-value", 0, {}),
        (cmd(std.PositiveIntegerValueObject), "positive-integer-value", 0, {}),
        (cmd(std.LargeAnalogValueObject), "large-analog-value", 0.0, {}),
        (cmd(std.CharacterStringValueObject), "characterstring-value", "", {}),
    ]
    return [cls(objectIdentifier=(otype, 1), objectName=f"{otype}-1", presentValue=pv, relinquishDefault=pv, **kw)
            for cls, otype, pv, kw in specs]


def _encoded_size(apdu: Any) -> int:
    encoded = apdu.encode()
    return 3 + len(encoded.pduData)  # + unsegmented ComplexACK header: type, invoke id, service choice


class SimController:
    """The simulated controller: objects, a task that moves values, counters, and fault switches."""

    def __init__(self, address: str, instance: int = 1001, *, name: str = "sim-ahu", port: int = 47808,
                 max_apdu: int = 1024, segmentation: bool = True, rpm: bool = True, extra: int = 0,
                 tick: float = 1.0, move: bool = True, seed: int = 1, kinds: bool = False,
                 announce: str | None = None) -> None:
        self.address = address if ":" in address.split("/")[-1] else f"{address}:{port}"
        self.instance = instance
        self.name = name
        self.max_apdu = max_apdu
        self.segmentation = segmentation
        self.rpm = rpm
        self.extra = extra
        self.kinds = kinds
        self.announce = announce  # send an I-Am here once bound ('broadcast': global), as controllers do
        self.tick = tick
        self.move = move
        self.rng = random.Random(seed)
        self.app: SimApplication | None = None
        self._task: asyncio.Task[None] | None = None
        self.objects: dict[str, Any] = {}

    @property
    def host(self) -> str:
        """``127.0.0.2:47808``: what a client puts in ``connection.address``."""
        ip, _, rest = self.address.partition("/")
        port = rest.partition(":")[2] or "47808"
        return f"{ip}:{port}"

    @property
    def requests(self) -> Counter[str]:
        assert self.app is not None
        return self.app.requests

    def obj(self, objid: str) -> Any:
        assert self.app is not None
        return self.app.get_object_id(ObjectIdentifier(objid))

    async def start(self, ready_timeout: float = 3.0) -> None:
        args = SimpleNamespace(name=self.name, instance=self.instance, address=self.address, network=0,
                               vendoridentifier=999, foreign=None, ttl=30, bbmd=None)
        app = SimApplication.from_args(args)
        app.requests = Counter()
        app.rpm = self.rpm
        dev = app.device_object
        assert dev is not None
        dev.maxApduLengthAccepted = self.max_apdu
        dev.segmentationSupported = Segmentation.segmentedBoth if self.segmentation else Segmentation.noSegmentation
        dev.modelName = "EA-SIM-AHU"
        dev.timeOfDeviceRestart = TimeStamp(dateTime=DateTime(date=Date.now(), time=Time.now()))
        dev.vendorName = "edge-agent simulator"
        if not self.segmentation:
            app.reply_limit = self.max_apdu
        degc = EngineeringUnits.degreesCelsius
        objs = [
            AnalogInputObject(objectIdentifier=("analog-input", 1), objectName="supply-air-temp",
                              presentValue=16.0, units=degc, covIncrement=0.1, description="Supply air temperature"),
            AnalogInputObject(objectIdentifier=("analog-input", 2), objectName="return-air-temp",
                              presentValue=22.0, units=degc, covIncrement=0.1, description="Return air temperature"),
            AnalogInputObject(objectIdentifier=("analog-input", 3), objectName="room-temp",
                              presentValue=21.0, units=degc, covIncrement=0.1, description="Room temperature"),
            AnalogInputObject(objectIdentifier=("analog-input", 4), objectName="outdoor-temp",
                              presentValue=8.0, units=degc, covIncrement=0.2,
                              description="Outdoor air temperature (température extérieure)"),
            AnalogInputObject(objectIdentifier=("analog-input", 5), objectName="room-humidity",
                              presentValue=45.0, units=EngineeringUnits.percentRelativeHumidity, covIncrement=1.0,
                              description="Room relative humidity"),
            AnalogValueObjectCmd(objectIdentifier=("analog-value", 1), objectName="room-setpoint",
                                 presentValue=21.0, relinquishDefault=21.0, units=degc, covIncrement=0.1,
                                 minPresValue=16.0, maxPresValue=26.0,
                                 description="Room temperature setpoint"),
            BinaryValueObjectCmd(objectIdentifier=("binary-value", 1), objectName="fan-command",
                                 presentValue="active", relinquishDefault="active",
                                 description="Supply fan start/stop command"),
            BinaryInputObject(objectIdentifier=("binary-input", 1), objectName="fan-status",
                              presentValue="active", description="Supply fan running (differential pressure)"),
            MultiStateValueObject(objectIdentifier=("multi-state-value", 1), objectName="mode",
                                  presentValue=4, numberOfStates=4, stateText=MODES,
                                  description="Operating mode: 1 off, 2 heat, 3 cool, 4 auto"),
        ]
        if self.kinds:
            objs += _kind_objects()
        for i in range(self.extra):
            objs.append(AnalogValueObject(objectIdentifier=("analog-value", 100 + i), objectName=f"extra-{i}",
                                          presentValue=float(i), units=EngineeringUnits.noUnits, covIncrement=1.0))
        for o in objs:
            app.add_object(o)
            self.objects[str(o.objectIdentifier)] = o
        self.app = app
        readies = [ll.server._local_transport_ready for ll in app.link_layers.values()]
        try:
            async with asyncio.timeout(ready_timeout):
                for ev in readies:
                    await ev.wait()
        except TimeoutError:
            app.close()
            raise RuntimeError(f"simulator could not bind {self.address}") from None
        if self.announce:
            app.i_am(None if self.announce == "broadcast" else Address(self.announce))
        if self.move:
            self._task = asyncio.create_task(self._run(), name=f"sim-{self.instance}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.app is not None:
            self.app.close()
            self.app = None

    def drop_subscriptions(self) -> int:
        """Forget every COV subscription, as a controller does when it restarts."""
        assert self.app is not None
        n = 0
        for det in list(self.app._cov_detections.values()):
            for cov in list(det.cov_subscriptions):
                self.app.cancel_subscription(cov)
                n += 1
        return n

    def step(self) -> None:
        """Move the values one tick: the room drifts towards the setpoint, the fan follows its command."""
        t = asyncio.get_running_loop().time()
        sp = float(self.obj("analog-value,1").presentValue)
        room = self.obj("analog-input,3")
        fan_on = str(self.obj("binary-value,1").presentValue) == "active"
        mode = int(self.obj("multi-state-value,1").presentValue)
        target = sp if fan_on and mode != 1 else 16.0
        # the room follows the target with a slow swing (people, sun), so COV has something to report
        aim = target + 0.8 * math.sin(t / 30.0)
        room.presentValue = round(float(room.presentValue) + 0.2 * (aim - float(room.presentValue))
                                  + self.rng.uniform(-0.05, 0.05), 2)
        self.obj("analog-input,1").presentValue = round((sp - 4.0 if fan_on else 20.0)
                                                        + self.rng.uniform(-0.2, 0.2), 2)
        self.obj("analog-input,2").presentValue = round(float(room.presentValue) + 0.8, 2)
        self.obj("analog-input,4").presentValue = round(8.0 + 4.0 * math.sin(t / 600.0), 2)
        self.obj("analog-input,5").presentValue = round(45.0 + 5.0 * math.sin(t / 300.0), 1)
        self.obj("binary-input,1").presentValue = "active" if fan_on else "inactive"

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            self.step()


def demo_devices(work: Any, start: Any, *, address: str = "127.0.0.2", instance: int = 1001) -> list[str]:
    """For ``examples/demo/run.py``: start the simulator as a process and return its site-file device entry.

    ``start(name, cmd, **popen_kw)`` is the demo's process starter. The agent's BACnet client uses
    127.0.0.3:47809 (not 47808: bacpypes3 would take a unicast to 127.*:47808 as addressed to itself).
    """
    import subprocess

    proc = start("bacnet-sim", [sys.executable, "-m", "drivers.bacnet.sim", "--address", f"{address}/8",
                                "--instance", str(instance), "--tick", "2"], stdout=subprocess.PIPE)
    line = proc.stdout.readline() if proc.stdout is not None else b""
    if not line.startswith(b"ready"):
        raise SystemExit("demo: BACnet simulator did not start; see .demo/bacnet-sim.log")
    return [
        "  - name: ahu-1\n"
        "    type: demo-bacnet-ahu\n"
        "    interval: 10s\n"
        f"    connection: {{device_instance: {instance}, address: '{address}', local_address: 127.0.0.3/8, "
        "local_port: 47809}"
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m drivers.bacnet.sim", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--address", default="127.0.0.2/8", help="IP/prefix[:port] to bind (default 127.0.0.2/8)")
    ap.add_argument("--port", type=int, default=47808)
    ap.add_argument("--instance", type=int, default=1001, help="device instance (default 1001)")
    ap.add_argument("--name", default="sim-ahu")
    ap.add_argument("--max-apdu", type=int, default=1024)
    ap.add_argument("--no-segmentation", action="store_true")
    ap.add_argument("--no-rpm", action="store_true", help="reject ReadPropertyMultiple")
    ap.add_argument("--extra", type=int, default=0, help="add N analog values (analog-value,100...)")
    ap.add_argument("--tick", type=float, default=1.0, help="seconds between value changes")
    ap.add_argument("--announce", metavar="ADDR",
                    help="send an I-Am to ADDR (IP:PORT, or 'broadcast') once bound, as a controller does at start")
    ap.add_argument("--hold", action="store_true",
                    help="print 'loaded', then bind only after a line on stdin (a restart in milliseconds)")
    args = ap.parse_args(argv)

    async def run() -> None:
        sim = SimController(args.address, args.instance, name=args.name, port=args.port, max_apdu=args.max_apdu,
                            segmentation=not args.no_segmentation, rpm=not args.no_rpm, extra=args.extra,
                            tick=args.tick, announce=args.announce)
        await sim.start()
        # SIGUSR1: print the confirmed requests served so far (bench/site_poll.py counts requests per cycle)
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGUSR1, lambda: print(f"requests {sum(sim.requests.values())}", flush=True))
        print(f"ready device {args.instance} at {sim.host}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await sim.stop()

    if args.hold:
        print("loaded", flush=True)
        sys.stdin.readline()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
