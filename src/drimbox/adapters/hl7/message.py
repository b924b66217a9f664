"""HL7 v2 "ER7" syntax: delimiters, escape sequences, segments, typed access to components.

A deliberately small reader instead of a general HL7 library: we take a handful of message
types, need precise error locations for the ACK, and must decode bytes according to MSH-18
(CI-SIS messages are UTF-8). The ``hl7`` package stays a test dependency, used as an
independent implementation to cross-check this one.

Positions are 1-based as in the HL7 tables (PID-3.4.2 is ``value(3, 4, 2)``). For MSH, field 1
is the field separator and field 2 the encoding characters, so numbering matches MSH-n.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from drimbox.adapters.hl7.errors import (
    Hl7Error,
    InvalidValue,
    Location,
    MalformedMessage,
    UnknownCode,
)

_SEGMENT_END = re.compile(r"\r\n|\r|\n")  # \r is standard; some interfaces add or use \n
_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")
# HL7 table 0211 (character sets) -> Python codec; empty MSH-18 means the sender's default,
# which CI-SIS fixes to UTF-8 (a superset of the HL7 default, ASCII).
CHARSETS = {
    "": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/15": "iso8859-15",
}


@dataclass(frozen=True, slots=True)
class Delimiters:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @classmethod
    def from_msh(cls, line: str) -> Delimiters:
        """Read MSH-1 and MSH-2; reject delimiters that are missing, repeated or alphanumeric."""
        if len(line) < 8 or not line.startswith("MSH"):
            raise MalformedMessage("the message does not start with an MSH segment",
                                   Location("MSH"))  # fmt: skip
        field = line[3]
        encoding = line[4:].split(field, 1)[0]
        chars = field + encoding[:4]
        if (
            len(encoding) < 4
            or len(set(chars)) != 5
            or any(c.isalnum() or c in "\r\n" for c in chars)
        ):
            raise MalformedMessage(
                f"MSH-1/MSH-2 {line[3:9]!r} are not five distinct delimiter characters",
                Location("MSH", 2),
            )
        return cls(field, encoding[0], encoding[1], encoding[2], encoding[3])

    @property
    def encoding_characters(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent

    def escape_text(self, text: str) -> str:
        """Escape delimiters and line breaks in our own free text (ACK reasons)."""
        e = self.escape
        out = text.replace(e, f"{e}E{e}")
        for char, code in ((self.field, "F"), (self.component, "S"), (self.subcomponent, "T"),
                           (self.repetition, "R")):  # fmt: skip
            out = out.replace(char, f"{e}{code}{e}")
        return out.replace("\r", f"{e}X0D{e}").replace("\n", f"{e}X0A{e}")

    def unescape(self, text: str, codec: str = "utf-8") -> str:
        """Resolve ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh..\\`` and drop formatting escapes."""
        e = self.escape
        if e not in text:
            return text
        simple = {"F": self.field, "S": self.component, "T": self.subcomponent,
                  "R": self.repetition, "E": e, ".br": "\n"}  # fmt: skip

        def resolve(match: re.Match[str]) -> str:
            body = match.group(1)
            if body in simple:
                return simple[body]
            if body[:1] == "X" and len(body) % 2 == 1:
                try:
                    return bytes.fromhex(body[1:]).decode(codec, errors="replace")
                except ValueError:
                    return match.group(0)
            if body in {"H", "N"} or body[:1] == "Z":  # highlighting, local escapes: no text
                return ""
            return match.group(0)

        pattern = re.escape(e) + "([^" + re.escape(e) + "]*)" + re.escape(e)
        return re.sub(pattern, resolve, text)


def _split(raw: str, separator: str, index: int) -> str:
    parts = raw.split(separator)
    return parts[index - 1] if 0 < index <= len(parts) else ""


class Segment:
    """One segment: its name and raw (still escaped) fields, indexed like the HL7 tables."""

    __slots__ = ("codec", "delimiters", "fields", "name", "sequence")

    def __init__(
        self, fields: list[str], delimiters: Delimiters, codec: str, sequence: int
    ) -> None:
        self.name = fields[0]
        self.fields = fields
        self.delimiters = delimiters
        self.codec = codec
        self.sequence = sequence
        """1-based rank of this segment among the message's segments of the same name."""

    def raw(self, field: int) -> str:
        return self.fields[field] if 0 < field < len(self.fields) else ""

    def repetitions(self, field: int) -> list[str]:
        raw = self.raw(field)
        if self.name == "MSH" and field <= 2:
            return [raw]
        return raw.split(self.delimiters.repetition) if raw else []

    def component(self, repetition: str, component: int = 1, sub: int = 1) -> str:
        """Unescaped component ``component.sub`` of one raw repetition."""
        d = self.delimiters
        return d.unescape(_split(_split(repetition, d.component, component), d.subcomponent, sub),
                          self.codec)  # fmt: skip

    def value(self, field: int, component: int = 1, sub: int = 1, rep: int = 1) -> str:
        """Unescaped ``field.component.sub`` of repetition ``rep`` (empty when absent)."""
        if self.name == "MSH" and field <= 2:
            return self.raw(field)
        reps = self.repetitions(field)
        return self.component(reps[rep - 1], component, sub) if 0 < rep <= len(reps) else ""

    def location(self, field: int = 0, component: int = 0) -> Location:
        return Location(self.name, field, component, self.sequence)


