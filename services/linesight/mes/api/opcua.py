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

Delivery is emitting the event; the same key again (a retry after a lost answer) is not emitted
twice.

ResultManagement's methods answer from the last `retain` results per station kept in memory
(the outbox in PostgreSQL is the durable record; a restarted server starts with an empty list):
GetResultById(ResultId, Timeout) -> (ResultHandle, Result, Error) and GetResultListFiltered(
ResultState, MeasId, PartId, ExternalRecipeId, InternalRecipeId, ExternalConfigurationId,
InternalConfigurationId, ProductId, JobId, MaxResults, StartIndex, Timeout) -> (IsComplete,
ResultCount, ResultHandle, ResultList, Error); an empty Id or ResultState 0 does not filter,
MaxResults 0 means up to 100. Results are plain values, so a handle holds nothing and
ReleaseResultHandle (where the model has it) always succeeds. Error 0 is OK; -1: no such result.

The VisionStateMachine starts Operational; Halt(Cause, CauseDescription) moves it to Halted and
Reset(...) from Halted or Error through Preoperational back to Operational (a call in another
state answers BadInvalidState). The state is what clients are shown: LineSight keeps reporting
results while Halted (inspection itself is not controlled over OPC UA).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
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
DEFAULT_MAX_RESULTS = 100
NO_SUCH_RESULT = -1


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

    def __init__(self, endpoint: OpcUaEndpoint, *, retain: int = 1000) -> None:
        self.endpoint = endpoint
        self.server = Server()
        self.mv = 0
        self.local = 0
        self.retain = retain
        self._stations: dict[str, tuple[Node, Node]] = {}  # "line/station" -> (system, LastResult)
        self._last_key: dict[str, str] = {}
        self._results: dict[str, OrderedDict[str, Any]] = {}  # station -> result id -> ResultDataType
        self._states: dict[str, str] = {}  # station -> current state's browse name
        self._machines: dict[str, Node] = {}
        self._handles = 0

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
        await self._publish_inherited_definitions()
        for station in e.stations:
            await self._station(station)
        await self.server.start()
        log.info("OPC UA Machine Vision server at %s (security %s)", e.url, e.security)

    async def _publish_inherited_definitions(self) -> None:
        """The NodeSet gives the id subtypes (RecipeIdExternalDataType, ...) an empty Definition:
        they add no field to BinaryIdBaseDataType. Their DataTypeDefinition attribute then reads
        empty, and a client that builds its types from the server (asyncua's
        load_data_type_definitions, other SDKs' dynamic decoders) cannot decode ResultDataType at
        all. OPC UA 1.04 lists a subtype's inherited fields in its definition: publish them."""
        base = ua.NodeId(ua.Int32(ua.ObjectIds.Structure))
        pending = [self.server.get_node(base)]
        while pending:
            node = pending.pop()
            children = await node.get_children(
                refs=ua.ObjectIds.HasSubtype, nodeclassmask=ua.NodeClass.DataType
            )
            pending += children
            if node.nodeid.NamespaceIndex != self.mv or node.nodeid == base:
                continue
            own = await _definition(node)
            if own is not None and own.Fields:
                continue
            parent = (await node.get_referenced_nodes(ua.ObjectIds.HasSubtype, ua.BrowseDirection.Inverse))[0]
            inherited = await _definition(parent)
            if inherited is None or not inherited.Fields:
                continue
            encodings = await node.get_referenced_nodes(ua.ObjectIds.HasEncoding, ua.BrowseDirection.Forward)
            binary = [enc for enc in encodings if (await enc.read_browse_name()).Name == "Default Binary"]
            sdef = ua.StructureDefinition(
                DefaultEncodingId=binary[0].nodeid if binary else ua.NodeId(),
                BaseDataType=parent.nodeid,
                StructureType=inherited.StructureType,
                Fields=list(inherited.Fields),
            )
            await node.write_attribute(ua.AttributeIds.DataTypeDefinition, ua.DataValue(ua.Variant(sdef)))

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
        self._machines[name] = machine
        await self._enter(name, "Operational")
        await self._link(machine, "Halt", self._halt, name)
        await self._link(machine, "Reset", self._reset, name)
        management = await system.get_child(f"{self.mv}:ResultManagement")
        self._results[name] = OrderedDict()
        await self._link(management, "GetResultById", self._get_result_by_id, name)
        await self._link(management, "GetResultListFiltered", self._get_result_list_filtered, name)
        await self._link(management, "ReleaseResultHandle", self._release_result_handle, name)
        results = await system.get_child([f"{self.mv}:ResultManagement", f"{self.mv}:Results"])
        (last, *_) = await instantiate(
            results,
            self.server.get_node(_num(self.mv, RESULT_TYPE)),
            nodeid=_named(self.local, f"{name}/LastResult"),
            bname=ua.QualifiedName("LastResult", self.local),
        )
        self._stations[name] = (system, last)
        return system, last

    async def _link(self, parent: Node, method: str, handler: Any, station: str) -> None:
        """Bind `handler(station, *input values)` to the instance's method node (when the model
        instantiated it: optional methods may be absent)."""

        async def call(_parent: ua.NodeId, *args: ua.Variant) -> Any:
            return await handler(station, *(a.Value if isinstance(a, ua.Variant) else a for a in args))

        try:
            node = await parent.get_child(f"{self.mv}:{method}")
        except ua.UaStatusCodeError:
            return
        self.server.link_method(node, call)

    async def _enter(self, station: str, state: str) -> None:
        """Show `state` (a state object of the VisionStateMachine) as the current state."""
        machine = self._machines[station]
        target = await machine.get_child(f"{self.mv}:{state}")
        current = await machine.get_child("0:CurrentState")
        await current.write_value(ua.LocalizedText(state))
        await (await current.get_child("0:Id")).write_value(target.nodeid)
        self._states[station] = state
        log.info("OPC UA VisionSystem %s: %s", station, state)

    async def _halt(self, station: str, *_cause: Any) -> Any:
        await self._enter(station, "Halted")
        return [ua.Variant(0, ua.VariantType.Int32)]

    async def _reset(self, station: str, *_cause: Any) -> Any:
        if self._states.get(station) not in ("Halted", "Error"):
            return ua.StatusCode(ua.UInt32(ua.StatusCodes.BadInvalidState))
        await self._enter(station, "Preoperational")
        await self._enter(station, "Operational")  # nothing to prepare: on to Operational at once
        return [ua.Variant(0, ua.VariantType.Int32)]

    def _handle(self) -> ua.Variant:
        self._handles = (self._handles + 1) % 2**32 or 1
        return ua.Variant(self._handles, ua.VariantType.UInt32)

    async def _get_result_by_id(self, station: str, result_id: Any = None, _timeout: Any = None) -> Any:
        wanted = str(getattr(result_id, "Id", ""))
        found = self._results[station].get(wanted) if station in self._results else None
        if found is None:
            return [
                ua.Variant(0, ua.VariantType.UInt32),
                ua.Variant(_ua("ResultDataType")(), ua.VariantType.ExtensionObject),
                ua.Variant(NO_SUCH_RESULT, ua.VariantType.Int32),
            ]
        return [
            self._handle(),
            ua.Variant(found, ua.VariantType.ExtensionObject),
            ua.Variant(0, ua.VariantType.Int32),
        ]

    async def _get_result_list_filtered(self, station: str, *args: Any) -> Any:
        padded = [*args, *([None] * (12 - len(args)))]
        state, meas, part, _ext_recipe, recipe, _ext_config, config, _product, job, most, start = padded[:11]

        def same(value: Any, actual: Any) -> bool:
            wanted = getattr(value, "Id", "") if value is not None else ""
            return not wanted or wanted == getattr(actual, "Id", None)

        matching = [
            r
            for r in self._results.get(station, {}).values()
            if (not state or r.ResultState == state)
            and same(meas, r.MeasId)
            and same(part, r.PartId)
            and same(recipe, r.InternalRecipeId)
            and same(config, r.InternalConfigurationId)
            and same(job, r.JobId)
        ]
        first = int(start or 0)
        page = matching[first : first + int(most or DEFAULT_MAX_RESULTS)]
        return [
            ua.Variant(first + len(page) >= len(matching), ua.VariantType.Boolean),
            ua.Variant(len(page), ua.VariantType.UInt32),
            self._handle(),
            ua.Variant(page, ua.VariantType.ExtensionObject),
            ua.Variant(0, ua.VariantType.Int32),
        ]

    async def _release_result_handle(self, _station: str, *_handle: Any) -> Any:
        return [ua.Variant(0, ua.VariantType.Int32)]

    def _keep(self, station: str, key: str, data: Any) -> None:
        kept = self._results.setdefault(station, OrderedDict())
        kept[key] = data
        kept.move_to_end(key)
        while len(kept) > self.retain:
            kept.popitem(last=False)

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

    async def restore(self, delivered: Sequence[tuple[str, dict[str, Any]]]) -> int:
        """Serve results delivered before a restart again (GetResultById, GetResultListFiltered,
        each station's LastResult), oldest first; no ResultReady events (clients had them).
        Returns the results restored."""
        last: dict[str, Any] = {}
        for key, payload in delivered:
            station = f"{payload.get('line', '')}/{payload.get('station', '')}"
            await self._station(station)
            data = self.result_data(key, payload)
            self._keep(station, key, data)
            self._last_key[station] = key
            last[station] = data
        for station, data in last.items():
            _, node = self._stations[station]
            await node.write_value(ua.Variant(data, ua.VariantType.ExtensionObject))
        return len(delivered)

    async def deliver(self, key: str, payload: dict[str, Any]) -> Attempt:
        """Set the station's LastResult and emit ResultReady (once per key); never raises."""
        station = f"{payload.get('line', '')}/{payload.get('station', '')}"
        if self._last_key.get(station) == key:
            return Attempt(key, None, "", "delivered")
        try:
            system, last = await self._station(station)
            data = self.result_data(key, payload)
            await last.write_value(ua.Variant(data, ua.VariantType.ExtensionObject))
            self._keep(station, key, data)
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


async def _definition(node: Node) -> Any:
    """A data type's StructureDefinition, or None where it has none (abstract, enumeration)."""
    try:
        value = (await node.read_attribute(ua.AttributeIds.DataTypeDefinition)).Value
    except ua.UaStatusCodeError:
        return None
    sdef = value.Value if value is not None else None
    return sdef if isinstance(sdef, ua.StructureDefinition) else None
