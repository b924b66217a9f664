"""ITI-18 Registry Stored Query (ITI TF-2a 3.18): the queries the DMP consumers use.

Parameters arrive as ebRIM slots whose values are SQL-like literals: ``'text'``,
``('a','b')``, bare numbers for times (ITI TF-2a 3.18.4.1.2.3.5). Several slots with the
same name (event codes, confidentiality codes) are ANDed; values inside one slot are ORed.
"""

from __future__ import annotations

from collections.abc import Callable

from lxml import etree

from drimbox.adapters.xds import ebrim
from drimbox.adapters.xds.context import Call, Reply, XdsServices
from drimbox.adapters.xds.ebrim import NS, QUERY, RIM, q
from drimbox.adapters.xds.errors import registry_errors
from drimbox.domain import xds
from drimbox.domain.xds import Code, ErrorCode, XdsError
from drimbox.services.index.ports import FindDocumentsQuery, FindSubmissionSetsQuery
from drimbox.services.index.query import QueryResult

ACTION = "urn:ihe:iti:2007:RegistryStoredQuery"
RESPONSE_ACTION = "urn:ihe:iti:2007:RegistryStoredQueryResponse"
FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
FIND_DOCUMENTS_BY_REFERENCE_ID = "urn:uuid:12941a89-e02e-4be5-967c-ce4bfc8fe492"
FIND_SUBMISSION_SETS = "urn:uuid:f26abbcb-ac74-4422-8a30-edb644bbc1a9"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
GET_ASSOCIATIONS = "urn:uuid:a7ae438b-4bc2-4642-93e9-be891f7bb155"
GET_RELATED_DOCUMENTS = "urn:uuid:d90e5407-b356-4d91-a89f-873917b4b0e6"
_STATUS_SHORT = {"Approved": xds.APPROVED, "Deprecated": xds.DEPRECATED}

Params = dict[str, list[list[str]]]


def split_values(text: str) -> list[str]:
    """``('a','b')`` -> ['a', 'b']; ``'a'`` -> ['a']; ``20200101`` -> ['20200101']."""
    text = text.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    values, current, quoted, i = [], [], False, 0
    while i < len(text):
        ch = text[i]
        if ch == "'" and quoted and text[i + 1 : i + 2] == "'":
            current.append("'")  # '' is an escaped quote
            i += 1
        elif ch == "'":
            quoted = not quoted
        elif ch == "," and not quoted:
            values.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    values.append("".join(current).strip())
    return [v for v in values if v]


def read_params(adhoc: etree._Element) -> Params:
    params: Params = {}
    for s in adhoc.findall("rim:Slot", NS):
        values = [
            v
            for raw in s.findall("rim:ValueList/rim:Value", NS)
            for v in split_values(raw.text or "")
        ]
        params.setdefault(s.get("name", ""), []).append(values)
    return params


def _all(params: Params, name: str) -> list[str]:
    return [v for group in params.get(name, []) for v in group]


def _one(params: Params, name: str, required: bool = False) -> str:
    values = _all(params, name)
    if len(values) > 1 or (required and not values):
        raise XdsError(ErrorCode.QUERY_PARAM_NUMBER, f"{name} needs exactly one value")
    return values[0] if values else ""


def _codes(params: Params, name: str) -> list[Code]:
    return [Code.parse(v) for v in _all(params, name)]


def _statuses(params: Params, name: str) -> list[str]:
    statuses = [_STATUS_SHORT.get(s, s) for s in _all(params, name)]
    if not statuses:
        raise XdsError(ErrorCode.QUERY_PARAM_NUMBER, f"{name} is required")
    return statuses


def _patient(params: Params, name: str) -> str:
    return xds.normalize_patient_id(_one(params, name, required=True))


def find_documents_query(params: Params, by_reference: bool = False) -> FindDocumentsQuery:
    p = "$XDSDocumentEntry"
    query = FindDocumentsQuery(
        patient_id=_patient(params, f"{p}PatientId"),
        statuses=_statuses(params, f"{p}Status"),
        class_codes=_codes(params, f"{p}ClassCode"),
        type_codes=_codes(params, f"{p}TypeCode"),
        practice_setting_codes=_codes(params, f"{p}PracticeSettingCode"),
        hcft_codes=_codes(params, f"{p}HealthcareFacilityTypeCode"),
        format_codes=_codes(params, f"{p}FormatCode"),
        event_codes=[[Code.parse(v) for v in g] for g in params.get(f"{p}EventCodeList", [])],
        confidentiality_codes=[
            [Code.parse(v) for v in g] for g in params.get(f"{p}ConfidentialityCode", [])
        ],
        reference_ids=_all(params, f"{p}ReferenceIdList"),
    )
    for attr, name in (
        ("creation_from", "CreationTimeFrom"),
        ("creation_to", "CreationTimeTo"),
        ("service_start_from", "ServiceStartTimeFrom"),
        ("service_start_to", "ServiceStartTimeTo"),
        ("service_stop_from", "ServiceStopTimeFrom"),
        ("service_stop_to", "ServiceStopTimeTo"),
    ):
        value = _one(params, f"{p}{name}")
        setattr(query, attr, xds.dtm_bound(value) if value else "")
    if by_reference and not query.reference_ids:
        raise XdsError(ErrorCode.QUERY_PARAM_NUMBER, f"{p}ReferenceIdList is required")
    return query


