"""Show a CI-SIS imaging report (CDA R2, IMG-CR-IMG) to a professional as a safe HTML fragment.

:func:`report_html` renders the header (document, patient, author, structure, exam) and the
body. A ``structuredBody`` narrative block (CDA ``StrucDoc.Text``) is mapped element by element
to a small HTML vocabulary: ``paragraph`` -> ``<p>``, ``list``/``item`` -> ``<ul>``/``<ol>``
and ``<li>``, ``table`` and its rows and cells -> the same HTML elements, ``content`` ->
``<span>`` (``styleCode`` Bold/Italics/Emphasis/Underline -> ``<strong>``/``<em>``/``<u>``),
``br``, ``sub``, ``sup``, ``caption``, ``linkHtml`` -> ``<a>`` for http(s) targets only.
Anything else is dropped but its text kept; no attribute of the source ever reaches the
output (only ``colspan``/``rowspan``/``span`` numbers and a checked ``href`` are rebuilt), and
every piece of text is escaped. A ``nonXMLBody`` PDF (the usual level 1 report) is shown as the
text pypdf extracts from it, reflowed into paragraphs so that it reads and searches in the
page; :func:`report_pdf` gives the PDF itself for a "see the original" link.

The CDA is untrusted: it goes through :func:`drimbox.adapters.documents.cda.parse_xml` (no DTD,
no entities, no network); malformed input raises :class:`~drimbox.domain.errors.InvalidInput`.
A PDF that cannot be read degrades to a message, never an exception. Output is bounded: the
input size, the rendered text (:data:`MAX_TEXT`), the PDF pages read, the number of narrative
elements and their nesting depth are all capped.

The work is synchronous and CPU-bound (a few ms for a one-page report); run it in a thread from
async code.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import zlib
from collections.abc import Callable, Iterator
from datetime import date
from html import escape
from urllib.parse import urlsplit

from lxml import etree
from pypdf import PdfReader

from drimbox.adapters.documents.cda import NS, RPPS_ROOT, parse_xml
from drimbox.domain.errors import InvalidInput
from drimbox.domain.identifiers import (
    INS_OID_NIA_REAL,
    INS_OID_NIA_TEST,
    INS_OID_REAL,
    INS_OID_TEST,
)

__all__ = [
    "MAX_CDA_BYTES",
    "MAX_TEXT",
    "french_date",
    "report_html",
    "report_pdf",
    "safe_href",
]

MAX_CDA_BYTES = 40 * 1024 * 1024
"""Larger CDA documents are refused (libxml2 already caps one text node, the PDF, at 10 MB)."""
MAX_TEXT = 200_000
"""Characters of report text rendered at most (narrative, PDF text or plain text)."""
MAX_PDF_PAGES = 300
MAX_ELEMENTS = 100_000
"""Narrative elements rendered at most; the rest of the text is cut."""
MAX_DEPTH = 40
"""Deeper narrative nesting is flattened to its text."""
_MAX_FIELD = 500
_MAX_DECOMPRESSED = 32 * 1024 * 1024

_H = "{urn:hl7-org:v3}"
_MONTHS = ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août",
           "septembre", "octobre", "novembre", "décembre")  # fmt: skip
_TS = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?", re.ASCII)
_SEX = {"F": "Féminin", "M": "Masculin", "U": "Inconnu", "UN": "Inconnu"}
_INS_KIND = {
    INS_OID_REAL: "INS-NIR",
    INS_OID_TEST: "INS-NIR de test",
    INS_OID_NIA_REAL: "INS-NIA (provisoire)",
    INS_OID_NIA_TEST: "INS-NIA de test",
}
_TITLES = {"DR": "Dr", "PR": "Pr"}
_STYLE_TAGS = {"bold": "strong", "italics": "em", "emphasis": "em", "underline": "u"}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_PAGE_NUMBER = re.compile(r"(?:page\s*)?\d{1,4}\s*(?:/|sur)\s*\d{1,4}", re.IGNORECASE)
_LABEL = re.compile(r"[A-ZÀ-ÝŒ][^:]{0,40}\s:\s")
_NO_TEXT = "Le texte du compte rendu n'a pas pu être extrait."


def _text(value: str) -> str:
    return escape(value, quote=False)


def _attr(value: str) -> str:
    return escape(value, quote=True)


# --- header ---------------------------------------------------------------------------------


def french_date(value: str, *, with_time: bool = False) -> str:
    """An HL7 TS (``YYYYMMDDHHMMSS+ZZZZ``, any precision) as ``15 janvier 2024 à 10 h 05``.

    The wall-clock time of the document is kept as written (French documents carry local
    time); a value that is not a valid date comes back unchanged.
    """
    match = _TS.match(value.strip())
    if match is None:
        return value.strip()
    year, month, day, hour, minute = match.groups()
    if month is None:
        return year
    if not 1 <= int(month) <= 12:
        return value.strip()
    month_name = _MONTHS[int(month) - 1]
    if day is None:
        return f"{month_name} {year}"
    try:
        date(int(year), int(month), int(day))
    except ValueError:
        return value.strip()
    text = f"{'1er' if int(day) == 1 else int(day)} {month_name} {year}"
    if with_time and hour is not None and int(hour) < 24 and int(minute or 0) < 60:
        text += f" à {int(hour)} h {minute or '00'}"
    return text


def _all_text(element: etree._Element) -> str:
    """Every text node under ``element`` (lxml-stubs type them ``str | bytes``)."""
    return "".join(t if isinstance(t, str) else t.decode("utf-8", "replace")
                   for t in element.itertext())  # fmt: skip


def _words(element: etree._Element | None) -> str:
    """The whitespace-normalised text of ``element`` (bounded)."""
    if element is None:
        return ""
    return " ".join(_all_text(element)[: _MAX_FIELD * 4].split())[:_MAX_FIELD]


def _get(root: etree._Element | None, path: str, name: str) -> str:
    found = root.find(path, NS) if root is not None else None
    return (found.get(name) or "").strip()[:_MAX_FIELD] if found is not None else ""


def _name_part(name: etree._Element, tag: str, qualifier: str | None) -> str:
    for part in name.findall(f"h:{tag}", NS):
        if (part.get("qualifier") or None) == qualifier and _words(part):
            return _words(part)
    return ""


def _person_name(name: etree._Element | None) -> str:
    """``Dr Given FAMILY`` from an HL7 PN (prefix, given, family, suffix DR/PR)."""
    if name is None:
        return ""
    prefixes = [_words(p) for p in name.findall("h:prefix", NS)]
    titles = [_TITLES.get(_words(s).upper().rstrip("."), "") for s in name.findall("h:suffix", NS)]
    given = [_words(g) for g in name.findall("h:given", NS)]
    family = [_words(f) for f in name.findall("h:family", NS)]
    parts = [p for p in [*prefixes, *titles[:1], *given, *family] if p]
    return " ".join(dict.fromkeys(parts)) or _words(name)


def _national_id(entity: etree._Element | None) -> str:
    """The RPPS number of a professional (``8`` + RPPS as idNat in CDA ids)."""
    ident = _get(entity, f"h:id[@root='{RPPS_ROOT}']", "extension")
    return ident[1:] if len(ident) == 12 and ident.startswith("8") else ident


def _rows(rows: list[tuple[str, str]]) -> str:
    """A ``<dl>`` of the non-empty rows; values are already HTML."""
    items = [f"<dt>{_text(label)}</dt><dd>{value}</dd>" for label, value in rows if value]
    return f"<dl>{''.join(items)}</dl>" if items else ""


def _block(css: str, title: str, rows: list[tuple[str, str]]) -> str:
    body = _rows(rows)
    if not body:
        return ""
    return f'<section class="{css}"><h3>{_text(title)}</h3>{body}</section>'


def _document_block(root: etree._Element) -> str:
    title = _words(root.find("h:title", NS)) or _get(root, "h:code", "displayName")
    version = _get(root, "h:versionNumber", "value")
    replaces = root.find("h:relatedDocument[@typeCode='RPLC']", NS) is not None
    revision = ""
    if version.isascii() and version.isdigit() and int(version) > 1:
        revision = f"{int(version)}" + (" (remplace la version précédente)" if replaces else "")
    when = _get(root, "h:effectiveTime", "value")
    rows = [
        ("Date du compte rendu", _text(french_date(when, with_time=True)) if when else ""),
        ("Version", _text(revision)),
    ]
    heading = _text(title or "Compte rendu d'imagerie médicale")
    return f'<h2 class="cda-title">{heading}</h2>{_rows(rows)}'


def _patient_block(root: etree._Element) -> str:
    role = root.find("h:recordTarget/h:patientRole", NS)
    person = role.find("h:patient", NS) if role is not None else None
    name = person.find("h:name", NS) if person is not None else None
    birth_name = used_name = given = ""
    if name is not None:
        birth_name = _name_part(name, "family", "BR") or _name_part(name, "family", None)
        used_name = _name_part(name, "family", "CL") or _name_part(name, "family", "SP")
        given = _name_part(name, "given", None) or _name_part(name, "given", "BR")
    sex_code = _get(person, "h:administrativeGenderCode", "code").upper()
    sex = _SEX.get(sex_code) or _get(person, "h:administrativeGenderCode", "displayName")
    birth = _get(person, "h:birthTime", "value")
    ins = []
    for ident in role.findall("h:id", NS) if role is not None else []:
        kind = _INS_KIND.get((ident.get("root") or "").strip())
        value = (ident.get("extension") or "").strip()[:_MAX_FIELD]
        if kind and value:
            ins.append(f"{_text(value)} <small>({_text(kind)})</small>")
    return _block("cda-patient", "Patient", [
        ("Nom de naissance", _text(birth_name)),
        ("Nom utilisé", _text(used_name) if used_name != birth_name else ""),
        ("Prénoms", _text(given)),
        ("Date de naissance", _text(french_date(birth)) if birth else ""),
        ("Sexe", _text(sex)),
        ("INS", "<br>".join(ins)),
    ])  # fmt: skip


def _professional(entity: etree._Element | None) -> str:
    if entity is None:
        return ""
    name = _person_name(entity.find("h:assignedPerson/h:name", NS))
    rpps = _national_id(entity)
    specialty = _get(entity, "h:code", "displayName")
    text = _text(name or "Professionnel non nommé")
    if rpps:
        text += f" <small>(RPPS {_text(rpps)})</small>"
    if specialty:
        text += f"<br><small>{_text(specialty)}</small>"
    return text if name or rpps else ""


def _organization(root: etree._Element) -> str:
    for path in ("h:legalAuthenticator/h:assignedEntity/h:representedOrganization",
                 "h:author/h:assignedAuthor/h:representedOrganization",
                 "h:custodian/h:assignedCustodian/h:representedCustodianOrganization"):  # fmt: skip
        org = root.find(path, NS)
        name = _words(org.find("h:name", NS)) if org is not None else ""
        if org is None or not name:
            continue
        address = org.find("h:addr", NS)
        street = _words(address.find("h:streetAddressLine", NS)) if address is not None else ""
        city = " ".join(
            _words(address.find(f"h:{tag}", NS)) for tag in ("postalCode", "city")
        ).strip() if address is not None else ""  # fmt: skip
        lines = [_text(name)] + [f"<small>{_text(x)}</small>" for x in (street, city) if x]
        return "<br>".join(lines)
    return ""


def _author_block(root: etree._Element) -> str:
    author = root.find("h:author/h:assignedAuthor", NS)
    legal = root.find("h:legalAuthenticator/h:assignedEntity", NS)
    author_html = _professional(author)
    legal_html = _professional(legal)
    if legal_html and (not author_html or _national_id(legal) != _national_id(author)):
        signer = legal_html
    else:
        signer = ""
    return _block("cda-author", "Auteur", [
        ("Médecin", author_html or legal_html),
        ("Validé par", signer if author_html else ""),
        ("Structure", _organization(root)),
    ])  # fmt: skip


def _exam_block(root: etree._Element) -> str:
    event = root.find("h:documentationOf/h:serviceEvent", NS)
    description = _get(event, "h:code", "displayName")
    modality = ""
    if event is not None:
        for translation in event.findall("h:code/h:translation", NS):
            if translation.get("codeSystem") == "1.2.840.10008.2.16.4":
                modality = (translation.get("displayName") or "").strip()[:_MAX_FIELD]
                break
    when = _get(event, "h:effectiveTime/h:low", "value") or _get(event, "h:effectiveTime",
                                                                  "value")  # fmt: skip
    accession = _get(root, "h:inFulfillmentOf/h:order/ps3:accessionNumber", "extension")
    study_uid = _get(event, "h:id", "root")
    return _block("cda-exam", "Examen", [
        ("Examen", _text(description)),
        ("Modalité", _text(modality)),
        ("Date de l'examen", _text(french_date(when, with_time=True)) if when else ""),
        ("N° d'accession", _text(accession)),
        ("UID de l'étude", f'<small class="cda-uid">{_text(study_uid)}</small>'
         if study_uid else ""),
    ])  # fmt: skip


def _header(root: etree._Element) -> str:
    parts = [_document_block(root), _patient_block(root), _author_block(root), _exam_block(root)]
    return f'<header class="cda-header">{"".join(parts)}</header>'


# --- structured body: the CDA narrative block ------------------------------------------------


def _local(element: etree._Element) -> str | None:
    """The CDA local name; ``""`` for a foreign element, None for a comment or PI."""
    tag = element.tag
    if not isinstance(tag, str):
        return None
    return tag[len(_H) :] if tag.startswith(_H) else ""


def _children(element: etree._Element) -> Iterator[etree._Element]:
    for child in element:
        if _local(child) is not None:
            yield child


def _number(element: etree._Element, name: str) -> str:
    value = (element.get(name) or "").strip()
    if value.isascii() and value.isdigit() and 1 < int(value) <= 1000:
        return f' {name}="{int(value)}"'
    return ""


def safe_href(href: str | None) -> str | None:
    """``href`` if it is an absolute http(s) URL without control characters, else None."""
    if not href:
        return None
    href = href.strip()
    if len(href) > 2000 or any(ord(c) < 33 or c in "\\\x7f" for c in href):
        return None
    try:
        parts = urlsplit(href)
    except ValueError:
        return None
    if parts.scheme.lower() not in {"http", "https"} or not parts.netloc:
        return None
    return href


class _Narrative:
    """Renders CDA narrative to HTML within a text and element budget."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.budget = MAX_TEXT
        self.elements = MAX_ELEMENTS
        self.truncated = False
        self.handlers: dict[str, Callable[[etree._Element, int], None]] = {
            "paragraph": self._paragraph,
            "content": self._content,
            "list": self._list,
            "table": self._table,
            "br": lambda _e, _d: self.out.append("<br>"),
            "sub": lambda e, d: self._wrap("sub", e, d),
            "sup": lambda e, d: self._wrap("sup", e, d),
            "caption": lambda e, d: self._wrap("strong", e, d, css="cda-caption"),
            "linkHtml": self._link,
            "footnote": lambda e, d: self._wrap("small", e, d, css="cda-footnote"),
            "footnoteRef": lambda _e, _d: None,
            "renderMultiMedia": self._media,
        }

    # -- text ------------------------------------------------------------------------------

    def text(self, value: str | None) -> None:
        if not value:
            return
        if len(value) > self.budget:
            value = value[: self.budget]
            self.truncated = True
        self.budget -= len(value)
        self.out.append(_text(value))

    def tail(self, element: etree._Element) -> None:
        self.text(element.tail)

    # -- dispatch --------------------------------------------------------------------------

    def inner(self, element: etree._Element, depth: int) -> None:
        """The text and children of ``element`` (not the element itself)."""
        self.text(element.text)
        for child in element:
            if _local(child) is not None:
                self.node(child, depth + 1)
            self.tail(child)

    def node(self, element: etree._Element, depth: int) -> None:
        self.elements -= 1
        if self.elements < 0 or self.budget <= 0:
            self.truncated = True
            return
        if depth > MAX_DEPTH:
            self.text(" ".join(_all_text(element).split()))
            return
        name = _local(element) or ""
        handler = self.handlers.get(name)
        if handler is None:  # unknown or foreign element: keep its text only
            self.inner(element, depth)
        else:
            handler(element, depth)

    # -- elements --------------------------------------------------------------------------

    def _wrap(self, tag: str, element: etree._Element, depth: int, css: str = "") -> None:
        self.out.append(f'<{tag} class="{css}">' if css else f"<{tag}>")
        self._styled(element, depth)
        self.out.append(f"</{tag}>")

    def _styled(self, element: etree._Element, depth: int) -> None:
        """The content of ``element`` inside the HTML elements of its ``styleCode``."""
        styles = [
            _STYLE_TAGS[code]
            for code in dict.fromkeys((element.get("styleCode") or "").lower().split())
            if code in _STYLE_TAGS
        ]
        self.out.extend(f"<{tag}>" for tag in styles)
        self.inner(element, depth)
        self.out.extend(f"</{tag}>" for tag in reversed(styles))

    def _paragraph(self, element: etree._Element, depth: int) -> None:
        self._wrap("p", element, depth)

    def _content(self, element: etree._Element, depth: int) -> None:
        if (element.get("revised") or "").strip().lower() == "delete":
            return  # text the author struck out
        self._wrap("span", element, depth)

    def _link(self, element: etree._Element, depth: int) -> None:
        href = safe_href(element.get("href"))
        if href is None:
            self._wrap("span", element, depth)
            return
        self.out.append(f'<a href="{_attr(href)}" rel="noopener noreferrer" target="_blank">')
        self.inner(element, depth)
        self.out.append("</a>")

    def _media(self, element: etree._Element, depth: int) -> None:
        caption = element.find("h:caption", NS)
        self.out.append('<em class="cda-media">')
        if caption is not None:
            self.inner(caption, depth + 1)
        else:
            self.text("[illustration non affichée]")
        self.out.append("</em>")

    def _list(self, element: etree._Element, depth: int) -> None:
        tag = "ol" if (element.get("listType") or "").strip().lower() == "ordered" else "ul"
        items = []
        for child in _children(element):
            if _local(child) == "caption":
                self._wrap("p", child, depth + 1, css="cda-caption")
            else:
                items.append(child)
        self.out.append(f"<{tag}>")
        for item in items:
            self.out.append("<li>")
            if _local(item) == "item":
                self._styled(item, depth + 1)
            else:  # not a list item: keep its text
                self.node(item, depth + 1)
            if (item.tail or "").strip():
                self.tail(item)
            self.out.append("</li>")
        self.out.append(f"</{tag}>")

    def _table(self, element: etree._Element, depth: int) -> None:
        self.out.append('<table class="cda-table">')
        for child in _children(element):
            name = _local(child)
            if name == "caption":
                self._wrap("caption", child, depth + 1)
            elif name in {"thead", "tbody", "tfoot"}:
                self.out.append(f"<{name}>")
                for row in _children(child):
                    self._row(row, depth + 2)
                self.out.append(f"</{name}>")
            elif name in {"col", "colgroup"}:
                self._columns(child)
            elif name == "tr":
                self._row(child, depth + 1)
        self.out.append("</table>")

    def _columns(self, element: etree._Element) -> None:
        if _local(element) == "col":
            self.out.append(f"<col{_number(element, 'span')}>")
            return
        self.out.append(f"<colgroup{_number(element, 'span')}>")
        for col in _children(element):
            if _local(col) == "col":
                self.out.append(f"<col{_number(col, 'span')}>")
        self.out.append("</colgroup>")

    def _row(self, row: etree._Element, depth: int) -> None:
        if _local(row) != "tr":
            return
        self.elements -= 1
        self.out.append("<tr>")
        for cell in _children(row):
            tag = _local(cell)
            if tag not in {"td", "th"}:
                continue
            spans = _number(cell, "colspan") + _number(cell, "rowspan")
            self.out.append(f"<{tag}{spans}>")
            self._styled(cell, depth + 1)
            self.out.append(f"</{tag}>")
        self.out.append("</tr>")

    # -- sections --------------------------------------------------------------------------

    def section(self, section: etree._Element, level: int, depth: int) -> None:
        self.elements -= 1
        if self.elements < 0 or depth > MAX_DEPTH:
            self.truncated = True
            return
        self.out.append('<section class="cda-section">')
        title = section.find("h:title", NS)
        if title is not None and _words(title):
            heading = f"h{min(level, 6)}"
            self.out.append(f"<{heading}>")
            self.text(" ".join(_all_text(title).split()))
            self.out.append(f"</{heading}>")
        text = section.find("h:text", NS)
        if text is not None:
            self.out.append('<div class="cda-text">')
            self.inner(text, depth)
            self.out.append("</div>")
        for sub in section.findall("h:component/h:section", NS):
            self.section(sub, level + 1, depth + 1)
        self.out.append("</section>")