@dataclass(slots=True)
class Message:
    """A decoded message; ``charset_error`` says why MSH-18 could not be honoured.

    Character-set problems are reported, not raised, so that the caller can still read MSH
    and answer with a proper ACK.
    """

    delimiters: Delimiters
    codec: str
    segments: list[Segment]
    charset_error: Hl7Error | None = None

    def first(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    @classmethod
    def decode(cls, raw: bytes) -> Message:
        """Split ``raw`` into segments; never fails on the character set (``charset_error``)."""
        raw = raw.removeprefix(codecs.BOM_UTF8).lstrip(b"\r\n\t ")
        # MSH up to MSH-18 is ASCII in practice: read it byte-for-byte to learn the charset.
        first_line = _SEGMENT_END.split(raw[:4096].decode("latin-1"), maxsplit=1)[0]
        delimiters = Delimiters.from_msh(first_line)
        msh_fields = first_line.split(delimiters.field)  # MSH-n is msh_fields[n - 1]
        charset = msh_fields[17].split(delimiters.repetition)[0] if len(msh_fields) > 17 else ""
        problem: Hl7Error | None = None
        where = Location("MSH", 18)
        codec = CHARSETS.get(charset.strip().upper())
        if codec is None:
            codec = "utf-8"
            problem = UnknownCode(f"MSH-18 character set {charset[:40]!r} is not supported "
                                  f"(expected one of {sorted(CHARSETS)[1:]})", where)  # fmt: skip
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError as exc:
            problem = InvalidValue(f"the message is not valid {codec} (byte {exc.start})", where)
            text = raw.decode(codec, errors="replace")
        return cls(delimiters, codec, _segments(text, delimiters, codec), problem)


def _segments(text: str, delimiters: Delimiters, codec: str) -> list[Segment]:
    segments: list[Segment] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(_SEGMENT_END.split(text), start=1):
        if not line.strip():
            continue
        fields = line.split(delimiters.field)
        if _SEGMENT_NAME.fullmatch(fields[0]) is None:
            raise MalformedMessage(f"line {n} does not start with a segment name: {line[:12]!r}",
                                   Location(fields[0][:3]))  # fmt: skip
        if fields[0] == "MSH":
            # MSH-1 is the field separator itself, so MSH-n is fields[n] after this insert.
            fields = ["MSH", delimiters.field, *fields[1:]]
        seen[fields[0]] = seen.get(fields[0], 0) + 1
        segments.append(Segment(fields, delimiters, codec, seen[fields[0]]))
    if not segments or segments[0].name != "MSH" or seen["MSH"] != 1:
        raise MalformedMessage("a message has exactly one MSH segment, first", Location("MSH"))
    return segments
