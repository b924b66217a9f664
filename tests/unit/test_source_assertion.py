"""Index calls of a Source carry a VIHF assertion (mode INDIRECTE) for the report's author,
checked here with the verifier of the trust layer against the dev CA."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes

import httpx
from lxml import etree

from drimbox.adapters.trust import vihf
from drimbox.adapters.trust.pki import create_ca, issue
from drimbox.adapters.xds.client import XdsClient
from drimbox.adapters.xds.source_assertion import SourceAssertions, SourceIdentity
from drimbox.adapters.xds.source_gateway import XdsSourceGateway
from tests.unit.test_xds_client_builder import SOURCE, SynthExam, exam  # noqa: F401
from tests.unit.test_xds_client_transport import query_response


def _soap_part(request: httpx.Request) -> etree._Element:
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = message_from_bytes(head + request.content)
    first = message.get_payload()[0]  # type: ignore[index]
    return etree.fromstring(first.get_payload(decode=True))


def test_depublication_calls_carry_the_radiologists_assertion(exam: SynthExam) -> None:  # noqa: F811
    ca, _ = create_ca()
    signer = issue(ca, "CABINET DRIMBOX", kind="signing")
    identity = SourceIdentity("1.2.250.1.999.1.9", "DRIMBOX-DEV", "1499700367909",
                              "Cabinet", None)  # fmt: skip
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=query_response("Success"),
                              headers={"content-type": "application/soap+xml"})  # fmt: skip

    client = XdsClient("http://index", httpx.Client(transport=httpx.MockTransport(handler)),
                       source=SOURCE)  # fmt: skip
    gateway = XdsSourceGateway(client, SOURCE, None, SourceAssertions(identity, signer.key,
                                                                      signer.chain))  # fmt: skip
    patient = f"{exam.record.patient_ins}^^^&1.2.250.1.213.1.4.10&ISO^NH"
    gateway.depublish(patient, ["2.25.1"], exam.report)
    assert len(seen) == 1
    envelope = _soap_part(seen[0])
    header = envelope.find("{http://www.w3.org/2003/05/soap-envelope}Header")
    assert header is not None
    assertion = vihf.find_assertion(header)
    assert assertion is not None
    verified = vihf.verify_assertion(assertion, now=datetime.now(UTC), trust_anchors=[ca.root])
    claims = verified.claims
    assert claims.mode is vihf.AuthMode.INDIRECTE
    assert exam.report.radiologist is not None and exam.report.structure is not None
    assert claims.subject_id == exam.report.radiologist.national_id
    assert claims.structure_id == exam.report.structure.national_id
    assert claims.patient_id == patient

    # outside the gateway's call, the same client sends no assertion
    client.get_documents(["2.25.2"])
    assert vihf.find_assertion(_soap_part(seen[1])[0]) is None
