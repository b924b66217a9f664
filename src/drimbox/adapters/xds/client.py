"""XDS.b document source and consumer client of the index (the DMP): ITI-41, ITI-18,
ITI-43 and ITI-57 over SOAP 1.2 with WS-Addressing and MTOM (digest B.6).

Failures come in two kinds so that a retrying outbox can tell them apart:

- :class:`~drimbox.domain.errors.PeerUnavailable` (retry later): connection refused, timeout,
  HTTP 5xx/408/429, a response that is not a readable SOAP message, or a registry that says it
  is busy or out of resources (ITI TF-3 4.2.4);
- :class:`RegistryRejected` (permanent: resending the same request fails the same way): a
  ``Failure`` RegistryResponse or a SOAP Sender fault, with the registry's errors.

Responses are parsed with the hardened parser of the server side (no DTD, no entities, no
network). Requests ask for ``Accept-Encoding: identity``: documents are already compact and
compressing them costs the index more than it saves on a LAN (design.md section 7).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, overload
from urllib.parse import quote

import httpx
from lxml import etree

from drimbox.adapters.xds import ebrim, mtom, soap
from drimbox.adapters.xds import submission_builder as sb
from drimbox.adapters.xds.ebrim import NS, QUERY, RIM, RS, XDSB, q
from drimbox.domain import xds
from drimbox.domain.errors import DrimboxError, PeerUnavailable
from drimbox.domain.xds import Code

ITI18_ACTION = "urn:ihe:iti:2007:RegistryStoredQuery"
ITI43_ACTION = "urn:ihe:iti:2007:RetrieveDocumentSet"
FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
FIND_DOCUMENTS_BY_REFERENCE_ID = "urn:uuid:12941a89-e02e-4be5-967c-ce4bfc8fe492"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
_BUSY = frozenset(
    {
        "XDSRegistryBusy",
        "XDSRepositoryBusy",
        "XDSRegistryOutOfResources",
        "XDSRepositoryOutOfResources",
    }
)
_RETRYABLE_HTTP = frozenset({408, 429})
_SHORT_STATUS = {
    ebrim.SUCCESS: "Success",
    ebrim.FAILURE: "Failure",
    ebrim.PARTIAL: "PartialSuccess",
}


@dataclass(frozen=True, slots=True)
class RegistryError:
    error_code: str
    code_context: str
    severity: str = ebrim.SEVERITY_ERROR
    location: str = ""

    def __str__(self) -> str:
        return f"{self.error_code}: {self.code_context}"


@dataclass(frozen=True, slots=True)
class RegistryResponse:
    status: str
    """The full ebRS status URN (``...:ResponseStatusType:Success`` and so on)."""
    errors: tuple[RegistryError, ...] = ()

    @property
    def short_status(self) -> str:
        return _SHORT_STATUS.get(self.status, self.status)

    @property
    def ok(self) -> bool:
        return self.status == ebrim.SUCCESS


class RegistryRejected(DrimboxError):
    """The index refused the request; sending it again as is will not help."""

    def __init__(self, errors: Sequence[RegistryError]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(str(e) for e in self.errors) or "the index refused the request")

    @property
    def codes(self) -> list[str]:
        return [e.error_code for e in self.errors]


class RegistryBusy(PeerUnavailable):
    """The registry answered but asked to come back later (XDS*Busy, *OutOfResources)."""

    def __init__(self, errors: Sequence[RegistryError]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


@dataclass(frozen=True, slots=True)
class DocumentSummary:
    """A DocumentEntry as a LeafClass query returns it."""

    entry_uuid: str
    unique_id: str
    status: str
    patient_id: str = ""
    class_code: Code | None = None
    type_code: Code | None = None
    format_code: Code | None = None
    event_codes: tuple[Code, ...] = ()
    repository_unique_id: str = ""
    reference_ids: tuple[str, ...] = ()
    creation_time: str = ""
    mime_type: str = ""
    title: str = ""
    hash: str = ""
    size: int | None = None

    def reference(self, kind: str) -> str | None:
        """CX.1 of the first reference id of ``kind`` (``xds.ACCESSION_REF``...)."""
        for ref in self.reference_ids:
            if ref.endswith("^" + kind):
                return ref.split("^", 1)[0]
        return None


# --- response reading -----------------------------------------------------------------------


def _errors(parent: etree._Element) -> tuple[RegistryError, ...]:
    return tuple(
        RegistryError(
            e.get("errorCode", ""),
            e.get("codeContext", ""),
            e.get("severity", ebrim.SEVERITY_ERROR),
            e.get("location", ""),
        )
        for e in parent.findall("rs:RegistryErrorList/rs:RegistryError", NS)
    )


def registry_response(el: etree._Element) -> RegistryResponse:
    """Status and errors of any element shaped like ``rs:RegistryResponse``."""
    return RegistryResponse(el.get("status", ""), _errors(el))


def raise_for_failure(resp: RegistryResponse) -> None:
    """Raise unless Success or PartialSuccess (the caller inspects a partial result)."""
    if resp.status in (ebrim.SUCCESS, ebrim.PARTIAL):
        return
    if resp.status != ebrim.FAILURE:
        raise PeerUnavailable(f"registry response with unknown status {resp.status[:100]!r}")
    errors = [e for e in resp.errors if e.severity == ebrim.SEVERITY_ERROR] or list(resp.errors)
    if any(e.error_code in _BUSY for e in errors):
        raise RegistryBusy(errors)
    raise RegistryRejected(errors)


def _first(values: list[str]) -> str:
    return values[0].strip() if values else ""


def _codes(el: etree._Element, scheme: str) -> tuple[Code, ...]:
    out = []
    for c in el.findall("rim:Classification", NS):
        if c.get("classificationScheme") == scheme:
            name = c.find("rim:Name/rim:LocalizedString", NS)
            display = name.get("value", "") if name is not None else ""
            out.append(Code(c.get("nodeRepresentation", ""), _first(ebrim.slot(c, "codingScheme")),
                            display))  # fmt: skip
    return tuple(out)


def _code(el: etree._Element, scheme: str) -> Code | None:
    codes = _codes(el, scheme)
    return codes[0] if codes else None


def _external(el: etree._Element, scheme: str) -> str:
    for e in el.findall("rim:ExternalIdentifier", NS):
        if e.get("identificationScheme") == scheme:
            return e.get("value", "").strip()
    return ""


def document_summary(eo: etree._Element) -> DocumentSummary:
    """Read one LeafClass ExtrinsicObject, tolerating what a foreign registry omits."""
    size = _first(ebrim.slot(eo, "size"))
    name = eo.find("rim:Name/rim:LocalizedString", NS)
    return DocumentSummary(
        entry_uuid=eo.get("id", ""),
        unique_id=_external(eo, ebrim.DE_UNIQUE_ID),
        status=eo.get("status", ""),
        patient_id=_external(eo, ebrim.DE_PATIENT_ID),
        class_code=_code(eo, ebrim.DE_CLASS),
        type_code=_code(eo, ebrim.DE_TYPE),
        format_code=_code(eo, ebrim.DE_FORMAT),
        event_codes=_codes(eo, ebrim.DE_EVENT),
        repository_unique_id=_first(ebrim.slot(eo, "repositoryUniqueId")),
        reference_ids=tuple(v.strip() for v in ebrim.slot(eo, ebrim.REFERENCE_ID_LIST)),
        creation_time=_first(ebrim.slot(eo, "creationTime")),
        mime_type=eo.get("mimeType", ""),
        title=name.get("value", "") if name is not None else "",
        hash=_first(ebrim.slot(eo, "hash")),
        size=int(size) if size.isdigit() else None,
    )


# --- ITI-18 parameters ----------------------------------------------------------------------


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def query_list(values: Sequence[str]) -> str:
    """ITI TF-2a 3.18.4.1.2.3.5 multi-valued parameter: ``('a','b')``, quotes doubled."""
    return "(" + ",".join(_literal(v) for v in values) + ")"


def _adhoc_query(query_id: str, params: dict[str, str], return_type: str) -> etree._Element:
    req = etree.Element(q(QUERY, "AdhocQueryRequest"), nsmap={"query": QUERY, "rim": RIM})
    etree.SubElement(req, q(QUERY, "ResponseOption"), returnType=return_type,
                     returnComposedObjects="true")  # fmt: skip
    adhoc = etree.SubElement(req, q(RIM, "AdhocQuery"), id=query_id)
    for name, value in params.items():
        slot = etree.SubElement(adhoc, q(RIM, "Slot"), name=name)
        etree.SubElement(etree.SubElement(slot, q(RIM, "ValueList")), q(RIM, "Value")).text = value
    return req


def _find_params(
    patient_id: str,
    statuses: Sequence[str],
    class_codes: Sequence[Code],
    event_codes: Sequence[Code],
    reference_ids: Sequence[str],
) -> dict[str, str]:
    p = "$XDSDocumentEntry"
    params = {f"{p}PatientId": _literal(patient_id), f"{p}Status": query_list(statuses)}
    if class_codes:
        params[f"{p}ClassCode"] = query_list([str(c) for c in class_codes])
    if event_codes:
        params[f"{p}EventCodeList"] = query_list([str(c) for c in event_codes])
    if reference_ids:
        params[f"{p}ReferenceIdList"] = query_list(reference_ids)
    return params


def _retrieve_request(repository_unique_id: str, unique_ids: Sequence[str]) -> etree._Element:
    req = etree.Element(q(XDSB, "RetrieveDocumentSetRequest"), nsmap={"xdsb": XDSB})
    for uid in unique_ids:
        item = etree.SubElement(req, q(XDSB, "DocumentRequest"))
        etree.SubElement(item, q(XDSB, "RepositoryUniqueId")).text = repository_unique_id
        etree.SubElement(item, q(XDSB, "DocumentUniqueId")).text = uid
    return req


# --- the client -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reply:
    body: etree._Element
    attachments: dict[str, bytes]


class XdsClient:
    """The index's SOAP endpoints at ``base_url`` (``/registry`` and ``/repository``).

    ``source`` describes this box in the submission sets of ITI-57 updates; it is needed
    only by :meth:`deprecate` and :meth:`delete`.
    """

    def __init__(
        self,
        base_url: str,
        client: httpx.Client | None = None,
        timeout: float = 30.0,
        *,
        source: sb.SubmissionSource | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._own = client is None
        self._http = client or httpx.Client(timeout=timeout)
        self.timeout = timeout
        self.source = source
        self._caller = threading.local()

    @contextmanager
    def acting_as(self, security: Callable[[], etree._Element]) -> Iterator[None]:
        """Calls made in this block (by this thread) carry ``security()``: a fresh
        ``wsse:Security`` header with the caller's VIHF assertion, one per request."""
        previous = getattr(self._caller, "security", None)
        self._caller.security = security
        try:
            yield
        finally:
            self._caller.security = previous

    @contextmanager
    def on_behalf_of(self, access_token: str, emergency_reason: str = "") -> Iterator[None]:
        """Calls made in this block (by this thread) carry the user's OAuth bearer token
        (IHE IUA style): the index decides with the user's own identity; with
        ``emergency_reason``, as a declared emergency ("bris de glace")."""
        previous = getattr(self._caller, "bearer", None), getattr(self._caller, "btg", "")
        self._caller.bearer, self._caller.btg = access_token, emergency_reason
        try:
            yield
        finally:
            self._caller.bearer, self._caller.btg = previous

    def close(self) -> None:
        if self._own:
            self._http.close()

    def __enter__(self) -> XdsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport

    def _post(
        self,
        service: str,
        action: str,
        payload: etree._Element,
        attachments: Sequence[sb.Attachment] = (),
    ) -> _Reply:
        to = f"{self.base_url}/{service}"
        security = getattr(self._caller, "security", None)
        header = security() if security is not None else None
        _, content_type, body = sb.mtom_request(action, to, payload, attachments, header)
        headers = {"content-type": content_type, "accept-encoding": "identity",
                   "accept": f"{mtom.XOP_MEDIA}, multipart/related, {soap.SOAP_MEDIA}"}  # fmt: skip
        bearer = getattr(self._caller, "bearer", None)
        if bearer:
            headers["authorization"] = f"Bearer {bearer}"
            reason = getattr(self._caller, "btg", "")
            if reason:
                headers["x-purpose-of-use"] = "BTG"
                headers["x-emergency-reason"] = quote(reason)
        try:
            resp = self._http.post(to, content=body, headers=headers, timeout=self.timeout)
        except httpx.TransportError as exc:  # refused, reset, timeout, DNS...
            raise PeerUnavailable(f"index at {to} unreachable: {exc!r}") from exc
        return _read_reply(to, resp)

    # -- ITI-41

    def provide_and_register(
        self, request: sb.ProvideAndRegisterRequest | sb.ExamSubmission
    ) -> RegistryResponse:
        """Publish documents (ITI-41); raises on Failure, returns the Success response."""
        if isinstance(request, sb.ExamSubmission):
            if self.source is None:
                raise ValueError("building a submission needs the client's source")
            request = sb.build_provide_and_register(request, self.source)
        reply = self._post("repository", sb.ITI41_ACTION, request.body, request.attachments)
        result = registry_response(_expect(reply.body, q(RS, "RegistryResponse")))
        raise_for_failure(result)
        return result

    # -- ITI-18

    def _query(self, query_id: str, params: dict[str, str], return_type: str) -> etree._Element:
        reply = self._post("registry", ITI18_ACTION, _adhoc_query(query_id, params, return_type))
        body = _expect(reply.body, q(QUERY, "AdhocQueryResponse"))
        raise_for_failure(registry_response(body))
        rol = body.find("rim:RegistryObjectList", NS)
        return rol if rol is not None else etree.Element(q(RIM, "RegistryObjectList"))

    def find_documents(
        self,
        patient_id: str,
        status: Sequence[str] = (xds.APPROVED,),
        class_codes: Sequence[Code] = (),
        event_codes: Sequence[Code] = (),
        reference_ids: Sequence[str] = (),
    ) -> list[DocumentSummary]:
        """FindDocuments, or FindDocumentsByReferenceId when ``reference_ids`` are given.

        Values of one parameter are ORed (one event code of the list suffices).
        """
        params = _find_params(patient_id, status, class_codes, event_codes, reference_ids)
        query_id = FIND_DOCUMENTS_BY_REFERENCE_ID if reference_ids else FIND_DOCUMENTS
        rol = self._query(query_id, params, "LeafClass")
        return [document_summary(eo) for eo in rol.findall("rim:ExtrinsicObject", NS)]

    @overload
    def get_documents(
        self, unique_ids: Sequence[str], object_ref: Literal[True] = ...
    ) -> list[str]: ...

    @overload
    def get_documents(
        self, unique_ids: Sequence[str], object_ref: Literal[False]
    ) -> list[DocumentSummary]: ...

    def get_documents(
        self, unique_ids: Sequence[str], object_ref: bool = True
    ) -> list[str] | list[DocumentSummary]:
        """GetDocuments by uniqueId: entryUUIDs (ObjectRef) or full entries (LeafClass)."""
        params = {"$XDSDocumentEntryUniqueId": query_list(unique_ids)}
        if object_ref:
            rol = self._query(GET_DOCUMENTS, params, "ObjectRef")
            return [r.get("id", "") for r in rol.findall("rim:ObjectRef", NS)]
        rol = self._query(GET_DOCUMENTS, params, "LeafClass")
        return [document_summary(eo) for eo in rol.findall("rim:ExtrinsicObject", NS)]

    # -- ITI-43

    def retrieve(self, repository_unique_id: str, unique_ids: Sequence[str]) -> dict[str, bytes]:
        """Documents by uniqueId (ITI-43). On PartialSuccess the missing ones are absent."""
        reply = self._post(
            "repository", ITI43_ACTION, _retrieve_request(repository_unique_id, unique_ids)
        )
        body = _expect(reply.body, q(XDSB, "RetrieveDocumentSetResponse"))
        status = body.find("rs:RegistryResponse", NS)
        if status is None:
            raise PeerUnavailable("ITI-43 response without RegistryResponse")
        raise_for_failure(registry_response(status))
        return dict(_documents(body, reply.attachments))

    # -- ITI-57

    def deprecate(
        self, patient_id: str, entry_uuid: str, original_status: str = xds.APPROVED
    ) -> RegistryResponse:
        return self._update_status(patient_id, entry_uuid, original_status, xds.DEPRECATED)

    def delete(
        self, patient_id: str, entry_uuid: str, original_status: str = xds.APPROVED
    ) -> RegistryResponse:
        """Depublish (DMP status ``urn:asip:ci-sis:2010:StatusType:Deleted``; final)."""
        return self._update_status(patient_id, entry_uuid, original_status, xds.DELETED)

    def _update_status(
        self, patient_id: str, entry_uuid: str, original: str, new: str
    ) -> RegistryResponse:
        if self.source is None:
            raise ValueError("ITI-57 needs the client's source (sourceId, content type)")
        payload = sb.build_status_update(self.source, patient_id, entry_uuid, original, new)
        reply = self._post("registry", sb.ITI57_ACTION, payload)
        result = registry_response(_expect(reply.body, q(RS, "RegistryResponse")))
        raise_for_failure(result)
        return result


