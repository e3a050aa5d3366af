"""OPC UA server for MES clients, per OPC 40100-1 Machine Vision (asyncua), behind the app's
`Deliverer`.

The shipped NodeSet (Opc.Ua.MachineVision.NodeSet2.xml, OPC Foundation MIT licence) is loaded;
each station is one VisionSystemType object under Objects (browse name `line_station`, display
name `line/station`, in our
namespace `urn:linesight:mes`) with the type's mandatory parts instantiated: VisionStateMachine
(shown Operational: the station inspects), ResultManagement with `Results/LastResult` (a
ResultType variable holding the last ResultDataType), and it emits a ResultReadyEventType event
per inspection carrying ResultId (`Id` = the idempotency key), PartId, CreationTime, ResultState
(1 = OK for pass, 2 = not OK for defect, 0 = not decided: review or error), ProcessingTimes
(capture -> decision) and ResultContent: KeyValuePairs verdict, class, severity, disposition,
confidence, model_version, taxonomy_version, frame_id, image_url.

Delivery is emitting the event; the same key again (a retry caused by another endpoint) is not
emitted twice.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Node, Server, ua
from asyncua.common.instantiate_util import instantiate

from linesight.mes.app.adapters import OpcUaEndpoint
from linesight.mes.app.dispatch import Attempt

log = logging.getLogger(__name__)

NODESET = Path(__file__).resolve().parent.parent / "Opc.Ua.MachineVision.NodeSet2.xml"
MACHINE_VISION_NS = "http://opcfoundation.org/UA/MachineVision"
LOCAL_NS = "urn:linesight:mes"
# Node ids in the Machine Vision namespace (Opc.Ua.MachineVision.NodeIds.csv).
VISION_SYSTEM_TYPE = 1003
RESULT_READY_EVENT_TYPE = 1024
RESULT_TYPE = 2002
RESULT_DATA_TYPE = 3006
RESULT_STATE = {"pass": 1, "defect": 2}  # anything else: 0, not decided


def _num(ns: int, i: int) -> ua.NodeId:
    return ua.NodeId(ua.Int32(i), ua.Int16(ns))


def _named(ns: int, name: str) -> ua.NodeId:
    return ua.NodeId(ua.String(name), ua.Int16(ns))


def browse_name(station: str) -> str:
    """`line/station` -> `line_station`: '/' separates the steps of a browse path."""
    return station.replace("/", "_")


def _ua(name: str) -> Any:
    """A structure class generated from the NodeSet's data type definitions at start."""
    return getattr(ua, name)


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