def _structured(body: etree._Element) -> str:
    narrative = _Narrative()
    for section in body.findall("h:component/h:section", NS):
        narrative.section(section, 3, 0)
    if narrative.truncated:
        narrative.out.append('<p class="cda-note">[…] Compte rendu tronqué à l\'affichage.</p>')
    if not narrative.out:
        return '<p class="cda-note">Le compte rendu ne contient aucune section.</p>'
    return "".join(narrative.out)


# --- non-XML body ----------------------------------------------------------------------------


def _body_text(root: etree._Element) -> etree._Element | None:
    return root.find("h:component/h:nonXMLBody/h:text", NS)


def _media_type(text: etree._Element) -> str:
    return (text.get("mediaType") or "text/plain").split(";")[0].strip().lower()[:100]


def _inflate(data: bytes, compression: str) -> bytes | None:
    """Undo the ED ``compression`` (DF deflate, ZL zlib, GZ gzip), bounded; None if unknown."""
    wbits = {"": None, "DF": -15, "ZL": 15, "GZ": 31}.get(compression.strip().upper(), 0)
    if wbits is None:
        return data
    if wbits == 0:
        return None
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(data, _MAX_DECOMPRESSED)
    except zlib.error:
        return None
    return None if inflater.unconsumed_tail else out


