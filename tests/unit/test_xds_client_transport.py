"""How the XDS client classifies what comes back: retryable or permanent."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from drimbox.adapters.xds import soap
from drimbox.adapters.xds.client import RegistryBusy, RegistryRejected, XdsClient
from drimbox.domain.errors import PeerUnavailable

PATIENT = "185057212345678^^^&1.2.250.1.213.1.4.10&ISO^NH"
SOAP = "application/soap+xml; charset=UTF-8"


def envelope(body: str) -> bytes:
    return (
        f'<s:Envelope xmlns:s="{soap.SOAP_NS}"><s:Header/><s:Body>{body}</s:Body></s:Envelope>'
    ).encode()


def query_response(status: str, errors: str = "") -> bytes:
    return envelope(
        '<query:AdhocQueryResponse xmlns:query="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0" '
        'xmlns:rs="urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0" '
        f'status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:{status}">'
        f"<rs:RegistryErrorList>{errors}</rs:RegistryErrorList></query:AdhocQueryResponse>"
    )


def fault(code: str) -> bytes:
    return envelope(
        f"<s:Fault><s:Code><s:Value>s:{code}</s:Value></s:Code>"
        '<s:Reason><s:Text xml:lang="en">no</s:Text></s:Reason></s:Fault>'
    )


def error(code: str) -> str:
    return (
        f'<rs:RegistryError errorCode="{code}" codeContext="ctx" '
        'severity="urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"/>'
    )


def client_answering(
    status: int, body: bytes, seen: list[httpx.Request] | None = None
) -> XdsClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, content=body, headers={"content-type": SOAP})

    return XdsClient("http://index", httpx.Client(transport=httpx.MockTransport(handler)))


def test_request_headers_and_success() -> None:
    seen: list[httpx.Request] = []
    client = client_answering(200, query_response("Success"), seen)
    assert client.find_documents(PATIENT) == []
    request = seen[0]
    assert str(request.url) == "http://index/registry"
    assert request.headers["accept-encoding"] == "identity"
    assert request.headers["content-type"].startswith("multipart/related;")
    assert b"$XDSDocumentEntryPatientId" in request.content


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (503, b"down", PeerUnavailable),
        (500, fault("Receiver"), PeerUnavailable),
        (429, b"", PeerUnavailable),
        (200, b"<html>proxy</html>", PeerUnavailable),
        (200, query_response("Failure", error("XDSRegistryBusy")), RegistryBusy),
        (400, fault("Sender"), RegistryRejected),
        (404, b"not here", RegistryRejected),
        (200, query_response("Failure", error("XDSStoredQueryParamNumber")), RegistryRejected),
    ],
)
def test_classification(status: int, body: bytes, expected: type[Exception]) -> None:
    with pytest.raises(expected):
        client_answering(status, body).find_documents(PATIENT)


def test_rejection_keeps_the_errors() -> None:
    client = client_answering(200, query_response("Failure", error("XDSUnknownPatientId")))
    with pytest.raises(RegistryRejected) as caught:
        client.find_documents(PATIENT)
    assert caught.value.errors[0].error_code == "XDSUnknownPatientId"
    assert caught.value.errors[0].code_context == "ctx"
    assert not isinstance(caught.value, PeerUnavailable)


def test_timeout_is_peer_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    client = XdsClient("http://index", httpx.Client(transport=httpx.MockTransport(handler)))
    with pytest.raises(PeerUnavailable):
        client.find_documents(PATIENT)


def test_iti57_needs_a_source() -> None:
    make: Callable[[], XdsClient] = lambda: client_answering(200, b"")  # noqa: E731
    with pytest.raises(ValueError, match="source"):
        make().delete(PATIENT, "urn:uuid:1")