def _documents(body: etree._Element, parts: dict[str, bytes]) -> Iterator[tuple[str, bytes]]:
    for item in body.findall("xdsb:DocumentResponse", NS):
        uid = (item.findtext("xdsb:DocumentUniqueId", "", NS) or "").strip()
        doc = item.find("xdsb:Document", NS)
        if doc is None:
            raise PeerUnavailable(f"ITI-43 response: no Document for {uid}")
        try:
            yield uid, mtom.document_bytes(doc, parts)
        except (KeyError, soap.SoapFault) as exc:
            raise PeerUnavailable(f"ITI-43 response: content of {uid} unreadable") from exc


def _expect(body: etree._Element, tag: str) -> etree._Element:
    if body.tag != tag:
        raise PeerUnavailable(f"unexpected response {etree.QName(body).localname}")
    return body


def _raise_fault(body: etree._Element) -> None:
    code = body.findtext("s:Code/s:Value", "", soap.NS) or ""
    subcode = body.findtext("s:Code/s:Subcode/s:Value", "", soap.NS) or ""
    reason = body.findtext("s:Reason/s:Text", "", soap.NS) or ""
    # SOAP 1.2 part 1, 5.4.6: Receiver faults may succeed later, Sender faults never will
    if not code.endswith("Sender"):
        raise PeerUnavailable(f"index fault {code}: {reason}")
    raise RegistryRejected([RegistryError(subcode or code, reason)])


def _read_reply(to: str, resp: httpx.Response) -> _Reply:
    """The response's SOAP body, or the exception that answers its status."""
    if resp.status_code >= 500 or resp.status_code in _RETRYABLE_HTTP:
        raise PeerUnavailable(f"index at {to} answered HTTP {resp.status_code}")
    try:
        package = mtom.unpack(resp.headers.get("content-type", ""), resp.content)
        envelope = soap.read_envelope(soap.parse_xml(package.root), "response")
    except soap.SoapFault as exc:
        if resp.is_success:
            # the request may have been processed: retrying is the outbox's safe default,
            # ITI-41 rejects a duplicate uniqueId if it was
            raise PeerUnavailable(f"unreadable response from {to}: {exc.reason}") from exc
        raise RegistryRejected([RegistryError(f"HTTP {resp.status_code}", exc.reason)]) from exc
    if envelope.body.tag == q(soap.SOAP_NS, "Fault"):
        _raise_fault(envelope.body)
    if not resp.is_success:
        raise RegistryRejected([RegistryError(f"HTTP {resp.status_code}", "no SOAP fault")])
    return _Reply(envelope.body, package.attachments)