class VisionServer:
    """The OPC UA server; `start` loads the model (seconds), `deliver` publishes one result."""

    def __init__(self, endpoint: OpcUaEndpoint) -> None:
        self.endpoint = endpoint
        self.server = Server()
        self.mv = 0
        self.local = 0
        self._stations: dict[str, tuple[Node, Node]] = {}  # "line/station" -> (system, LastResult)
        self._last_key: dict[str, str] = {}

    async def start(self) -> None:
        e = self.endpoint
        await self.server.init()
        self.server.set_endpoint(f"{e.url}/")
        self.server.set_server_name("LineSight MES (OPC 40100-1 Machine Vision)")
        if e.security == "None":
            self.server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            await self.server.load_certificate(e.certificate)
            await self.server.load_private_key(e.private_key)
            self.server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        await self.server.import_xml(str(NODESET))
        self.mv = await self.server.get_namespace_index(MACHINE_VISION_NS)
        self.local = await self.server.register_namespace(LOCAL_NS)
        await self.server.load_data_type_definitions()
        for station in e.stations:
            await self._station(station)
        await self.server.start()
        log.info("OPC UA Machine Vision server at %s (security %s)", e.url, e.security)

    async def _station(self, name: str) -> tuple[Node, Node]:
        """The station's VisionSystem object, created on first use."""
        if name in self._stations:
            return self._stations[name]
        objects = self.server.nodes.objects
        system = await objects.add_object(
            _named(self.local, name),
            ua.QualifiedName(browse_name(name), self.local),
            objecttype=_num(self.mv, VISION_SYSTEM_TYPE),
        )
        await system.write_attribute(
            ua.AttributeIds.DisplayName, ua.DataValue(ua.Variant(ua.LocalizedText(name)))
        )
        await system.set_event_notifier([ua.EventNotifier.SubscribeToEvents])
        machine = await system.get_child(f"{self.mv}:VisionStateMachine")
        operational = await machine.get_child(f"{self.mv}:Operational")
        current = await machine.get_child("0:CurrentState")
        await current.write_value(ua.LocalizedText("Operational"))
        await (await current.get_child("0:Id")).write_value(operational.nodeid)
        results = await system.get_child([f"{self.mv}:ResultManagement", f"{self.mv}:Results"])
        (last, *_) = await instantiate(
            results,
            self.server.get_node(_num(self.mv, RESULT_TYPE)),
            nodeid=_named(self.local, f"{name}/LastResult"),
            bname=ua.QualifiedName("LastResult", self.local),
        )
        self._stations[name] = (system, last)
        return system, last

    def result_data(self, key: str, p: dict[str, Any]) -> Any:
        """ResultDataType of one disposition."""
        created = _time(p.get("decided_at")) or datetime.now(UTC)
        captured = _time(p.get("captured_at")) or created
        recipe = _ua("RecipeIdInternalDataType")(Id=str(p.get("model_version", "")))
        config = _ua("ConfigurationIdDataType")(Id=str(p.get("taxonomy_version", "")))
        return _ua("ResultDataType")(
            ResultId=_ua("ResultIdDataType")(Id=key),
            IsPartial=False,
            IsSimulated=False,
            ResultState=RESULT_STATE.get(str(p.get("verdict")), 0),
            MeasId=_ua("MeasIdDataType")(Id=str(p.get("frame_id", ""))),
            PartId=_ua("PartIdDataType")(Id=str(p.get("part_id", ""))),
            InternalRecipeId=recipe,
            InternalConfigurationId=config,
            JobId=_ua("JobIdDataType")(Id=str(p.get("frame_id", ""))),
            CreationTime=created,
            ProcessingTimes=_ua("ProcessingTimesDataType")(
                StartTime=captured,
                EndTime=created,
                AcquisitionDuration=0.0,
                ProcessingDuration=max(0.0, (created - captured).total_seconds() * 1000.0),
            ),
            ResultContent=[ua.Variant(kv, ua.VariantType.ExtensionObject) for kv in self.content(p)],
        )

    @staticmethod
    def content(p: dict[str, Any]) -> list[ua.KeyValuePair]:
        """What LineSight decided, as named values (the spec leaves ResultContent to the system)."""
        fields = (
            "verdict",
            "defect_class",
            "severity",
            "disposition",
            "confidence",
            "model_version",
            "taxonomy_version",
            "frame_id",
            "image_url",
        )
        return [
            ua.KeyValuePair(
                Key=ua.QualifiedName(f, 0), Value=ua.Variant(p.get(f) if p.get(f) is not None else "")
            )
            for f in fields
        ]

    async def deliver(self, key: str, payload: dict[str, Any]) -> Attempt:
        """Set the station's LastResult and emit ResultReady (once per key); never raises."""
        station = f"{payload.get('line', '')}/{payload.get('station', '')}"
        if self._last_key.get(station) == key:
            return Attempt(key, None, "", "delivered")
        try:
            system, last = await self._station(station)
            data = self.result_data(key, payload)
            await last.write_value(ua.Variant(data, ua.VariantType.ExtensionObject))
            gen = await self.server.get_event_generator(_num(self.mv, RESULT_READY_EVENT_TYPE), system.nodeid)
            ev: Any = gen.event
            # asyncua cannot derive a variant type for these model types; name them.
            ev.data_types.update(
                CreationTime=ua.VariantType.DateTime,
                ResultState=ua.VariantType.Int32,
                ResultContent=ua.VariantType.Variant,
            )
            ev.ResultId = data.ResultId
            ev.IsPartial = data.IsPartial
            ev.IsSimulated = data.IsSimulated
            ev.ResultState = data.ResultState
            ev.MeasId = data.MeasId
            ev.PartId = data.PartId
            ev.JobId = data.JobId
            ev.InternalRecipeId = data.InternalRecipeId
            ev.InternalConfigurationId = data.InternalConfigurationId
            ev.CreationTime = data.CreationTime
            ev.ProcessingTimes = data.ProcessingTimes
            ev.ResultContent = data.ResultContent
            p = payload
            await gen.trigger(message=f"{p.get('part_id')}: {p.get('verdict')} -> {p.get('disposition')}")
        except Exception as exc:  # an unexpected model error must not stop the other endpoints
            log.exception("OPC UA result for %s failed", key)
            return Attempt(key, None, f"opcua {type(exc).__name__}: {exc}"[:500], "retry")
        self._last_key[station] = key
        return Attempt(key, None, "", "delivered")

    async def close(self) -> None:
        await self.server.stop()