def _payload(text: etree._Element) -> bytes | None:
    """The bytes of a ``nonXMLBody/text`` ED (B64 or TXT), None if undecodable."""
    if text.find("h:reference", NS) is not None and not (text.text or "").strip():
        return None
    raw = _all_text(text)
    if (text.get("representation") or "TXT").strip().upper() == "B64":
        try:
            data = base64.b64decode("".join(raw.split()), validate=True)
        except (binascii.Error, ValueError):
            return None
    else:
        data = raw.encode("utf-8")
    return _inflate(data, text.get("compression") or "")


def _clean(value: str) -> str:
    return _CONTROL.sub("", value.replace("\r\n", "\n").replace("\r", "\n"))


def _pdf_lines(pdf: bytes) -> list[str] | None:
    """The lines of text of the PDF (page numbers dropped), None if it cannot be read."""
    lines: list[str] = []
    total = 0
    try:
        reader = PdfReader(io.BytesIO(pdf), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            return None
        for number, page in enumerate(reader.pages):
            if number >= MAX_PDF_PAGES or total >= MAX_TEXT:
                break
            page_lines = [
                " ".join(line.split()) for line in _clean(page.extract_text()).split("\n")
            ]
            while page_lines and (not page_lines[-1] or _PAGE_NUMBER.fullmatch(page_lines[-1])):
                page_lines.pop()
            total += sum(len(line) + 1 for line in page_lines)
            lines += [*page_lines, ""]  # a page break ends the paragraph
    except Exception:  # pypdf raises anything on a corrupt file: degrade, never fail the page
        return None
    return lines


def _paragraphs(lines: list[str]) -> list[str]:
    """Reflow PDF lines: a line the next word would not have fitted on continues the sentence.

    The width is the longest line of the document; a line starting with ``Label :`` always
    starts a new paragraph; an empty line ends one.
    """
    width = min(max((len(line) for line in lines), default=0), 200)
    paragraphs: list[str] = []
    current = ""
    for line, following in zip(lines, [*lines[1:], ""], strict=True):
        if not line:
            if current:
                paragraphs.append(current)
            current = ""
            continue
        current = f"{current}{line}" if current.endswith("-") else f"{current} {line}".lstrip()
        next_word = following.split(" ", 1)[0]
        wrapped = (
            bool(next_word)
            and len(line) + 1 + len(next_word) > width
            and not _LABEL.match(following)
        )
        if not wrapped:
            paragraphs.append(current)
            current = ""
    if current:
        paragraphs.append(current)
    return paragraphs


def _pdf_body(pdf: bytes | None, pdf_url: str | None) -> str:
    parts: list[str] = []
    link = _local_or_web_url(pdf_url) if pdf is not None else None
    if link is not None:
        parts.append(
            f'<p class="cda-original"><a href="{_attr(link)}" rel="noopener noreferrer"'
            ' target="_blank">Ouvrir le compte rendu original (PDF)</a></p>'
        )
    lines = _pdf_lines(pdf) if pdf is not None else None
    paragraphs = _paragraphs(lines) if lines is not None else []
    if not paragraphs:
        parts.append(f'<p class="cda-warning">{_text(_NO_TEXT)}</p>')
        return "".join(parts)
    parts.append('<p class="cda-note"><small>Texte extrait du document PDF ; la mise en page '
                 "d'origine n'est pas reproduite.</small></p>")  # fmt: skip
    budget = MAX_TEXT
    parts.append('<div class="cda-pdf-text">')
    for paragraph in paragraphs:
        if budget <= 0:
            parts.append('<p class="cda-note">[…] Texte tronqué à l\'affichage.</p>')
            break
        parts.append(f"<p>{_text(paragraph[:budget])}</p>")
        budget -= len(paragraph)
    parts.append("</div>")
    return "".join(parts)


def _local_or_web_url(url: str | None) -> str | None:
    """The caller's link to the PDF: a relative URL or an http(s) one."""
    if not url:
        return None
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return None
    return url if scheme in {"", "http", "https"} else None


def _plain_body(data: bytes | None) -> str:
    if data is None:
        return f'<p class="cda-warning">{_text(_NO_TEXT)}</p>'
    try:
        text = data[: MAX_TEXT * 4].decode("utf-8")
    except UnicodeDecodeError:
        text = data[: MAX_TEXT * 4].decode("cp1252", errors="replace")
    text = _clean(text)
    note = ""
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT]
        note = '<p class="cda-note">[…] Texte tronqué à l\'affichage.</p>'
    return f'<pre class="cda-plain">{_text(text)}</pre>{note}'


