"""Rule-based de-identification of pathology reports with typed tags.

:func:`deidentify` finds protected health information (PHI) and replaces each span with a typed tag:
``[NAME]``, ``[DATE]``, ``[MRN]``, ``[ACCESSION]``, ``[PHONE]``, ``[ADDRESS]``, ``[EMAIL]``.

How spans are found (all rules are regular expressions plus small embedded word lists, no model):

* **Keyed fields** (highest priority) -- a value after a field name: ``Patient:``, ``Name:``, ``Surgeon:``,
  ``signed by``, ``discussed with`` (names); ``MRN``, ``Medical record #``, ``Patient ID`` (MRN);
  ``Accession``, ``Case #`` (accession); ``Tel``, ``Phone``, ``Fax`` (phone); ``Address:``, ``resides at``
  (address). The field name stays; only the value is replaced ("MRN: [MRN]").
* **Titles and credentials** -- the capitalised words after Dr./Mr./Mrs./Ms./Prof. and before ", MD"/"PhD".
  The first word after a title is a name whatever it is ("Dr. Mass" -> "Dr. [NAME]"), later words stop at
  function words, field names, institution words and upper-case section headers.
* **Patterns** -- e-mail addresses; US and international phone numbers; dates (03/14/2026, 2026-03-14,
  March 14, 2026, 14-Mar-2026, 14th of March 2026, March 2026, with an optional time); accession numbers
  (S26-04711, SP-26-1234, 2026-S-00123, TCGA barcodes); bare 7-12 digit numbers (MRN); street addresses
  (number + capitalised words + street suffix, with unit, city, state and ZIP) and "City, ST 12345".
* **Name lists** -- "First Last" with a known first name, "LAST, First", and known surnames mid-sentence.
* **Propagation** -- every value found above is searched again in the whole text (names word by word, case
  insensitive), so "KOWALCZYK, WALTER" in a header also removes "Walter Kowalczyk" in the gross description.

Clinical terms are protected: spans matching TNM codes (pT2a, pN0, ypT1bN0M0), Gleason scores (4+3=7),
grades (Grade 3, G2), stages (Stage IIIA), sizes (12 mm, 3.5 x 2 cm), percentages, Ki-67 / HER2 results,
lymph node counts ("1 of 12 lymph nodes"), cassette ids (A1-A12), ages, ICD codes and AJCC editions cannot
be removed by the pattern and list rules; only an explicit keyed field overrides them. Clinical eponyms
(Lauren, Gleason, Breslow, Nottingham, ...) are never treated as names by the list rules.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from pathmm_pipeline.reports.phi_patterns import contact_spans, date_spans
from pathmm_pipeline.reports.phi_rules import (
    EXACT,
    KEYED,
    LIST,
    PATTERN,
    Candidate,
    ages_over_89,
    institutions,
    ip_addresses,
    labelled_ids,
    places,
    social_security_numbers,
    urls,
)
from pathmm_pipeline.reports.vocab import COMMON_WORDS, EPONYMS, FIRST_NAMES, KNOWN_WORDS, LAST_NAMES, MEDICAL_WORDS

#: the tags a span can get (``[NAME]``, ...); ``ID`` is an unlabelled identifier-like token, ``LOCATION`` a city,
#: state or ZIP code outside a street address
PHI_TYPES: tuple[str, ...] = ("NAME", "DATE", "AGE", "MRN", "ACCESSION", "ID", "ACCOUNT", "HEALTH_PLAN", "DEVICE",
                              "LICENSE", "SSN", "PHONE", "ADDRESS", "LOCATION", "EMAIL", "URL", "IP",
                              "INSTITUTION")


@dataclass(frozen=True)
class PHISpan:
    """One removed identifier: its type, its [start, end) offsets in the input text and the original text."""

    type: str
    start: int
    end: int
    original: str


@dataclass(frozen=True)
class DeidResult:
    """De-identified text and the spans that were replaced (offsets refer to the input text)."""

    text: str
    spans: list[PHISpan]

    def counts(self) -> dict[str, int]:
        """Number of replaced spans per PHI type (every type present, 0 when none)."""
        found = Counter(span.type for span in self.spans)
        return {kind: int(found.get(kind, 0)) for kind in PHI_TYPES}


# priorities (phi_rules): an exact machine form beats a keyed field, which beats a pattern, which beats a name-list
# guess or a propagated copy
_EXACT, _KEYED, _PATTERN, _LIST = EXACT, KEYED, PATTERN, LIST
_Cand = Candidate


# ----------------------------------------------------------------------------------------------- names
_UP = "A-Z\u00c0-\u00d6\u00d8-\u00de\u0100-\u017f"  # capitals, Latin-1 included ("Sørensen", "ÉMILE")
_LO = "a-z\u00df-\u00f6\u00f8-\u00ff\u0100-\u017f"
_TOKEN_RE = re.compile(rf"(?:[{_UP}]['\u2019])?[{_UP}][{_LO}]+(?:[{_UP}][{_LO}]+)?(?:-[{_UP}][{_LO}]+)*|"
                       rf"[{_UP}]{{2,}}(?:['\-][{_UP}]+)*|[{_UP}]\.")
_NAME_WORD = r"[^\W\d_][\w'\u2019\-]+"
_PARTICLES = frozenset("van von de del della da di la le du der den ter bin ben al el st. st".split())
_TITLE_RE = re.compile(r"\b(?:Dr|DR|Drs|Mr|Mrs|Ms|Mx|Miss|Prof|Professor|Doctor|DOCTOR)\b(?:\.?[ ]+|\.(?=[A-Z]))")
_CREDENTIALS = frozenset("md m.d. m.d do d.o. phd ph.d. mbbs mbchb frcpath fcap frcpc dnp pa-c cnp facp faap"
                         .split())
_CREDENTIAL_RE = re.compile(r",?[ ]+(?:M\.D\.|MD|D\.O\.|Ph\.?D\.?|MBBS|MBChB|FRCPath|FCAP|FRCPC|DNP|PA-C)(?![\w])")
_FIELD_WORDS = frozenset("""
mrn dob age sex gender id accession acc collected received reported address tel telephone phone fax date case
room bed unit ward location race account page printed specimen dx mr ssn email e-mail sign signed time status
""".split())
_INSTITUTION_WORDS = frozenset("""
pathology department dept hospital clinic center centre laboratory lab medical university service services
surgery oncology urology gastroenterology radiology institute school health system group practice associates
team unit office regional general memorial
""".split())
_HEADER_WORDS = frozenset("""
diagnosis diagnoses microscopic gross comment comments clinical history final description note notes specimen
addendum synoptic information report findings impression
""".split())
_NAME_STOP = (COMMON_WORDS - FIRST_NAMES - LAST_NAMES) | _FIELD_WORDS | _INSTITUTION_WORDS | _CREDENTIALS
_TITLE_WORDS = frozenset("dr drs mr mrs ms mx miss prof professor doctor".split())

_NAME_KEY_RE = re.compile(
    r"(?i)\b(?:patient(?:'s)?[ ]+(?:full[ ]+)?name|patient|pt[ ]+name|pt\.?|full[ ]+name|name|"
    r"(?:submitting|ordering|referring|attending|requesting|consulting|treating|primary(?:[ ]+care)?|"
    r"responsible)[ ]+(?:physician|doctor|clinician|provider|surgeon|pathologist|consultant)|"
    r"physician|surgeon|pathologist|resident|fellow|attending|clinician|provider|consultant|"
    r"copy[ ]+to|cc|next[ ]+of[ ]+kin|emergency[ ]+contact|contact[ ]+person|guarantor|"
    r"(?:grossed|dictated|transcribed|prepared|reviewed|verified|(?:electronically[ ]+)?signed(?:[ ]+out)?|"
    r"authenticated|seen|referred|examined|interpreted|accessioned|completed|performed|entered|approved|"
    r"released|requested|ordered|submitted)[ ]+by|(?:referring|ordering|submitting|requesting|sender|einsender|"
    r"requester|from)[ ]*:|"
    r"(?:report|letter|note|opinion|review|consultation|consult|diagnosis|interpretation)[ ]+(?:rendered[ ]+)?by|"
    r"re[ ]*:|regarding[ ]*:|discussed[ ]+with|communicated[ ]+to|called[ ]+to|reported[ ]+to|relayed[ ]+to|"
    r"faxed[ ]+to|"
    r"(?:labell?ed|marked)[ ]+(?:with[ ]+)?(?:the[ ]+)?(?:patient(?:'s)?[ ]+)?name(?:[ ]+of)?|"
    r"(?:his|her|their|the[ ]+patient's)[ ]+(?:wife|husband|son|daughter|mother|father|sister|brother|"
    r"spouse|partner|friend|caregiver|niece|nephew)(?=[ ]*,?[ ]*[A-Z])[ ]*,?|"
    r"(?:mother|father|spouse|husband|wife|son|daughter)[ ]*:)"
    r"[ ]*[:#]?[ ]*(?:(?:Dr|Mr|Mrs|Ms|Mx|Miss|Prof)\.?[ ]+)?(?=[A-Z])")
_LABELED_QUOTE_RE = re.compile(r"(?i)\b(?:labell?ed|marked|tagged)[ ]+(?:as[ ]+)?[\"'](?=[A-Z])")

# ----------------------------------------------------------------------------------------------- protection
_PROTECT_RES = [
    re.compile(r"(?<![A-Za-z0-9])(?:(?:y|r|a)?[pc]?[TNM](?:is|X|[0-4])(?:[a-d]|mi)?(?:\([^)\s]{1,6}\))?){1,3}"
               r"(?![A-Za-z0-9])"),
    re.compile(r"(?i)\bGleason(?:[ ]+(?:score|pattern|grade|sum))?[ ]*[:=]?[ ]*(?:\d[ ]*\+[ ]*\d(?:[ ]*=[ ]*\d{1,2})?"
               r"|\d{1,2})(?:[ ]*\(\d[ ]*\+[ ]*\d\))?"),
    re.compile(r"(?<![\w.])\d[ ]*\+[ ]*\d(?:[ ]*=[ ]*\d{1,2})?(?![\w])"),
    re.compile(r"(?i)\b(?:(?:histologic(?:al)?|nuclear|nottingham|fuhrman|isup|who|tumou?r|combined|overall|"
               r"elston[- ]ellis)[ ]+)?grade(?:[ ]+group)?[ ]*[:]?[ ]*(?:[1-4](?:[ ]*(?:of|/)[ ]*[34])?|"
               r"I{1,3}V?|IV|X)(?![\w])"),
    re.compile(r"(?<![\w])G[1-4X](?![\w])"),
    re.compile(r"(?i)\b(?:(?:pathologic(?:al)?|clinical|ajcc|figo|tnm)[ ]+)?stage(?:[ ]+group)?[ ]*[:]?[ ]*"
               r"(?:0|I{1,3}V?|IV|[1-4])[A-C]?\d?(?![\w])"),
    re.compile(r"(?i)\bFIGO[ ]+(?:stage[ ]+)?[IV]+[A-C]?\d?\b"),
    re.compile(r"(?<![\w.])\d+(?:[.,]\d+)?(?:[ ]*(?:x|\u00d7|by)[ ]*\d+(?:[.,]\d+)?){0,2}[ ]*(?:mm|cm|\u00b5m|"
               r"\u03bcm|um|nm|m|mg|g|kg|ml|mL|l|L|mm2|cm2|cm3|mm3|hpf|HPF|cc|mitoses|cells)(?![\w])"),
    re.compile(r"(?<![\w.])\d+(?:\.\d+)?[ ]*%"),
    re.compile(r"(?i)\bKi-?67(?:[ ]+(?:index|labell?ing[ ]+index|proliferati(?:on|ve)[ ]+index))?[ ]*[:(]?[ ]*"
               r"(?:of[ ]+|approximately[ ]+|~[ ]*)?\d+(?:\.\d+)?[ ]*%?"),
    re.compile(r"(?i)\bHER-?2(?:/neu)?(?:[ ]+(?:IHC|score|status|immunohistochemistry|protein))?[ ]*[:(]?[ ]*"
               r"(?:score[ ]+)?[0-3]\+?"),
    re.compile(r"(?i)(?<![\w])\d+[ ]*(?:of|/|out[ ]+of)[ ]*\d+[ ]+(?:[a-z\-]+[ ]+){0,3}(?:lymph[ ]+)?nodes?\b"),
    re.compile(r"(?i)\(\d+[ ]*/[ ]*\d+\)"),
    re.compile(r"(?i)\b\d+[ ]*(?:/|per)[ ]*\d+[ ]*(?:hpf|high[- ]power[ ]+fields?|mm2)\b"),
    re.compile(r"(?<![\w\-])[A-Z]\d{1,2}(?:[ ]*(?:-|to|through|and)[ ]*[A-Z]?\d{1,2})?(?![\w\-])"),
    re.compile(r"(?i)\b(?:[1-8]?\d[- ](?:year|yr)s?|\d{1,3}[- ](?:month|week|day)s?)[- ]old\b"),
    re.compile(r"(?i)\bICD-?(?:9|10|11|O)(?:-\d)?(?:-CM)?\b|(?<![\w.])[A-Z]\d{2}\.\d{1,2}(?![\w])"),
    re.compile(r"(?i)\bAJCC[ ]+\d{1,2}(?:st|nd|rd|th)?(?:[ ]+edition)?\b"),
    re.compile(r"(?i)\b(?:CD|CK|p)[ ]?\d{1,3}[a-z]?(?![\w]|-\d)|\bAE1/AE3\b|\bCAM[ ]?5\.2\b"),
    re.compile(r"\b[A-Z]{2,6}\d{1,2}(?![\w]|-\d)"),
    re.compile(r"(?i)\b\d+[ ]*(?:to|-)[ ]*\d+[ ]*(?:mm|cm|%)"),
]


def _protected(text: str) -> list[tuple[int, int]]:
    spans = []
    for pattern in _PROTECT_RES:
        spans.extend(m.span() for m in pattern.finditer(text) if m.end() > m.start())
    return spans


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


# ----------------------------------------------------------------------------------------------- detectors
def _token_at(text: str, pos: int) -> re.Match[str] | None:
    m = _TOKEN_RE.match(text, pos)
    if m and m.end() < len(text) and (text[m.end()].isalnum() and not text[m.end() - 1] == "."):
        return None  # part of a longer word ("MRI2", "Dr.Smith" is fine)
    return m


def _is_stop(token: str, followed_by: str) -> bool:
    if len(token) == 2 and token.endswith("."):
        return False  # an initial ("A.") is never a stop word
    low = token.lower().rstrip(".")
    if followed_by.startswith(":"):
        return True  # a field or header name
    if low in _NAME_STOP or low in _TITLE_WORDS:
        return True
    return token.isupper() and len(token) > 1 and low in _HEADER_WORDS


def _scan_name(text: str, pos: int, first_free: bool = True, max_tokens: int = 4) -> int | None:
    """End offset of a name starting at ``pos`` (capitalised tokens, particles, initials, one 'LAST, First')."""
    lead = _LEAD_PARTICLES_RE.match(text, pos)
    m = _token_at(text, lead.end() if lead else pos)  # "Dr. de la Cruz"
    if not m:
        return None
    if lead:
        end = _scan_name(text, m.start(), first_free=first_free, max_tokens=max_tokens)
        return end
    first = m.group()
    low = first.lower().rstrip(".")
    if text[m.end():m.end() + 1] == ":" or low in _FIELD_WORDS or low in _CREDENTIALS or low in _TITLE_WORDS:
        return None
    if first_free:  # after a title anything capitalised is a name ("Dr. Mass"), except institution words
        if low in _INSTITUTION_WORDS or (first.isupper() and low in _HEADER_WORDS):
            return None
    elif _is_stop(first, text[m.end():m.end() + 2]) or len(first) == 2 and first.endswith("."):
        return None
    end, count, used_comma = m.end(), 1, False
    while count < max_tokens:
        nxt = end
        comma = False
        if text.startswith(", ", nxt) and not used_comma and count == 1:
            nxt += 2
            comma = True
        elif text.startswith(" ", nxt) and not text.startswith("  ", nxt):
            nxt += 1
        else:
            break
        # particles: "van", "de la"
        probe = nxt
        while True:
            pm = _LETTERS_RE.match(text, probe)
            if pm and pm.group().lower() in _PARTICLES and text.startswith(" ", pm.end()):
                probe = pm.end() + 1
            else:
                break
        t = _token_at(text, probe)
        if not t or _is_stop(t.group(), text[t.end():t.end() + 2]) or t.group().lower() in EPONYMS and comma:
            break
        if comma and (t.group().lower() in _CREDENTIALS or t.group().lower() in _TITLE_WORDS):
            break
        end = t.end()
        used_comma = used_comma or comma
        count += 1
    # a trailing initial's period belongs to the name; a sentence-final period does not
    return end


_LEAD_PARTICLES_RE = re.compile(r"(?:(?:van|von|de|del|della|da|di|la|le|du|der|den|ter)[ ])+(?=[A-Z])")
_LETTERS_RE = re.compile(r"[A-Za-z.]+")
_SPACE_INITIAL_RE = re.compile(r"[ ](?:[A-Z]\.[ ])?")
_COMMA_RE = re.compile(r",[ ]?")
_SPACE_DIGIT_RE = re.compile(r"[ ]?\d")
_INITIAL_AFTER_RE = re.compile(r"[ ][A-Z]\.")
_LOWER_NAME_KEY_RE = re.compile(
    r"\b(?:(?:patient(?:'s)?[ ]+name|pt[ ]+name|full[ ]+name|name|patient|surname|last[ ]+name|first[ ]+name|"
    r"given[ ]+name|re)[ ]*:?|(?:dictated|transcribed|signed|reviewed|grossed|prepared|verified|examined|seen|"
    r"referred|discussed)(?:[ ]+(?:out|electronically))?(?:[ ]+(?:by|with))?(?:[ ]+(?:dr\.?|doctor|prof\.?|mr\.?|"
    r"mrs\.?|ms\.?))?|(?:dr\.?|doctor|prof\.?|professor|mr\.?|mrs\.?|ms\.?)|labell?ed[ ]+[\"'])[ ]+"
    r"(?=[a-z\u00df-\u00ff])")
_LOWER_TOKEN_RE = re.compile(r"[a-z\u00df-\u00ff\u0100-\u017f][\w'\u2019\-]*\.?")


def _unknown_word(token: str) -> bool:
    low = token.lower()
    return low not in KNOWN_WORDS and low not in EPONYMS and low not in _NAME_STOP and low not in _HEADER_WORDS


def _lower_names(text: str) -> list[_Cand]:
    """Names in lower-case text after an explicit field ("name: swen z. muehle chart # ..."): up to four words,
    stopping at a field, function or medical word."""
    out = []
    for m in _LOWER_NAME_KEY_RE.finditer(text):
        pos, end, count = m.end(), None, 0
        while count < 4:
            t = _LOWER_TOKEN_RE.match(text, pos)
            if not t:
                break
            word = t.group().rstrip(".")
            initial = len(word) == 1 and t.group().endswith(".")
            if not initial and (word.lower() in _NAME_STOP or word.lower() in KNOWN_WORDS or any(
                    ch.isdigit() for ch in word)):
                break
            end, count = t.end() if initial else t.start() + len(word), count + 1
            gap = 2 if text.startswith(", ", t.end()) and count == 1 else 1  # "caccianemico, donatello"
            if not text.startswith(" " if gap == 1 else ", ", t.end()) or text.startswith("  ", t.end()):
                break
            pos = t.end() + gap
        if end:
            out.append(_Cand("NAME", m.end(), end, _KEYED))
    return out


def _names(text: str) -> list[_Cand]:
    out: list[_Cand] = []
    for m in _TITLE_RE.finditer(text):
        end = _scan_name(text, m.end(), first_free=True)
        if end:
            out.append(_Cand("NAME", m.end(), end, _KEYED))
            # "SURNAME, Mrs. Firstname": the word before the comma is the surname
            before = re.search(rf"((?:[{_UP}]['\u2019])?[{_UP}][{_UP}{_LO}'\u2019\-]+),[ ]$",
                               text[max(0, m.start() - 40):m.start()])
            if before and before.group(1).lower() not in KNOWN_WORDS | _NAME_STOP | EPONYMS:
                start = m.start() - len(before.group())
                out.append(_Cand("NAME", start, start + len(before.group(1)), _KEYED))
    for m in _NAME_KEY_RE.finditer(text):
        # an explicit "Name:" / "Patient:" field: its first word is a name whatever it is ("Name: Grade, M.")
        end = _scan_name(text, m.end(), first_free=":" in m.group())
        if end:
            out.append(_Cand("NAME", m.end(), end, _KEYED))
    for m in _LABELED_QUOTE_RE.finditer(text):
        t = _token_at(text, m.end())
        if t and t.group().lower() not in MEDICAL_WORDS:
            end = _scan_name(text, m.end(), first_free=False)
            if end:
                out.append(_Cand("NAME", m.end(), end, _KEYED))
    # "Firstname M. Lastname, MD": walk back from the credential over up to four name tokens
    for m in _CREDENTIAL_RE.finditer(text):
        words = list(re.finditer(rf"[{_UP}{_LO}'\u2019.\-]+", text[max(0, m.start() - 80):m.start()]))
        base = max(0, m.start() - 80)
        start = None
        for w in reversed(words[-4:]):
            token = w.group()
            if not (token[0].isupper() or token.lower() in _PARTICLES) or token.lower().rstrip(".") in _NAME_STOP \
                    or token.lower().rstrip(".") in _TITLE_WORDS:
                break
            gap = text[base + w.end():m.start() if start is None else start]
            if start is not None and gap not in (" ",):
                break
            start = base + w.start()
        if start is not None:
            out.append(_Cand("NAME", start, m.start(), _KEYED))
    # name lists: "First [M.] Last", "LAST, First", mid-sentence known surnames
    for m in _TOKEN_RE.finditer(text):
        token = m.group()
        low = token.lower()
        if low in FIRST_NAMES and low not in EPONYMS and not _is_stop(token, text[m.end():m.end() + 2]):
            rest = _SPACE_INITIAL_RE.match(text, m.end())
            if rest:
                t = _token_at(text, rest.end())
                if t and t.group().lower() not in KNOWN_WORDS and t.group().lower() not in EPONYMS \
                        and t.group().lower() not in _NAME_STOP:
                    out.append(_Cand("NAME", m.start(), t.end(), _LIST))
        if low not in KNOWN_WORDS and low not in EPONYMS and low not in _NAME_STOP:
            comma = _COMMA_RE.match(text, m.end())
            if comma:
                t = _token_at(text, comma.end())
                if t and t.group().lower() in FIRST_NAMES and (token.isupper() == t.group().isupper()):
                    out.append(_Cand("NAME", m.start(), t.end(), _LIST))
                elif t and len(token) >= 3 and len(t.group()) >= 3 and _unknown_word(t.group()) \
                        and (token.isupper() or _INITIAL_AFTER_RE.match(text, t.end())):
                    # "AMORES, Margarita", "Kazubek, Liwia W.": two words no list knows, in "LAST, First" form
                    out.append(_Cand("NAME", m.start(), t.end(), _LIST))
            if low in LAST_NAMES and m.start() > 1 and re.search(r"[a-z,][ ]$", text[max(0, m.start() - 2):m.start()]) \
                    and not _SPACE_DIGIT_RE.match(text, m.end()):
                out.append(_Cand("NAME", m.start(), m.end(), _LIST))
    return out


_LITERAL_TYPES = frozenset(("MRN", "ACCESSION", "ID", "ACCOUNT", "HEALTH_PLAN", "DEVICE", "LICENSE", "SSN", "PHONE",
                           "EMAIL", "URL", "IP"))
_ALWAYS_KEPT = frozenset(("EMAIL", "PHONE", "URL", "IP", "SSN", "AGE", "ADDRESS"))


def _propagate(text: str, chosen: list[_Cand], extra_names: Iterable[str]) -> list[_Cand]:
    """Copies of found values elsewhere in the text (names word by word, case-insensitively)."""
    out: list[_Cand] = []
    name_tokens: set[str] = set()
    literal: set[tuple[str, str]] = set()
    for cand in chosen:
        value = text[cand.start:cand.end]
        if cand.type == "NAME":
            name_tokens.update(re.findall(_NAME_WORD, value))
        elif cand.type in _LITERAL_TYPES and len(value) >= 5:
            literal.add((cand.type, value))
    for name in extra_names:
        name_tokens.update(re.findall(_NAME_WORD, name))
    usable = {t.lower() for t in name_tokens if len(t) >= 3 and t.lower() not in KNOWN_WORDS
              and t.lower() not in EPONYMS and t.lower() not in _NAME_STOP and t.lower() not in _PARTICLES
              and t.lower() not in _TITLE_WORDS}
    if usable:  # one pass over the words of the text, each checked whole and by its hyphen / apostrophe parts
        for m in _WORD_RUN_RE.finditer(text):
            if m.group().lower() in usable:
                out.append(_Cand("NAME", m.start(), m.end(), _LIST))
                continue
            for part in _WORD_PART_RE.finditer(m.group()):
                if part.group().lower() in usable:
                    out.append(_Cand("NAME", m.start() + part.start(), m.start() + part.end(), _LIST))
    for kind, value in sorted(literal)[:MAX_PROPAGATED_VALUES]:
        start = text.find(value)
        while start != -1:
            end = start + len(value)
            if not (start and (text[start - 1].isalnum() or text[start - 1] in "-_")) and not (
                    end < len(text) and (text[end].isalnum() or text[end] in "-_")):
                out.append(_Cand(kind, start, end, _LIST))
            start = text.find(value, end)
    return out


#: at most this many distinct numbers, phones and e-mails are searched again in the whole text (each search is a
#: pass over the text; a report with more has them found where they are by the patterns anyway)
MAX_PROPAGATED_VALUES = 200
_WORD_RUN_RE = re.compile(r"[^\W\d_][\w'\u2019\-]*[^\W_]|[^\W\d_]")
_WORD_PART_RE = re.compile(r"[^\W_]+")


def _select(cands: list[_Cand], protected: list[tuple[int, int]]) -> list[_Cand]:
    """Drop unkeyed candidates that touch a clinical term, then merge overlapping spans into one (typed by the
    longest of them, then by priority: "12 Main St, Springfield, MA 02719" is an ADDRESS)."""
    size = max((c.end for c in cands), default=0)
    clinical = bytearray(size)
    for start, end in protected:
        if start < size:
            clinical[start:min(end, size)] = b"\x01" * (min(end, size) - start)
    kept = [c for c in cands if c.end > c.start and (c.priority >= _KEYED or c.type in _ALWAYS_KEPT
                                                     or clinical.find(1, c.start, c.end) == -1)]
    merged: list[_Cand] = []
    best: _Cand | None = None
    for cand in sorted(kept, key=lambda c: (c.start, -c.end)):
        if merged and cand.start < merged[-1].end:  # overlapping spans are one span, typed by its best rule
            last = merged[-1]
            if best is None or (cand.end - cand.start, cand.priority) > (best.end - best.start, best.priority):
                best = cand
            merged[-1] = _Cand(best.type, last.start, max(last.end, cand.end), max(last.priority, cand.priority))
        else:
            merged.append(cand)
            best = cand
    return merged


#: the structural rules of :mod:`pathmm_pipeline.reports.phi_rules`, run on every text
_STRUCTURAL_RULES = (labelled_ids, social_security_numbers, ages_over_89, urls, ip_addresses, places, institutions)


def deidentify(text: str, extra_names: Iterable[str] = ()) -> DeidResult:
    """Replace identifiers in ``text`` with typed tags (``[NAME]``, ``[DATE]``, ...).

    ``extra_names`` are names known to belong to this report (e.g. from a patient registry); each word of them is
    removed wherever it occurs, like names found in the text itself.
    """
    protected = _protected(text)
    cands = date_spans(text) + contact_spans(text) + _names(text) + _lower_names(text)
    for rule in _STRUCTURAL_RULES:
        cands += rule(text)
    chosen = _select(cands, protected)
    extra = _propagate(text, chosen, extra_names)
    if extra:
        chosen = _select(chosen + extra, protected)
    pieces: list[str] = []
    spans: list[PHISpan] = []
    last = 0
    for cand in chosen:
        pieces.append(text[last:cand.start])
        pieces.append(f"[{cand.type}]")
        spans.append(PHISpan(cand.type, cand.start, cand.end, text[cand.start:cand.end]))
        last = cand.end
    pieces.append(text[last:])
    return DeidResult("".join(pieces), spans)
