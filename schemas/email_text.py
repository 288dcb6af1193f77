"""Email noise in ticket bodies: quoted replies, forwarded headers, signatures, disclaimers.

Owns `strip_email_noise`, the pure function that turns an email-sourced ticket body
(Zendesk email channel, ServiceNow inbound email) into the part a person wrote for this
ticket. `Ticket.text()` applies it, so the expert and every builder that reads
`Ticket.text()` see the same cleaned text; the published ticket keeps its raw body. It does
no I/O and must never decide anything about routing.

Conservative by construction: every rule removes only lines that match an explicit email
convention (an "On ... wrote:" line with its quoted block, "-----Original Message-----", an
Outlook From/Sent/To header block, a forward header, "-- ", a closing followed only by
signature-like lines, a confidentiality disclaimer, "Sent from my iPhone"). A rule whose
result would be blank is not applied, rules are applied until none changes the text (so the
function is idempotent), and rules only remove text (so the result is never longer).
"""

from __future__ import annotations

import re
from collections.abc import Callable

Lines = list[str]
Rule = Callable[[Lines], Lines | None]

# "On Mon, Jan 5, 2026 at 10:02 AM Anna <anna@example.com> wrote:" and its translations.
_ATTRIBUTION = re.compile(
    r"^\s*(?:On\s.+\b(?:wrote|writes)|Am\s.+\bschrieb\b.*|Le\s.+\ba\s+écrit|El\s.+\bescribió)"
    r"\s*:\s*$",
    re.IGNORECASE,
)
_ORIGINAL_MESSAGE = re.compile(
    r"^\s*-{2,}\s*(?:Original Message|Ursprüngliche Nachricht|Message d'origine|"
    r"Mensaje original|Messaggio originale)\s*-{2,}\s*$",
    re.IGNORECASE,
)
_ZENDESK_REPLY_LINE = re.compile(r"^\s*##-.*\babove this line\b.*-##\s*$", re.IGNORECASE)
_FORWARD_MARKER = re.compile(
    r"^\s*(?:-{2,}\s*(?:Forwarded message|Weitergeleitete Nachricht|Message transféré|"
    r"Mensaje reenviado)\s*-{2,}|Begin forwarded message:)\s*$",
    re.IGNORECASE,
)
_HEADER_FROM = re.compile(r"^\s*\*?(?:From|Von|De)\s*:\*?\s*\S", re.IGNORECASE)
_HEADER_OTHER = re.compile(
    r"^\s*\*?(Sent|Date|To|Cc|Subject|Gesendet|Datum|An|Betreff|Envoyé|À|Objet|Enviado|"
    r"Fecha|Para|Asunto)\s*:\*?",
    re.IGNORECASE,
)
_HEADER_SUBJECT_FORWARD = re.compile(
    r"^\s*\*?(?:Subject|Betreff|Objet|Asunto)\s*:\*?\s*(?:FW|FWD|WG|TR|RV)\s*:", re.IGNORECASE
)
_OUTLOOK_SEPARATOR = re.compile(r"^\s*_{8,}\s*$")
_MOBILE_FOOTER = re.compile(
    r"^\s*(?:Sent from my \S.{0,40}|Sent from (?:Mail|Outlook|Yahoo Mail) for \S.{0,30}|"
    r"Get Outlook for (?:iOS|Android)|Von meinem \S.{0,30} gesendet|Envoyé de mon \S.{0,30}|"
    r"Enviado desde mi \S.{0,30})\s*$",
    re.IGNORECASE,
)
_SERVICENOW_WATERMARK = re.compile(r"^\s*Ref:MSG\d+\s*$")
_CONFIDENTIAL = re.compile(
    r"\b(?:confidential|privileged|vertraulich\w*|confidentiel\w*|confidencial\w*)\b",
    re.IGNORECASE,
)
_NOT_FOR_YOU = re.compile(
    r"intended recipient|in error|notify the sender|strictly prohibited|unauthori[sz]ed|"
    r"destinataire|Empfänger|destinatario",
    re.IGNORECASE,
)
_CLOSING = re.compile(
    r"^\s*(?:(?:best|kind|warm|warmest|many)\s+(?:regards|thanks|wishes)|regards|thanks|"
    r"thank you|thanks in advance|many thanks|thx|cheers|best|br|sincerely|yours sincerely|"
    r"mfg|mit freundlichen grüßen|viele grüße|beste grüße|grüße|gruß|danke|cordialement|"
    r"bien cordialement|salutations|saludos|un saludo|atentamente|gracias)"
    r"\s*[,.!]*\s*$",
    re.IGNORECASE,
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_PHONE = re.compile(
    r"(?:(?<![\w+])\+\d[\d\s()./-]{6,}\d)|"
    r"(?:\b(?:tel|phone|mobile|mob|cell|fax|direct|m|t|p|f)\b\.?\s*:?\s*\(?\+?\d[\d\s()./-]{5,}\d)",
    re.IGNORECASE,
)
_NAME_CONNECTORS = frozenset(
    {"of", "and", "&", "de", "la", "le", "van", "von", "der", "den", "da", "di", "du", "y"}
)
# Real attributions are well under this; longer lines are not tried (bounded regex work).
_ATTRIBUTION_MAX_CHARS = 300
_SIGNATURE_LINE_MAX_CHARS = 120
_SIGNATURE_MAX_LINES = 8
_DELIMITED_SIGNATURE_MAX_LINES = 15
_DISCLAIMER_MAX_LINES = 12
_HEADER_BLOCK_LINES = 6
_BLANK_RUN = re.compile(r"\n[ \t\r]*\n(?:[ \t\r]*\n)+")


def strip_email_noise(text: str) -> str:
    """The part of a ticket body that its sender wrote for this ticket.

    Drops quoted reply history, forwarded-message headers (the forwarded text stays),
    signatures, confidentiality disclaimers and mobile footers. Text that matches no email
    convention is returned unchanged, byte for byte.

    Args:
        text: a ticket body (or any ticket text) as received.

    Returns:
        The cleaned text: never longer than `text`, never blank when `text` has visible
        characters (a rule that would remove everything is not applied), and
        `strip_email_noise(strip_email_noise(t)) == strip_email_noise(t)`.
    """
    current = text
    while True:
        for rule in _RULES:
            kept = rule(current.split("\n"))
            if kept is None:
                continue
            candidate = _tidy("\n".join(kept))
            if candidate.strip() and len(candidate) < len(current):
                current = candidate
                break
        else:
            return current


def _tidy(text: str) -> str:
    return _BLANK_RUN.sub("\n\n", text).strip()


def _is_blank(line: str) -> bool:
    return not line.strip()


def _attribution_at(lines: Lines, i: int) -> int:
    """How many lines (1 or 2) an "On ... wrote:" attribution starting at `i` spans, or 0.

    The attribution must carry a date, a time or an address (a digit or an @), so that a
    sentence such as "On startup the client wrote:" is not taken for one.
    """
    line = lines[i]
    if len(line) > _ATTRIBUTION_MAX_CHARS or _is_blank(line):
        return 0
    if _ATTRIBUTION.match(line) and re.search(r"[\d@]", line):
        return 1
    if i + 1 < len(lines) and not _is_blank(lines[i + 1]):
        joined = f"{line.rstrip()} {lines[i + 1].strip()}"
        if len(joined) <= _ATTRIBUTION_MAX_CHARS and _ATTRIBUTION.match(joined):
            return 2 if re.search(r"[\d@]", joined) else 0
    return 0


def _next_nonblank(lines: Lines, start: int) -> int:
    j = start
    while j < len(lines) and _is_blank(lines[j]):
        j += 1
    return j


def _header_block_end(lines: Lines, start: int) -> int:
    """The index after the header lines (From/Sent/To/Cc/Subject ...) that follow `start`."""
    j = start + 1
    while j < len(lines) and j <= start + _HEADER_BLOCK_LINES and _HEADER_OTHER.match(lines[j]):
        j += 1
    return j


def _is_outlook_header(lines: Lines, i: int) -> bool:
    if not _HEADER_FROM.match(lines[i]):
        return False
    keys = {
        m.group(1).lower()
        for line in lines[i + 1 : _header_block_end(lines, i)]
        if (m := _HEADER_OTHER.match(line))
    }
    return len(keys) >= 2


def _is_forward_header(lines: Lines, i: int) -> bool:
    """The header block at `i` belongs to a forwarded message (a forward marker above it,
    or an FW:/Fwd: subject), whose text is the ticket's substance, not history."""
    above = i - 1
    while above >= 0 and _is_blank(lines[above]):
        above -= 1
    if above >= 0 and _FORWARD_MARKER.match(lines[above]):
        return True
    block = lines[i : _header_block_end(lines, i)]
    return any(_HEADER_SUBJECT_FORWARD.match(line) for line in block)


def _separator_above(lines: Lines, i: int) -> int:
    """`i`, or the index of an Outlook "______" separator just above it (blank lines between)."""
    j = i - 1
    while j >= 0 and _is_blank(lines[j]):
        j -= 1
    return j if j >= 0 and _OUTLOOK_SEPARATOR.match(lines[j]) else i


# ---------------------------------------------------------------------------- rules


def _cut_reply_history(lines: Lines) -> Lines | None:
    """Everything from the first reply-history marker on: "-----Original Message-----",
    Zendesk's "##- reply above this line -##", an Outlook reply header block, or an
    "On ... wrote:" line that no quoted ("> ") block follows."""
    for i, line in enumerate(lines):
        if _ORIGINAL_MESSAGE.match(line) or _ZENDESK_REPLY_LINE.match(line):
            return lines[:i]
        if _is_outlook_header(lines, i) and not _is_forward_header(lines, i):
            return lines[: _separator_above(lines, i)]
        span = _attribution_at(lines, i)
        if span:
            nxt = _next_nonblank(lines, i + span)
            if nxt >= len(lines) or not lines[nxt].lstrip().startswith(">"):
                return lines[:i]
    return None


def _drop_attributed_quotes(lines: Lines) -> Lines | None:
    """From the first "On ... wrote:" line that a quoted ("> ") block follows: that line
    and every quoted line after it. Replies written between quoted lines stay; quoted
    lines with no attribution above them are left alone."""
    for i in range(len(lines)):
        span = _attribution_at(lines, i)
        if not span:
            continue
        nxt = _next_nonblank(lines, i + span)
        if nxt < len(lines) and lines[nxt].lstrip().startswith(">"):
            rest = [line for line in lines[i + span :] if not line.lstrip().startswith(">")]
            return lines[:i] + rest
    return None


def _drop_forward_headers(lines: Lines) -> Lines | None:
    """The header lines of forwarded messages; the forwarded text itself stays."""
    drop: set[int] = set()
    for i, line in enumerate(lines):
        if _FORWARD_MARKER.match(line):
            start = _next_nonblank(lines, i + 1)
            drop.add(i)
            if start < len(lines) and _HEADER_FROM.match(lines[start]):
                drop.update(range(start, _header_block_end(lines, start)))
        elif _is_outlook_header(lines, i) and _is_forward_header(lines, i):
            drop.update(range(_separator_above(lines, i), _header_block_end(lines, i)))
    if not drop:
        return None
    return [line for i, line in enumerate(lines) if i not in drop]


def _drop_footer_lines(lines: Lines) -> Lines | None:
    """ "Sent from my iPhone" and its kin, and ServiceNow's "Ref:MSG..." watermark."""
    kept = [
        line
        for line in lines
        if not (_MOBILE_FOOTER.match(line) or _SERVICENOW_WATERMARK.match(line))
    ]
    return kept if len(kept) < len(lines) else None


def _is_disclaimer_at(lines: Lines, i: int) -> bool:
    if not _CONFIDENTIAL.search(lines[i]):
        return False
    return bool(_NOT_FOR_YOU.search(" ".join(lines[i : i + 4])))


def _cut_disclaimer(lines: Lines) -> Lines | None:
    """A confidentiality disclaimer (confidential/privileged + intended recipient/in error/
    notify the sender ...) near the end, and what follows it."""
    after = _nonblank_after(lines)
    for i in range(1, len(lines)):
        if after[i] < _DISCLAIMER_MAX_LINES and _is_disclaimer_at(lines, i):
            return lines[:i]
    return None


def _is_contact(line: str) -> bool:
    return bool(_EMAIL.search(line) or _PHONE.search(line) or _URL.search(line))


def _is_title_case(line: str) -> bool:
    """A name, job title or department: a few words, each capitalised, no sentence end."""
    words = line.split()
    if not 1 <= len(words) <= 7 or line.rstrip()[-1] in ".?!:;":
        return False
    for word in words:
        letters = [c for c in word if c.isalpha()]
        if letters and not letters[0].isupper() and word.lower() not in _NAME_CONNECTORS:
            return False
    return True


def _is_signature_line(line: str) -> bool:
    stripped = line.strip()
    if not stripped:
        return True
    if len(stripped) > _SIGNATURE_LINE_MAX_CHARS:
        return False
    return bool(_MOBILE_FOOTER.match(stripped)) or _is_contact(stripped) or _is_title_case(stripped)


def _signature_suffix_start(lines: Lines) -> int:
    """The index where the trailing run of signature-like lines begins."""
    j = len(lines)
    while j > 0 and _is_signature_line(lines[j - 1]):
        j -= 1
    return j


def _nonblank_count(lines: Lines) -> int:
    return sum(1 for line in lines if not _is_blank(line))


def _nonblank_after(lines: Lines) -> list[int]:
    """For each index, how many non-blank lines follow it."""
    after = [0] * len(lines)
    count = 0
    for i in range(len(lines) - 1, -1, -1):
        after[i] = count
        count += not _is_blank(lines[i])
    return after


def _cut_signature(lines: Lines) -> Lines | None:
    """A signature at the end: from "-- " (RFC 3676), from "--" or a closing ("Regards,",
    "Thanks") followed only by signature-like lines, or a trailing block of name/title
    lines that holds a phone number or an email address."""
    suffix = _signature_suffix_start(lines)
    after = _nonblank_after(lines)
    for i, line in enumerate(lines):
        if line.rstrip("\r") == "-- " and after[i] <= _DELIMITED_SIGNATURE_MAX_LINES:
            return lines[:i]
        is_marker = line.strip() == "--" or _CLOSING.match(line)
        if is_marker and i + 1 >= suffix and after[i] <= _SIGNATURE_MAX_LINES:
            return lines[:i]
    block = lines[suffix:]
    if 0 < _nonblank_count(block) <= 5 and any(_is_contact(line) for line in block):
        return lines[:suffix]
    return None


_RULES: tuple[Rule, ...] = (
    _cut_reply_history,
    _drop_attributed_quotes,
    _drop_forward_headers,
    _drop_footer_lines,
    _cut_disclaimer,
    _cut_signature,
)