def _pdf_bytes(text: etree._Element) -> bytes | None:
    if _media_type(text) != "application/pdf":
        return None
    data = _payload(text)
    return data if data and b"%PDF-" in data[:1024] else None


def _body(root: etree._Element, pdf_url: str | None) -> str:
    structured = root.find("h:component/h:structuredBody", NS)
    if structured is not None:
        return _structured(structured)
    text = _body_text(root)
    if text is None:
        return '<p class="cda-note">Le document ne contient pas de compte rendu.</p>'
    media_type = _media_type(text)
    if media_type == "application/pdf":
        return _pdf_body(_pdf_bytes(text), pdf_url)
    if media_type == "text/plain":
        return _plain_body(_payload(text))
    return f'<p class="cda-note">Format non affichable : {_text(media_type)}</p>'


# --- API -------------------------------------------------------------------------------------


def _parse(cda: bytes) -> etree._Element:
    if len(cda) > MAX_CDA_BYTES:
        raise InvalidInput(f"the CDA is {len(cda)} bytes, more than {MAX_CDA_BYTES}")
    return parse_xml(cda)


def report_html(cda: bytes, *, pdf_url: str | None = None) -> str:
    """The report as an HTML fragment (an ``<article>``), in French; everything escaped.

    ``pdf_url`` (relative or http(s)) adds a link to the original PDF when the body is one.
    Raises :class:`InvalidInput` (:class:`~drimbox.adapters.hl7.errors.MalformedCda`) for
    anything but a well-formed CDA without DTD.
    """
    root = _parse(cda)
    return (
        '<article class="cda-report" lang="fr">'
        + _header(root)
        + f'<div class="cda-body">{_body(root, pdf_url)}</div>'
        + "</article>"
    )


def report_pdf(cda: bytes) -> bytes | None:
    """The PDF embedded in ``nonXMLBody`` (base64, maybe compressed), None if there is none.

    Only bytes that start like a PDF (``%PDF-`` in the first KiB) are returned. Raises
    :class:`InvalidInput` for a malformed CDA, as :func:`report_html`.
    """
    text = _body_text(_parse(cda))
    return _pdf_bytes(text) if text is not None else None
