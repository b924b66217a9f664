"""The imaging report (CDA) shown as a safe French HTML fragment."""

from __future__ import annotations

import base64
import random
import re
import zlib
from datetime import datetime
from html import escape
from html.parser import HTMLParser

import pytest
from lxml import etree

from drimbox.adapters.documents.report_html import (
    MAX_TEXT,
    french_date,
    report_html,
    report_pdf,
    safe_href,
)
from drimbox.domain.errors import InvalidInput
from drimbox.synth.cda import ReportDocument, make_report
from drimbox.synth.patients import make_patients
from drimbox.synth.sites import make_physician, make_sites
from drimbox.synth.studies import EXAM_TYPES, Exam, plan_exam

H = "urn:hl7-org:v3"
NS = {"h": H}

ALLOWED = {
    "article": {"class", "lang"}, "header": {"class"}, "section": {"class"}, "div": {"class"},
    "h2": {"class"}, "h3": set(), "h4": set(), "h5": set(), "h6": set(), "dl": set(),
    "dt": set(), "dd": set(), "p": {"class"}, "small": {"class"}, "br": set(), "span": set(),
    "strong": {"class"}, "em": {"class"}, "u": set(), "sub": set(), "sup": set(), "ul": set(),
    "ol": set(), "li": set(), "table": {"class"}, "caption": set(), "thead": set(),
    "tbody": set(), "tfoot": set(), "tr": set(), "th": {"colspan", "rowspan"},
    "td": {"colspan", "rowspan"}, "col": {"span"}, "colgroup": {"span"}, "pre": {"class"},
    "a": {"href", "rel", "target"},
}  # fmt: skip


