"""Pathology report cleaning: normalise, strip administrative noise, repair OCR breakage, split into sections.

:func:`clean_report` runs, in order:

1. **Normalisation** -- Unicode NFKC, ``\\r\\n`` -> ``\\n``, soft hyphens / zero-width characters / control
   characters removed, tabs and runs of spaces collapsed to one space.
2. **Hyphenation repair** -- a word hyphenated across a line break is re-joined: without the hyphen
   ("carci-\\nnoma" -> "carcinoma") when the joined word is known or the fragments are not words themselves;
   with the hyphen when both halves are words or the second half is capitalised or numeric
   ("well-\\ndifferentiated", "Vasquez-\\nOrr", "Ki-\\n67").
3. **Noise removal** (line by line) -- separator rules, page markers ("Page 1 of 2", "- 2 -"), report headers
   (institution, department, "SURGICAL PATHOLOGY REPORT"), administrative fields (Patient:, MRN:, DOB:,
   Accession:, Address:, physicians ...), signature lines ("Electronically signed by ...", "..., MD"),
   footers, and boilerplate disclaimer sentences (CLIA/FDA/confidentiality wording).
4. **Section splitting** on header lines with common variants ("FINAL DIAGNOSIS", "DIAGNOSIS:",
   "MICROSCOPIC DESCRIPTION", "GROSS DESCRIPTION", "COMMENT(S)", "CLINICAL HISTORY/INFORMATION", ...) into the
   canonical keys of :data:`SECTION_KEYS`; text before the first header and under unrecognised headers goes to
   ``other``.
5. **Paragraph unwrapping and stray-space repair** -- wrapped lines are joined; a word broken by a stray space
   ("carci noma") is joined only when the joined form is in the embedded vocabulary and the two pieces are not
   both real words ("a typical" is never joined into "atypical").

Every step is linear in the text's length: no pattern re-scans from a later start what it has already scanned,
and disclaimer sentences are found by merging one pass over the sentence ends with one over the disclaimer
phrases, so a report without full stops, or on one long line, costs what its size says.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from pathmm_pipeline.reports.vocab import COMMON_WORDS, KNOWN_WORDS

#: the default limit on a report's length in characters (``reports.max_chars``); a longer file is refused
MAX_REPORT_CHARS = 1_000_000

SECTION_KEYS: tuple[str, ...] = ("diagnosis", "microscopic", "gross", "comment", "clinical_history", "other")

_SECTION_PATTERNS: tuple[tuple[str, str], ...] = (
    ("diagnosis", r"(?:final\s+|pathologic(?:al)?\s+|surgical\s+pathology\s+|histopathologic(?:al)?\s+)*"
                  r"(?:diagnos[ie]s|dx)(?:\s+summary)?"),
    ("microscopic", r"microscop(?:ic|y)(?:\s+(?:description|examination|findings|report))?|histology|"
                    r"histopathology"),
    ("gross", r"gross(?:\s+(?:description|examination|findings))?|macroscop(?:ic|y)(?:\s+(?:description|"
              r"examination|findings))?"),
    ("comment", r"comment(?:s|\(s\))?|note(?:s)?|interpretation"),
    ("clinical_history", r"clinical\s+(?:history|information|data|notes?|details|indications?)"
                         r"(?:\s*/\s*(?:history|information|data|indications?))?|history(?:\s+of\s+present\s+"
                         r"illness)?|pertinent\s+history|indications?(?:\s+for\s+(?:procedure|biopsy))?|"
                         r"reason\s+for\s+(?:referral|examination)"),
    ("other", r"specimens?(?:\s+(?:submitted|received|source))?|source\s+of\s+specimen|addend(?:um|a)|synoptic"
              r"(?:\s+report)?|immunohistochemistry|immunohistochemical\s+stains?|special\s+stains?|"
              r"procedure|intraoperative\s+consultation|frozen\s+section(?:\s+diagnosis)?|molecular"
              r"(?:\s+(?:studies|testing|results))?|ancillary\s+studies|cancer\s+case\s+summary|"
              r"tumou?r\s+summary|staging"),
)
# a header: alone on its line (optionally ending with ':'), or at the line start followed by ':' and text
_HEADER_RE = re.compile(
    r"^[ ]*(?P<head>" + "|".join(f"(?P<{key if key != 'other' else 'other_'}>{pat})" for key, pat in _SECTION_PATTERNS)
    + r")[ ]*(?:(?P<colon>[:\-\u2013])[ ]*(?P<rest>.*)|(?P<alone>$))",
    re.IGNORECASE,
)

_SEPARATOR_RE = re.compile(r"^[ ]*[-=_*~#.+|]{3,}[ ]*$")
_PAGE_RE = re.compile(r"(?i)\bpage[ ]*\d+[ ]*(?:of|/)[ ]*\d+\b|^[ ]*-[ ]*\d+[ ]*-[ ]*$|\bpage[ ]+\d+[ ]*$")
_TITLE_LINE_RE = re.compile(
    r"(?i)^[ ]*(?:(?:surgical|anatomic|cytology|final|amended|corrected)[ ]+)*(?:pathology|cytopathology|"
    r"histopathology|consultation)[ ]+report[ ]*$|"
    # the earliest "pathology|laboratory|medicine" is committed to (an atomic group): trying every later one
    # again was quadratic; on a line (no newline) the tail below accepts exactly what "[ ]*$", "[ ]{2,}.*$" and
    # "[ ]+(?:tel|phone|fax)\b.*$" did
    r"^[ ]*(?:department|division|laboratory|institute|dept\.?)[ ]+of(?>[ ]+[A-Za-z ,&/-]*?(?:pathology|"
    r"laboratory|medicine))[A-Za-z ,&/-]*?(?:$|[ ]{2}|[ ](?:tel|phone|fax)\b)")
_INSTITUTION_RE = re.compile(
    r"(?i)^[ ]*(?:[A-Z][\w.'&-]*[ ]+){0,6}(?:medical[ ]+cent(?:er|re)|hospital|university[ ]+hospital|"
    r"health(?:care)?[ ]+system|clinic|cancer[ ]+cent(?:er|re)|laborator(?:y|ies))[ ]*(?:[-,].*)?$")
_ADMIN_FIELD_RE = re.compile(
    r"(?i)^[ ]*(?:patient(?:[ ]+name)?|name|pt|mrn|mr[ ]*#|medical[ ]+record(?:[ ]+(?:number|no\.?|#))?|dob|"
    r"date[ ]+of[ ]+birth|d\.o\.b\.|accession(?:[ ]+(?:number|no\.?|#))?|case(?:[ ]+(?:number|no\.?|#))|"
    r"collected|received|reported|date[ ]+(?:collected|received|reported|of[ ]+(?:procedure|service|"
    r"surgery))|address|phone|tel|fax|(?:submitting|ordering|referring|attending)[ ]+(?:physician|doctor|"
    r"clinician|provider)|physician|surgeon|copy[ ]+to|cc|location|account(?:[ ]+(?:number|no\.?|#))?|"
    r"encounter|visit|room|bed|ward|insurance|ssn|social[ ]+security(?:[ ]+number)?)[ ]*[:#]")
_SIGNATURE_RE = re.compile(
    r"(?i)^[ ]*(?:(?:report[ ]+)?(?:electronically[ ]+)?(?:signed|verified|authenticated|finali[sz]ed|"
    r"approved)(?:[ ]+out)?[ ]+(?:by|on)\b|(?:dictated|transcribed|prepared|reviewed|grossed)[ ]+by\b|"
    r"(?:attending[ ]+|staff[ ]+|consulting[ ]+)?pathologist[ ]*:|resident[ ]*:|pathologists?'?[ ]+assistant"
    r"[ ]*:|i[ ]+(?:have[ ]+)?personally[ ]+reviewed|\*{2,}[ ]*electronically)")
_CREDENTIAL_LINE_RE = re.compile(
    r"^[ ]*(?:Dr\.?[ ]+)?(?:\[NAME\]|[A-Z][A-Za-z.'-]+(?:[ ]+[A-Z][A-Za-z.'-]+){0,3}),?[ ]+"
    r"(?:M\.?D\.?|D\.?O\.?|Ph\.?D\.?|MBBS|FRCPath|FCAP)(?:[ ,]+(?:M\.?D\.?|Ph\.?D\.?|FCAP|FRCPath|FRCPC))*[ ]*$")
# a period followed by a space or the end ends a sentence, unless it follows an initial ("U.S.")
_SENTENCE_END_RE = re.compile(r"(?<!\b[A-Z])\.(?=\s|$)")
# a sentence holding one of these is boilerplate (no period inside any of them: each lies within one sentence)
_DISCLAIMER_KEY_RE = re.compile(
    r"(?i:this[ ]+test[ ]+was[ ]+developed|performance[ ]+"
    r"characteristics[ ]+(?:were|have[ ]+been)[ ]+determined|has[ ]+not[ ]+been[ ]+(?:cleared|approved)"
    r"(?:[ ]+or[ ]+(?:cleared|approved))?[ ]+by|food[ ]+and"
    r"[ ]+drug[ ]+administration|clinical[ ]+laboratory[ ]+improvement[ ]+amendments|\bCLIA\b|"
    r"confidential(?:ity)?[ ]+(?:notice|information)|intended[ ]+(?:only|solely)[ ]+for[ ]+the[ ]+use|"
    r"if[ ]+you[ ]+have[ ]+received[ ]+this[ ]+(?:report|document|communication)[ ]+in[ ]+error|"
    r"unauthori[sz]ed[ ]+(?:review|use|disclosure)|this[ ]+report[ ]+(?:has[ ]+been|was)[ ]+"
    r"electronically[ ]+signed|the[ ]+(?:above|following)[ ]+diagnosis[ ]+(?:is|was)[ ]+based[ ]+on[ ]+"
    r"(?:my|the)[ ]+personal[ ]+(?:review|examination))")

_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u2060\ufeff"), None)
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                         "\u2014": "-", "\u2212": "-", "\u2022": "-"})
_WORD = r"[A-Za-z]+"
# starts only at a word's first letter: a start inside a long run of letters re-scanned the run (quadratic)
_HYPHEN_BREAK_RE = re.compile(rf"(?<![A-Za-z])(?P<a>{_WORD})-[ ]*\n[ ]*(?P<b>[A-Za-z0-9]+)")
_LIST_ITEM_RE = re.compile(r"^(?:[-*+]|\(?[A-Za-z0-9]{1,2}[.)])[ ]+")


@dataclass(frozen=True)
class CleanReport:
    """A cleaned report: the full cleaned text and its sections (every key of :data:`SECTION_KEYS`).

    ``removed`` counts the lines or sentences dropped per kind (no text is kept: it may hold identifiers).
    """

    text: str
    sections: dict[str, str]
    removed: dict[str, int] = field(default_factory=dict)


def normalize(text: str) -> str:
    """NFKC, unified newlines, invisible and control characters removed, spaces collapsed, lines stripped."""
    text = unicodedata.normalize("NFKC", text).translate(_INVISIBLE).translate(_QUOTES)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n").replace("\v", "\n")
    text = "".join(ch if ch in "\n\t" or unicodedata.category(ch)[0] != "C" else " " for ch in text)
    text = re.sub(r"[ \t]+", " ", text)
    lines = [line.strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _is_word(token: str) -> bool:
    return token.lower() in KNOWN_WORDS


def repair_hyphenation(text: str) -> str:
    """Re-join words hyphenated across a line break (see the module docstring for the rule)."""

    def join(match: re.Match[str]) -> str:
        a, b = match["a"], match["b"]
        if (a + b).lower() in KNOWN_WORDS:
            return a + b
        if b[0].isdigit() or b[0].isupper() or (_is_word(a) and _is_word(b)):
            return f"{a}-{b}"
        return a + b

    return _HYPHEN_BREAK_RE.sub(join, text)


def repair_split_words(text: str) -> str:
    """Join a word broken by a stray space ("carci noma"), only into a known word and never two real words.

    Pairs and triples of adjacent letter tokens are tried; the pieces keep their case ("Adeno carcinoma" ->
    "Adenocarcinoma").
    """
    tokens = re.split(r"([A-Za-z]+)", text)
    # tokens alternate: separator, word, separator, word, ... ; only single-space separators may be removed
    out: list[str] = []
    i = 0
    while i < len(tokens):
        piece = tokens[i]
        if i % 2 == 1:
            joined = False
            for span in (3, 2):
                last = i + 2 * (span - 1)
                if last >= len(tokens):
                    continue
                words = [tokens[i + 2 * k] for k in range(span)]
                seps = [tokens[i + 2 * k + 1] for k in range(span - 1)]
                if any(sep != " " for sep in seps):
                    continue
                candidate = "".join(words)
                if candidate.lower() not in KNOWN_WORDS:
                    continue
                if sum(w.lower() in KNOWN_WORDS or (w.lower() in COMMON_WORDS) or len(w) == 1 and w.lower() in "ai"
                       for w in words) == span:
                    continue  # all pieces are real words: leave them alone
                if any(w[0].isupper() for w in words[1:]) and not all(w.isupper() for w in words):
                    continue  # "Adeno Carcinoma"-like title case is two words, not breakage
                out.append(candidate)
                i = last + 1
                joined = True
                break
            if joined:
                continue
        out.append(piece)
        i += 1
    return "".join(out)


def _classify_line(line: str) -> str | None:
    """The noise kind of a line ('separator', 'page', 'header', 'admin', 'signature'), or None to keep it."""
    if not line:
        return None
    if _SEPARATOR_RE.match(line):
        return "separator"
    if _SIGNATURE_RE.match(line) or _CREDENTIAL_LINE_RE.match(line):
        return "signature"
    if _PAGE_RE.search(line):
        rest = _PAGE_RE.sub(" ", line).strip(" -|,;")
        if not rest or _INSTITUTION_RE.match(rest) or re.search(r"(?i)\b(accession|case|report|mrn|printed)\b", rest):
            return "page"
    if _TITLE_LINE_RE.match(line):
        return "header"
    if _INSTITUTION_RE.match(line) and not _HEADER_RE.match(line) and len(line.split()) <= 12:
        return "header"
    if _ADMIN_FIELD_RE.match(line):
        return "admin"
    return None


def _section_key(match: re.Match[str]) -> str:
    for key in SECTION_KEYS:
        group = "other_" if key == "other" else key
        if match.group(group):
            return key
    return "other"  # pragma: no cover


def _unwrap(block: str) -> str:
    """Join wrapped lines into paragraphs; blank lines separate paragraphs and list items stay on their line."""
    paragraphs: list[str] = []
    for para in re.split(r"\n\s*\n", block):
        lines = [ln.strip() for ln in para.split("\n") if ln.strip()]
        merged: list[list[str]] = []  # the lines of each paragraph line, joined once (not re-copied per line)
        for ln in lines:
            if merged and not _LIST_ITEM_RE.match(ln) and not merged[-1][-1].endswith(":"):
                merged[-1].append(ln)
            else:
                merged.append([ln])
        if merged:
            paragraphs.append("\n".join(" ".join(pieces) for pieces in merged))
    return "\n\n".join(paragraphs)


def remove_disclaimers(text: str) -> tuple[str, int]:
    """Replace each sentence holding disclaimer wording by a space; returns the text and the sentences removed.

    Linear: the sentence ends and the disclaimer phrases are each found in one pass, then merged.
    """
    keys = (m.start() for m in _DISCLAIMER_KEY_RE.finditer(text))
    key = next(keys, None)
    pieces: list[str] = []
    start = removed = 0
    for end in [m.end() for m in _SENTENCE_END_RE.finditer(text)] + [len(text)]:
        while key is not None and key < start:
            key = next(keys, None)
        if key is not None and key < end:  # the sentence text[start:end] holds a disclaimer phrase
            pieces.append(" ")
            removed += 1
        else:
            pieces.append(text[start:end])
        start = end
    return "".join(pieces), removed


def _finish(block: str, removed: dict[str, int]) -> str:
    block = _unwrap(block)
    block, n = remove_disclaimers(block)
    if n:
        removed["disclaimer"] = removed.get("disclaimer", 0) + n
    block = repair_split_words(block)
    block = re.sub(r"[ ]{2,}", " ", block)
    block = re.sub(r" +([,.;:])", r"\1", block)
    return "\n".join(ln.strip() for ln in block.split("\n")).strip()


def split_sections(text: str) -> dict[str, str]:
    """Split already-clean text into the canonical sections (every key present, '' when absent)."""
    parts: dict[str, list[str]] = {key: [] for key in SECTION_KEYS}
    current = "other"
    buffer: list[str] = []

    def flush() -> None:
        body = "\n".join(buffer).strip()
        if body:
            parts[current].append(body)
        buffer.clear()

    for line in text.split("\n"):
        match = _HEADER_RE.match(line)
        if match and (match["alone"] is not None or match["colon"]) and _looks_like_header(line, match):
            flush()
            current = _section_key(match)
            rest = (match["rest"] or "").strip()
            if current == "other":
                buffer.append(f"{match['head'].strip()}: {rest}".strip() if rest else f"{match['head'].strip()}:")
            elif rest:
                buffer.append(rest)
            continue
        buffer.append(line)
    flush()
    return {key: "\n\n".join(chunks) for key, chunks in parts.items()}


def _looks_like_header(line: str, match: re.Match[str]) -> bool:
    """A bare word at a line start ("Note that ...", "History of ...") is prose, not a header."""
    if match["colon"]:
        if match["colon"] != ":" and not match["head"].isupper():
            return False  # "Gross - tan" is a header only in capitals
        return True
    head = match["head"].strip()
    return head.isupper() or len(line.strip()) == len(head) and head[:1].isupper()


def clean_report(text: str) -> CleanReport:
    """Clean one report (see the module docstring); returns the text and its sections.

    ``text`` of the result is the sections joined in canonical order, each under an upper-case header, so
    :func:`split_sections` of it gives the same sections back.
    """
    removed: dict[str, int] = {}
    text = repair_hyphenation(normalize(text))
    kept: list[str] = []
    for line in text.split("\n"):
        kind = _classify_line(line)
        if kind is None:
            # a page marker inside a line of text: drop only the marker
            kept.append(_PAGE_RE.sub("", line).rstrip() if _PAGE_RE.search(line) else line)
            if kept[-1] != line:
                removed["page"] = removed.get("page", 0) + 1
        else:
            removed[kind] = removed.get(kind, 0) + 1
            kept.append("")  # keep paragraph boundaries
    raw_sections = split_sections("\n".join(kept))
    sections = {key: _finish(body, removed) for key, body in raw_sections.items()}
    return CleanReport(text=join_sections(sections), sections=sections, removed=removed)


_SECTION_TITLES = {"clinical_history": "CLINICAL HISTORY", "gross": "GROSS DESCRIPTION",
                   "microscopic": "MICROSCOPIC DESCRIPTION", "diagnosis": "DIAGNOSIS", "comment": "COMMENT",
                   "other": ""}
_TEXT_ORDER = ("other", "clinical_history", "gross", "microscopic", "diagnosis", "comment")


def join_sections(sections: dict[str, str]) -> str:
    """The sections as one text in reading order, each under its canonical header ('other' first, untitled)."""
    blocks = []
    for key in _TEXT_ORDER:
        body = sections.get(key, "").strip()
        if body:
            title = _SECTION_TITLES[key]
            blocks.append(f"{title}:\n{body}" if title else body)
    return "\n\n".join(blocks)