def find_submission_sets_query(params: Params) -> FindSubmissionSetsQuery:
    p = "$XDSSubmissionSet"
    low, high = _one(params, f"{p}SubmissionTimeFrom"), _one(params, f"{p}SubmissionTimeTo")
    return FindSubmissionSetsQuery(
        patient_id=_patient(params, f"{p}PatientId"),
        statuses=_statuses(params, f"{p}Status"),
        source_ids=_all(params, f"{p}SourceId"),
        submission_from=xds.dtm_bound(low) if low else "",
        submission_to=xds.dtm_bound(high) if high else "",
        content_types=_codes(params, f"{p}ContentType"),
    )


def _entry_keys(params: Params) -> tuple[list[str], list[str]]:
    uuids = _all(params, "$XDSDocumentEntryEntryUUID")
    unique_ids = _all(params, "$XDSDocumentEntryUniqueId")
    if bool(uuids) == bool(unique_ids):
        raise XdsError(
            ErrorCode.QUERY_PARAM_NUMBER,
            "give $XDSDocumentEntryEntryUUID or $XDSDocumentEntryUniqueId",
        )
    return uuids, unique_ids


def _run(services: XdsServices, query_id: str, params: Params, call: Call) -> QueryResult:
    svc, caller = services.query, call.caller
    if query_id == FIND_DOCUMENTS:
        return QueryResult(entries=svc.find_documents(find_documents_query(params), caller))
    if query_id == FIND_DOCUMENTS_BY_REFERENCE_ID:
        query = find_documents_query(params, by_reference=True)
        return QueryResult(entries=svc.find_documents(query, caller))
    if query_id == FIND_SUBMISSION_SETS:
        query_ss = find_submission_sets_query(params)
        return QueryResult(submission_sets=svc.find_submission_sets(query_ss, caller))
    if query_id == GET_DOCUMENTS:
        return QueryResult(entries=svc.get_documents(*_entry_keys(params), caller))
    if query_id == GET_ASSOCIATIONS:
        uuids = _all(params, "$uuid")
        if not uuids:
            raise XdsError(ErrorCode.QUERY_PARAM_NUMBER, "$uuid is required")
        return QueryResult(associations=svc.get_associations(uuids, caller))
    if query_id == GET_RELATED_DOCUMENTS:
        types = _all(params, "$AssociationTypes")
        if not types:
            raise XdsError(ErrorCode.QUERY_PARAM_NUMBER, "$AssociationTypes is required")
        return svc.get_related_documents(*_entry_keys(params), types, caller)
    raise XdsError(ErrorCode.UNKNOWN_STORED_QUERY, f"stored query {query_id} is not supported")


def _leaf(result: QueryResult) -> list[etree._Element]:
    out = [ebrim.leaf_entry(e) for e in result.entries]
    out += [ebrim.leaf_status(s.ebrim, s.status) for s in result.submission_sets]
    out += [ebrim.leaf_status(a.ebrim, xds.APPROVED) for a in result.associations]
    return out


def _refs(result: QueryResult) -> list[etree._Element]:
    ids = [e.entry_uuid for e in result.entries] + [s.entry_uuid for s in result.submission_sets]
    ids += [a.entry_uuid for a in result.associations]
    return [ebrim.object_ref(i) for i in ids]


RENDER: dict[str, Callable[[QueryResult], list[etree._Element]]] = {
    "LeafClass": _leaf,
    "ObjectRef": _refs,
}


def response(objects: list[etree._Element], errors: list[XdsError]) -> etree._Element:
    resp = etree.Element(q(QUERY, "AdhocQueryResponse"), nsmap={"query": QUERY, "rim": RIM})
    resp.set("status", ebrim.FAILURE if errors else ebrim.SUCCESS)
    if errors:
        resp.append(ebrim.error_list(errors))
    rol = etree.SubElement(resp, q(RIM, "RegistryObjectList"))
    for obj in objects:
        rol.append(obj)
    return resp


def handle(services: XdsServices, call: Call) -> Reply:
    if call.body.tag != q(QUERY, "AdhocQueryRequest"):
        raise XdsError(ErrorCode.REGISTRY, f"unexpected body {etree.QName(call.body).localname}")
    option = call.body.find("query:ResponseOption", NS)
    adhoc = call.body.find("rim:AdhocQuery", NS)
    if adhoc is None:
        raise XdsError(ErrorCode.REGISTRY, "no AdhocQuery")
    return_type = option.get("returnType", "ObjectRef") if option is not None else "ObjectRef"
    if return_type not in RENDER:
        raise XdsError(ErrorCode.REGISTRY, f"returnType {return_type} is not supported")
    result = _run(services, adhoc.get("id", ""), read_params(adhoc), call)
    return Reply(response(RENDER[return_type](result), []))


def failure(exc: BaseException, call: Call) -> Reply:
    return Reply(response([], registry_errors(exc, ErrorCode.REGISTRY, call.message_id)))