class _Checker(HTMLParser):
    """Every tag and attribute of the output must be in :data:`ALLOWED`; links are http(s)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED:
            self.problems.append(f"tag {tag}")
            return
        for name, value in attrs:
            if name not in ALLOWED[tag]:
                self.problems.append(f"{tag}@{name}")
            if name == "href" and not re.match(r"(https?://|/)", value or ""):
                self.problems.append(f"href {value}")
        if tag == "a" and ("rel", "noopener noreferrer") not in attrs:
            self.problems.append("a without rel")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _check(html: str) -> str:
    """Assert ``html`` is a safe fragment; return its text content."""
    assert not re.search(r"<(html|body|head)\b", html)
    checker = _Checker()
    checker.feed(html)
    checker.close()
    assert checker.problems == []
    return "".join(checker.text)


def _exam(key: str) -> Exam:
    sites = make_sites(1, 3)
    patient = make_patients(1, sites, 3)[0]
    rng = random.Random(3)
    return plan_exam(rng, EXAM_TYPES[key], patient, sites[0], datetime(2024, 1, 15, 9, 5),
                     "small", accession="0124000007", order_number="DEM240000007",
                     visit_number="0100000007", study_id="7",
                     referring=make_physician(rng))  # fmt: skip


def _report(key: str = "ct_chest", version: int = 1) -> ReportDocument:
    exam = _exam(key)
    return make_report(exam, document_id=f"{exam.site.document_oid}.{version}",
                       set_id=f"{exam.site.set_oid}.1", authored=datetime(2024, 1, 15, 11, 30),
                       version=version,
                       replaces=f"{exam.site.document_oid}.1" if version > 1 else None)  # fmt: skip


@pytest.fixture(scope="module")
def report() -> ReportDocument:
    return _report()


def _with_body(cda: bytes, body: str) -> bytes:
    """``cda`` with its ``component`` replaced by ``body`` (XML in the CDA namespace)."""
    root = etree.fromstring(cda)
    old = root.find("h:component", NS)
    assert old is not None
    root.remove(old)
    root.append(etree.fromstring(f'<component xmlns="{H}">{body}</component>'))
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _structured(cda: bytes, text: str, title: str = "Compte rendu") -> bytes:
    return _with_body(cda, f"<structuredBody><component><section><title>{escape(title)}</title>"
                           f"<text>{text}</text></section></component></structuredBody>")  # fmt: skip


def _non_xml(cda: bytes, text: bytes, media_type: str, representation: str = "B64") -> bytes:
    body = text.decode() if representation == "TXT" else base64.b64encode(text).decode()
    return _with_body(cda, f'<nonXMLBody><text mediaType="{escape(media_type)}" '
                           f'representation="{representation}">{body}</text></nonXMLBody>')  # fmt: skip


# --- synthetic reports ----------------------------------------------------------------------


def test_header_shows_document_patient_author_structure_exam(report: ReportDocument) -> None:
    exam, patient = report.exam, report.exam.patient
    html = report_html(report.xml)
    text = _check(html)
    assert html.startswith('<article class="cda-report" lang="fr">')
    assert f"CR d'imagerie médicale - {exam.exam_type.description}" in text
    assert "15 janvier 2024 à 11 h 30" in text  # date of the report
    assert "15 janvier 2024 à 9 h 05" in text  # date of the exam
    assert patient.birth_family in text
    assert " ".join(patient.given_names) in text
    assert french_date(patient.birth_date.strftime("%Y%m%d")) in text
    assert {"F": "Féminin", "M": "Masculin"}[patient.sex] in text
    assert patient.ins.value in text
    assert f"Dr {exam.radiologist.given} {exam.radiologist.family}" in text
    assert f"RPPS {exam.radiologist.rpps}" in text
    assert exam.site.name in text
    assert exam.accession in text
    assert f'<small class="cda-uid">{exam.study_uid}</small>' in html
    for label in ("Nom de naissance", "Prénoms", "Date de naissance", "Sexe", "INS", "Médecin",
                  "Structure", "N° d'accession", "UID de l'étude"):  # fmt: skip
        assert f"<dt>{escape(label, quote=False)}</dt>" in html


@pytest.mark.parametrize("key", sorted(EXAM_TYPES))
def test_pdf_text_is_shown_in_paragraphs(key: str) -> None:
    report = _report(key)
    conclusion = next(line for line in report.text.splitlines() if line.startswith("Conclusion"))
    technique = next(line for line in report.text.splitlines() if line.startswith("Technique"))
    html = report_html(report.xml)
    _check(html)
    # wrapped lines of the PDF are joined back: whole sentences are searchable in the page
    assert f"<p>{escape(conclusion, quote=False)}</p>" in html
    assert f"<p>{escape(technique, quote=False)}</p>" in html
    assert "Ouvrir le compte rendu original" not in html


def test_pdf_link_and_embedded_pdf(report: ReportDocument) -> None:
    assert report_pdf(report.xml) == report.pdf
    html = report_html(report.xml, pdf_url="/reports/1.2.3/pdf?a=1&b=2")
    _check(html)
    assert ('<a href="/reports/1.2.3/pdf?a=1&amp;b=2" rel="noopener noreferrer" '
            'target="_blank">Ouvrir le compte rendu original (PDF)</a>') in html  # fmt: skip
    assert "Ouvrir" not in report_html(report.xml, pdf_url="javascript:alert(1)")


def test_corrected_report_says_it_replaces_the_previous_version() -> None:
    text = _check(report_html(_report(version=2).xml))
    assert "2 (remplace la version précédente)" in text
    assert "Compte rendu rectifié (version 2)" in text


# --- PDF and other non-XML bodies ------------------------------------------------------------


@pytest.mark.parametrize(
    "payload", [b"%PDF-1.4\n1 0 obj << /Type /Catalog garbage", b"\x00\xff" * 100, b""]
)
def test_corrupt_pdf_keeps_the_header_and_says_so(report: ReportDocument, payload: bytes) -> None:
    cda = _non_xml(report.xml, payload, "application/pdf")
    html = report_html(cda, pdf_url="/pdf")
    text = _check(html)
    assert "Le texte du compte rendu n'a pas pu être extrait." in text
    assert report.exam.patient.ins.value in text
    is_pdf = payload.startswith(b"%PDF-")
    assert ("Ouvrir le compte rendu original" in text) is is_pdf
    assert report_pdf(cda) == (payload if is_pdf else None)


@pytest.mark.parametrize(("compression", "wbits"), [("DF", -15), ("ZL", 15), ("GZ", 31)])
def test_compressed_pdf(report: ReportDocument, compression: str, wbits: int) -> None:
    packer = zlib.compressobj(wbits=wbits)
    packed = base64.b64encode(packer.compress(report.pdf) + packer.flush()).decode()
    cda = _with_body(report.xml, f'<nonXMLBody><text mediaType="application/pdf" '
                                 f'representation="B64" compression="{compression}">'
                                 f"{packed}</text></nonXMLBody>")  # fmt: skip
    assert report_pdf(cda) == report.pdf
    assert "<p>Conclusion : " in report_html(cda)


def test_undecodable_base64_pdf(report: ReportDocument) -> None:
    cda = _with_body(report.xml, '<nonXMLBody><text mediaType="application/pdf" '
                                 'representation="B64">@@not base64@@</text></nonXMLBody>')  # fmt: skip
    assert "n'a pas pu être extrait" in report_html(cda)
    assert report_pdf(cda) is None


def test_plain_text_body_is_escaped_in_pre(report: ReportDocument) -> None:
    for representation in ("B64", "TXT"):
        body = "Conclusion : <b>normal</b> &amp; rassurant"
        raw = body.encode() if representation == "B64" else escape(body).encode()
        html = report_html(_non_xml(report.xml, raw, "text/plain", representation))
        _check(html)
        assert '<pre class="cda-plain">Conclusion : &lt;b&gt;normal&lt;/b&gt; &amp;amp; ' in html
        assert report_pdf(_non_xml(report.xml, raw, "text/plain", representation)) is None


def test_other_media_type_is_not_displayed(report: ReportDocument) -> None:
    html = report_html(_non_xml(report.xml, b"\xff\xd8\xff", "image/jpeg"))
    assert "Format non affichable : image/jpeg" in _check(html)
    html = report_html(_non_xml(report.xml, b"x", 'text/html"><script>alert(1)</script>'))
    text = _check(html)
    assert "Format non affichable" in text
    assert "<script" not in html


def test_huge_plain_text_is_capped(report: ReportDocument) -> None:
    html = report_html(_non_xml(report.xml, b"a" * (MAX_TEXT + 50_000), "text/plain"))
    assert MAX_TEXT <= len(html) < MAX_TEXT + 10_000
    assert "tronqué" in html


# --- structured body -------------------------------------------------------------------------


NARRATIVE = """
<paragraph>Premier <content styleCode="Bold">paragraphe</content> H<sub>2</sub>O
m<sup>2</sup><br/>suite <content revised="delete">texte barré</content>fin.</paragraph>
<list><caption>Constatations</caption><item>élément un</item><item>élément deux</item></list>
<list listType="ordered"><item>étape 1</item><item>étape 2</item></list>
<table border="1" style="color:red"><caption>Mesures</caption>
<thead><tr><th>Lésion</th><th>Taille</th></tr></thead>
<tbody><tr><td colspan="2" onmouseover="x()">nodule <content styleCode="Italics">LSD</content></td></tr>
<tr><td rowspan="abc">a</td><td colspan="²">8 mm</td></tr></tbody></table>
<paragraph>Voir <linkHtml href="https://www.has-sante.fr/guide?a=1&amp;b=2">la HAS</linkHtml>.
<renderMultiMedia referencedObject="img1"/></paragraph>
<footnote>note de bas de page</footnote>
"""


def test_structured_body_maps_narrative_to_html(report: ReportDocument) -> None:
    cda = _with_body(
        report.xml,
        f"""<structuredBody>
      <component><section><title>Résultats</title><text>{NARRATIVE}</text>
        <component><section><title>Détail</title><text>sous-section</text></section></component>
      </section></component>
      <component><section><title>Conclusion</title><text><paragraph>Normal.</paragraph></text>
      </section></component></structuredBody>""",
    )
    html = report_html(cda, pdf_url="/pdf")
    text = _check(html)
    assert '<section class="cda-section"><h3>Résultats</h3>' in html
    assert "<h4>Détail</h4>" in html
    assert "<h3>Conclusion</h3>" in html
    assert "<p>Premier <span><strong>paragraphe</strong></span> H<sub>2</sub>O" in html
    assert "<sup>2</sup><br>suite" in html
    assert "texte barré" not in html
    assert '<p class="cda-caption">Constatations</p><ul><li>élément un</li>' in html
    assert "<ol><li>étape 1</li><li>étape 2</li></ol>" in html
    assert '<table class="cda-table"><caption>Mesures</caption><thead><tr><th>Lésion</th>' in html
    assert '<td colspan="2">nodule <span><em>LSD</em></span></td>' in html
    assert "<td>a</td><td>8 mm</td>" in html
    assert ('<a href="https://www.has-sante.fr/guide?a=1&amp;b=2" rel="noopener noreferrer" '
            'target="_blank">la HAS</a>') in html  # fmt: skip
    assert "[illustration non affichée]" in text
    assert "note de bas de page" in text
    assert "Ouvrir le compte rendu original" not in html  # no PDF body
    assert report_pdf(cda) is None


def test_scripts_handlers_and_javascript_links_are_neutralised(report: ReportDocument) -> None:
    evil = (
        "&lt;script&gt;alert(1)&lt;/script&gt;"
        "<script>alert(2)</script>"
        '<x:script xmlns:x="http://www.w3.org/1999/xhtml">alert(3)</x:script>'
        '<x:img xmlns:x="http://www.w3.org/1999/xhtml" src="x" onerror="alert(4)"/>'
        '<paragraph onclick="alert(5)" style="background:url(x)" ID="p1">clic</paragraph>'
        '<content onclick="alert(6)">contenu</content>'
        '<linkHtml href="javascript:alert(7)">lien1</linkHtml>'
        '<linkHtml href=" JaVaScRiPt:alert(8)">lien2</linkHtml>'
        '<linkHtml href="java&#x09;script:alert(9)">lien3</linkHtml>'
        '<linkHtml href="data:text/html,&lt;script&gt;alert(10)&lt;/script&gt;">lien4</linkHtml>'
        '<linkHtml href="https://x.example/&quot;onmouseover=&quot;alert(11)">lien5</linkHtml>'
    )
    html = report_html(_structured(report.xml, evil, title="<img src=x onerror=alert(0)>"))
    text = _check(html)
    assert "<script" not in html.lower()
    assert "<img" not in html.lower()
    assert "javascript:" not in html.lower()
    assert "data:" not in html
    tags = re.findall(r"<[^>]*>", html)
    assert not [t for t in tags if re.search(r"\son\w+\s*=", t)]  # no event-handler attribute
    assert not [t for t in tags if "style=" in t]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown as text, not run
    assert "&lt;img src=x onerror=alert(0)&gt;" in html
    for kept in ("alert(2)", "alert(3)", "clic", "contenu", "lien1", "lien2", "lien3", "lien4"):
        assert kept in text
    assert '<a href="https://x.example/&quot;onmouseover=&quot;alert(11)"' in html


def test_huge_and_deep_narrative_is_bounded(report: ReportDocument) -> None:
    big = "<paragraph>" + "x" * (MAX_TEXT + 1000) + "</paragraph>" * 1
    html = report_html(_structured(report.xml, big + "<paragraph>après</paragraph>"))
    assert len(html) < MAX_TEXT + 10_000
    assert "Compte rendu tronqué" in html
    assert "après" not in html
    deep = "<content>" * 200 + "profond" + "</content>" * 200
    html = report_html(_structured(report.xml, deep))
    assert "profond" in _check(html)
    assert html.count("<span>") < 60


def test_minimal_document_renders_without_header_fields() -> None:
    html = report_html(f'<ClinicalDocument xmlns="{H}"/>'.encode())
    text = _check(html)
    assert "Le document ne contient pas de compte rendu." in text
    assert "Compte rendu d'imagerie médicale" in text


# --- refused input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not xml at all",
        b"<ClinicalDocument xmlns='urn:hl7-org:v3'><title>unclosed</ClinicalDocument>",
        b"<html><body>not a CDA</body></html>",
        b"\xff\xfe<\x00",
    ],
)
def test_malformed_xml_raises_invalid_input(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        report_html(data)
    with pytest.raises(InvalidInput):
        report_pdf(data)


@pytest.mark.parametrize(
    "doctype",
    [
        '<!DOCTYPE ClinicalDocument [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>',
        '<!DOCTYPE ClinicalDocument SYSTEM "http://attacker.example/cda.dtd">',
        '<!DOCTYPE ClinicalDocument [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>',
    ],
)
def test_doctype_and_entities_are_refused(doctype: str) -> None:
    entity = "&xxe;" if "xxe" in doctype else ("&b;" if "ENTITY b" in doctype else "")
    data = (f'<?xml version="1.0"?>{doctype}<ClinicalDocument xmlns="{H}">'
            f"<title>{entity}</title></ClinicalDocument>").encode()  # fmt: skip
    with pytest.raises(InvalidInput):
        report_html(data)


# --- helpers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240115", "15 janvier 2024"),
        ("20240101093000+0100", "1er janvier 2024"),
        ("20230815", "15 août 2023"),
        ("202402", "février 2024"),
        ("1954", "1954"),
        ("20241301", "20241301"),
        ("20240230", "20240230"),
        ("inconnu", "inconnu"),
    ],
)
def test_french_date(value: str, expected: str) -> None:
    assert french_date(value) == expected


def test_french_date_with_time() -> None:
    assert french_date("20241231235959+0100", with_time=True) == "31 décembre 2024 à 23 h 59"
    assert french_date("20241231", with_time=True) == "31 décembre 2024"


@pytest.mark.parametrize(
    ("href", "ok"),
    [
        ("https://example.org/a", True),
        ("HTTP://example.org", True),
        ("javascript:alert(1)", False),
        ("//example.org", False),
        ("/relative", False),
        ("https://exa mple.org", False),
        ("vbscript:x", False),
        (None, False),
    ],
)
def test_safe_href(href: str | None, ok: bool) -> None:
    assert (safe_href(href) is not None) is ok
