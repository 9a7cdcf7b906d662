"""Structural identifier rules of the de-identifier: labelled numbers, SSNs, ages over 89, URLs, IP addresses,
places (city, state, ZIP) and institution names.

Each detector takes the text and returns :class:`Candidate` spans; :mod:`pathmm_pipeline.reports.deid` merges
them with its date, phone, address and name rules and chooses among overlapping spans by :data:`PRIORITY`.
The rules are written from the formats identifiers take (HIPAA Safe Harbor's categories, USPS street and state
names, GS1 device identifiers), not from any one corpus: a label table maps the words that introduce an
identifier ("MRN", "Subscriber ID", "NPI", "Serial number", ...) to its type, and the value after a label is any
token with enough digits. Every pattern runs in time linear in the text (bounded repetitions, no nested
quantifiers over the same characters).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from pathmm_pipeline.reports.vocab import KNOWN_WORDS

#: priorities: a machine-readable form (e-mail, URL, IP) beats a keyed field, which beats a pattern, which beats
#: a list guess or a propagated copy
EXACT, KEYED, PATTERN, LIST = 4, 3, 2, 1


@dataclass(frozen=True)
class Candidate:
    """A span [start, end) that a rule believes holds an identifier of ``type``."""

    type: str
    start: int
    end: int
    priority: int


# ----------------------------------------------------------------------------------------------- labelled ids
#: words that introduce an identifier, by the type its value gets (matched case-insensitively, longest first)
ID_LABELS: dict[str, tuple[str, ...]] = {
    "SSN": ("ssn", "ss", "social security", "soc sec", "soc. sec.", "social insurance", "sin"),
    "MRN": ("mrn", "mr", "medical record", "med rec", "med. rec.", "medical records", "record", "patient id",
            "patient identifier", "patient", "pt id", "pt", "pid", "hospital", "hospital id", "unit", "chart",
            "health record", "health card", "nhs", "ehr", "emr", "id", "identifier", "person id", "client id",
            "case id", "ur", "urn", "hn", "hosp"),
    "ACCOUNT": ("account", "acct", "acc't", "fin", "encounter", "visit", "billing", "invoice", "financial",
                "episode", "admission", "csn", "har"),
    "HEALTH_PLAN": ("health plan", "plan", "insurance", "insurance id", "insurer", "policy", "member",
                    "subscriber", "beneficiary", "medicare", "medicaid", "group", "payer", "payor", "coverage",
                    "hicn", "mbi", "carrier"),
    "DEVICE": ("serial", "s/n", "sn", "lot", "lot/serial", "udi", "device", "device id", "implant", "catalog",
               "catalogue", "ref", "model", "imei", "mac"),
    "LICENSE": ("license", "licence", "npi", "dea", "clia", "upin", "registration", "certificate", "cert",
                "provider id", "provider", "gmc", "lic", "lic.", "state license", "medical license",
                "board certification"),
    "ACCESSION": ("accession", "acc", "acc.", "case", "surgical pathology", "surg path", "path", "pathology",
                  "lab", "laboratory", "specimen", "requisition", "req", "consult", "consultation", "outside case",
                  "referral", "block", "slide", "order", "report"),
}
_SUFFIX = r"(?:[ ]*(?:number|num\.?|nr\.?|no\.?|#|id|identifier|code|ref\.?))?"
_SEPARATOR = r"(?:[ ]*[:#=]{1,2}[ ]*|[ ]*\.[ ]*(?=[A-Za-z0-9])|[ ]+(?:is[ ]+|was[ ]+|of[ ]+)?)"
#: an identifier value: a GS1 device identifier, a token of letters and digits, or digit groups spaced apart
_VALUE = (r"\(01\)\d{14}(?:\(\d{2,4}\)[A-Za-z0-9\-]{1,20}){0,4}|"
          r"\d{2,6}(?:[ ]\d{2,6}){1,3}(?![\w\-])|"
          r"[A-Za-z0-9](?:[A-Za-z0-9\-/.]{0,30}[A-Za-z0-9])?")
_LABEL_TYPE = {label: kind for kind, labels in ID_LABELS.items() for label in labels}
_LABELS = sorted(_LABEL_TYPE, key=len, reverse=True)
_LABEL_ALT = "|".join(re.escape(label).replace(r"\ ", "[ ]+") for label in _LABELS)
_ID_KEY_RE = re.compile(rf"(?i)(?<![\w])(?P<label>{_LABEL_ALT})(?P<suffix>{_SUFFIX})(?P<sep>{_SEPARATOR})"
                        rf"(?P<v>{_VALUE})(?![\w\-])")
#: labels that may be glued to their value ("MRN0048229", "SSN#123-45-6789" is already separated)
_GLUED_LABELS = ("mrn", "ssn", "pid", "fin", "npi", "dea", "acct", "mr", "csn", "upin", "udi")
_GLUED_RE = re.compile(rf"(?<![\w])(?i:(?P<label>{'|'.join(_GLUED_LABELS)}))(?P<v>[A-Z]{{0,3}}\d{{4,14}}[A-Z]?)"
                       r"(?![\w\-])")
_UNITS_AFTER = re.compile(r"[ ]*(?:mm|cm|um|µm|mg|g|ml|%|x\b|years?|yrs?|months?|days?|weeks?|slides?|blocks?"
                          r"|cassettes?|nodes?|cores?|fragments?|pieces?)", re.IGNORECASE)
_DATE_LIKE = re.compile(r"\d{1,4}[/.\-]\d{1,2}[/.\-]\d{1,4}")
#: an unlabelled identifier: a few capitals glued to five or more digits ("HM12662572", "KOZ3982051")
_BARE_ID_RE = re.compile(r"(?<![\w\-/.])[A-Z]{1,4}-?\d{5,14}[A-Z]?(?![\w\-]|[.,]\d)")


def _digits(value: str) -> int:
    return sum(ch.isdigit() for ch in value)


def labelled_ids(text: str) -> list[Candidate]:
    """Values after an identifier label (``MRN: 0048229``, ``Subscriber ID W2337970128``, ``NPI: MD-59823``,
    ``Serial number: (01)...(21)...``) and labels glued to their value (``MRN0048229``)."""
    out = []
    pos = 0
    while (m := _ID_KEY_RE.search(text, pos)) is not None:
        pos = m.end("label")  # a rejected value may itself be the next label ("Billing Account: 1234-567")
        if _labelled_value_ok(text, m):
            out.append(Candidate(_LABEL_TYPE[re.sub(r"[ ]+", " ", m["label"].lower())], m.start("v"), m.end("v"),
                                 KEYED))
            pos = m.end("v")
    for m in _GLUED_RE.finditer(text):
        out.append(Candidate(_LABEL_TYPE[m["label"].lower()], m.start("v"), m.end("v"), KEYED))
    out += [Candidate("ID", m.start(), m.end(), PATTERN) for m in _BARE_ID_RE.finditer(text)]
    return out


def _labelled_value_ok(text: str, m: re.Match[str]) -> bool:
    """Whether the value after a label is an identifier: enough digits, not a date, size or decimal number."""
    value, label = m["v"], re.sub(r"[ ]+", " ", m["label"].lower())
    spaced_only = not re.search(r"[:#=.]", m["suffix"] + m["sep"])
    if _digits(value) < (4 if spaced_only else 3) or _DATE_LIKE.match(value):
        return False
    if " " in value and _UNITS_AFTER.match(text, m.end("v")):
        return False
    if value[0].isdigit() and value.replace(".", "", 1).isdigit() and "." in value:
        return False  # a decimal number ("record 12.5")
    if spaced_only and label in ("patient", "pt", "hospital", "unit", "case", "lab", "path", "pathology",
                                     "specimen", "slide", "block", "report", "order", "group", "plan", "model",
                                     "device", "implant", "record", "visit", "provider", "referral"):
        # "patient 2024", "case 1234": a label word in prose needs a real identifier after it
        return bool(re.search(r"[A-Za-z]", value) and re.search(r"\d", value)) or _digits(value) >= 6
    return True


# ----------------------------------------------------------------------------------------------- SSN
_SSN_RE = re.compile(r"(?<![\w\-/.])(?!000|666|9\d\d)\d{3}(?P<s>[- ])(?!00)\d{2}(?P=s)(?!0000)\d{4}"
                     r"(?![\w\-/]|[.,]\d)")


def social_security_numbers(text: str) -> list[Candidate]:
    """US social security numbers written 123-45-6789 or 123 45 6789 without a label (area 000, 666 and 9xx
    are never issued, so those are left)."""
    return [Candidate("SSN", m.start(), m.end(), PATTERN) for m in _SSN_RE.finditer(text)]


# ----------------------------------------------------------------------------------------------- ages
_AGE_OVER_89 = r"(?:9\d|1[0-4]\d)"
_AGE_RES = [
    re.compile(rf"(?i)(?<![\w.,])(?P<v>{_AGE_OVER_89})(?=[ \-]?(?:years?|yrs?|y)[ \-]?(?:old\b|o\b|/o\b)|"
               r"[ \-]?y\.?o\.?(?![\w])|[ \-]?y/o\b|[ ]?(?:years?|yrs?)[ ]+(?:of[ ]+age|old|\)|,|\.)|"
               r"[ ]?(?:years?|yrs?|y)(?:[ ]|$|[,;)]))"),
    re.compile(rf"(?i)\b(?:age[ds]?|aged|age[ ]+at[ ]+(?:diagnosis|surgery|biopsy)|alter|âge|edad|età|wiek)"
               rf"[ ]*[:=]?[ ]*(?P<v>{_AGE_OVER_89})(?![\w]|[.,]\d)"),
    re.compile(r"(?i)\b(?:in[ ]+(?:his|her|their)[ ]+)(?P<v>(?:9|1[0-4])0'?s)\b"),
    re.compile(r"(?i)\b(?P<v>nonagenarian|centenarian|supercentenarian)s?\b"),
]


def ages_over_89(text: str) -> list[Candidate]:
    """Ages of 90 and above (Safe Harbor removes them; younger ages stay): "92-year-old", "97 yo", "AGED 90",
    "Age: 95", "in her 90s"."""
    return [Candidate("AGE", m.start("v"), m.end("v"), KEYED) for pattern in _AGE_RES for m in pattern.finditer(text)]


# ----------------------------------------------------------------------------------------------- URL, IP
_TLDS = ("com net org edu gov mil int info biz io co us uk de fr es it pl nl be ch at eu ca au nz jp cn in br "
         "ru se no dk fi ie pt gr cz hu ro health med care clinic hospital online site app cloud").split()
_URL_RE = re.compile(r"(?i)(?<![\w@/.\-])(?:(?:https?|ftp|sftp)://|www\.)[^\s<>\"'`|]{1,300}")
_DOMAIN_RE = re.compile(rf"(?i)(?<![\w@/.\-])(?:[a-z0-9](?:[a-z0-9\-]{{0,61}}[a-z0-9])?\.){{1,4}}"
                        rf"(?:{'|'.join(_TLDS)})(?::\d{{2,5}})?(?:/[^\s<>\"'`|]{{0,300}})?(?![\w@\-])")
_TRAILING = ".,;:!?)]}'\""


def _trim_url(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1] in _TRAILING:
        if text[end - 1] == ")" and text.count("(", start, end) >= text.count(")", start, end):
            break  # a balanced parenthesis belongs to the URL
        end -= 1
    return end


def urls(text: str) -> list[Candidate]:
    """Web addresses: with a scheme or ``www.``, or a bare domain under a common top-level domain, with path."""
    out = []
    for pattern in (_URL_RE, _DOMAIN_RE):
        for m in pattern.finditer(text):
            end = _trim_url(text, m.start(), m.end())
            if end - m.start() >= 4:
                out.append(Candidate("URL", m.start(), end, EXACT))
    return out


_IPV4_RE = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?::\d{2,5})?(?![\w]|\.\d)")
_IPV6_RE = re.compile(r"(?i)(?<![\w:])(?:[0-9a-f]{1,4}|:)(?::[0-9a-f]{0,4}){2,7}(?![\w:])")


def ip_addresses(text: str) -> list[Candidate]:
    """IPv4 (each part 0-255, optional port) and IPv6 addresses (validated by :mod:`ipaddress`)."""
    out = []
    for m in _IPV4_RE.finditer(text):
        host = m.group().split(":")[0]
        if all(int(part) <= 255 for part in host.split(".")):
            out.append(Candidate("IP", m.start(), m.end(), EXACT))
    for m in _IPV6_RE.finditer(text):
        value = m.group()
        if value.count(":") < 2 or re.fullmatch(r"\d{1,2}:\d{2}(?::\d{2})?", value):
            continue  # a time of day
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            continue
        out.append(Candidate("IP", m.start(), m.end(), EXACT))
    return out


# ----------------------------------------------------------------------------------------------- places
STATE_NAMES = ("Alabama Alaska Arizona Arkansas California Colorado Connecticut Delaware Florida Georgia Hawaii "
               "Idaho Illinois Indiana Iowa Kansas Kentucky Louisiana Maine Maryland Massachusetts Michigan "
               "Minnesota Mississippi Missouri Montana Nebraska Nevada Ohio Oklahoma Oregon Pennsylvania Tennessee "
               "Texas Utah Vermont Virginia Washington Wisconsin Wyoming Guam").split() + [
    "New Hampshire", "New Jersey", "New Mexico", "New York", "North Carolina", "North Dakota", "Rhode Island",
    "South Carolina", "South Dakota", "West Virginia", "District of Columbia", "Puerto Rico", "American Samoa",
    "Virgin Islands", "Northern Mariana Islands", "Marshall Islands", "Federated States of Micronesia", "Palau"]
STATE_CODES = ("AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM "
               "NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY AS GU MH FM MP PW PR VI AA AE AP").split()
_STATE_NAME = "(?i:" + "|".join(sorted((n.replace(" ", "[ ]") for n in STATE_NAMES), key=len, reverse=True)) + ")"
_STATE_CODE = "(?:" + "|".join(STATE_CODES) + ")"
_CITY_WORD = r"[A-Z][a-zA-Z'\u00c0-\u017f\-]{1,30}"
_CITY = rf"(?:(?:St|Ste|Mt|Ft)\.[ ])?{_CITY_WORD}(?:[ ]{_CITY_WORD}){{0,2}}"
_ZIP = r"\d{5}(?:-\d{4})?"
_CREDENTIAL_CODES = (", MD", ", DO", ", PA", ", NP", ", RN", ", MS", ", MA")
_PLACE_RES = [
    # City, State [ZIP] ; City, ST [ZIP]
    re.compile(rf"(?<![\w])(?P<v>{_CITY},[ ]{{1,2}}(?:{_STATE_NAME}|{_STATE_CODE})(?![\w])(?P<zip>[ ,]{{1,3}}{_ZIP})?)"
               r"(?![\w\-])"),
    # State ZIP (the city was on its own or before a comma already found)
    re.compile(rf"(?<![\w])(?P<v>(?:{_STATE_NAME}|{_STATE_CODE})[ ,]{{1,3}}(?P<zip>{_ZIP}))(?![\w\-])"),
    # UK postcodes, with the town after them: "HU20 0SH Cliffordberg", "L9 4YZ"
    re.compile(rf"(?<![\w\-])(?P<v>[A-Z]{{1,2}}\d[A-Z\d]?[ ]\d[A-Z]{{2}}(?:[ ]{_CITY})?)(?![\w\-])"),
    # European postal code and city after a comma or at a line start: "24-956 Ostroda", "63825 Pierre"
    re.compile(rf"(?m)(?:(?<=,[ ])|^)(?P<v>(?P<zip>\d{{2}}-\d{{3}}|\d{{4,5}})[ ]{_CITY})(?=[ ]*(?:$|[,.;]))"),
    # ZIP: 12345 ; postal code ; PLZ 10115 ; UK postcodes after a label
    re.compile(rf"(?i)\b(?:zip(?:[ ]?code)?|postal[ ]+code|post[ ]?code|plz|cp|cap|kod(?:[ ]+pocztowy)?)"
               rf"[ ]*[:#]?[ ]*(?P<v>{_ZIP}|\d{{2}}-\d{{3}}|\d{{4,5}}|[A-Z]{{1,2}}\d[A-Z\d]?[ ]?\d[A-Z]{{2}})"
               r"(?![\w\-])"),
    # city after a label: "City: Springfield", "lives in Springfield"
    re.compile(rf"(?i:\b(?:city|town|residence|hometown|municipality)[ ]*:[ ]*|\b(?:lives|living|resides|residing|"
               rf"resident)[ ]+(?:in|of)[ ]+)(?P<v>{_CITY})(?![\w])"),
]


def places(text: str) -> list[Candidate]:
    """Cities with their state, state + ZIP, labelled ZIP / postal codes and labelled cities."""
    out = []
    for pattern in _PLACE_RES:
        for m in pattern.finditer(text):
            with_zip = "zip" not in pattern.groupindex or m["zip"] is not None
            if not with_zip and m["v"].rstrip().endswith(_CREDENTIAL_CODES):
                continue  # "Priyanka Venkataraman, MD" is a physician, not a city in Maryland
            out.append(Candidate("LOCATION", m.start("v"), m.end("v"), KEYED if with_zip else PATTERN))
    return out


# ----------------------------------------------------------------------------------------------- institutions
#: the words that end an institution's name ("... Medical Center", "... Pathology Associates")
INSTITUTION_HEADS = ("Hospital Hospitals Clinic Clinics Clinique Klinik Klinikum Krankenhaus Spital Hôpital "
                     "Hopital Ospedale Policlinico Szpital Sanatorium Infirmary Hospice Institute Institut Istituto "
                     "Instituto Associates Laboratories Labs Diagnostics Foundation Healthcare HealthCare Health "
                     "University Universität Université Università Universidad College Partners Physicians "
                     "Center Centre Centrum Zentrum Centro Group System Systems Network Consortium").split()
_WEAK_HEADS = frozenset("Center Centre Centrum Zentrum Centro Group System Systems Network Health Partners "
                        "Physicians College".split())
#: words that may precede a weak head to make it an institution ("Medical Center", "Health System")
_WEAK_HEAD_QUALIFIERS = frozenset("Medical Cancer Health Care Surgical Surgery Diagnostic Trauma Research Treatment "
                                  "Imaging Heart Children's Childrens Women's Womens Regional Community Memorial "
                                  "Rehabilitation Oncology Pathology Physicians Healthcare University Veterans "
                                  "Affairs VA Clinical Outpatient Ambulatory Specialty Kidney Eye Breast "
                                  "Comprehensive".split())
#: institution words that come first in many languages ("Klinikum Peine", "Hôpital Guillet", "Szpital Miejski")
LEADING_HEADS = ("Klinikum Krankenhaus Klinik Universitätsklinikum Spital Kantonsspital Hôpital Hopital Clinique "
                 "Ospedale Policlinico Istituto Instituto Institut Hospital Hospitalario Clínica Clinica Szpital "
                 "Centrum Centro Ziekenhuis Sjukhus Sygehus Universidad Università Université Universität "
                 "Universitair Academisch").split()
_HEAD_RE = re.compile(r"(?<![\w\-])(?:" + "|".join(INSTITUTION_HEADS + [h.upper() for h in INSTITUTION_HEADS])
                      + r")(?![\w\-])")
_LEADING_RE = re.compile(r"(?<![\w\-])(?:" + "|".join(LEADING_HEADS) + r")(?:[ ]+(?:[A-Z][\w'\-]*|de|di|del|della"
                         r"|des|du|la|le|der|am|an|im|für|fur|universitario|universitaire|universitario|general)){1,4}")
_LOWER_HEAD_RE = re.compile(r"(?<![\w\-])(?:hospital|clinic|medical[ ]+cent(?:er|re)|cancer[ ]+(?:cent(?:er|re)|"
                            r"institute)|health[ ]+(?:system|center)|infirmary|institute|associates|laboratories)"
                            r"(?![\w\-])")
_NAME_TOKEN_RE = re.compile(r"(?:[A-Z][\w'\u2019&.\-]*|&|of|the|and|for|de|di|del|della|des|du|la|le|van|von|St\.)$")
_CONNECTORS = frozenset("of the and for de di del della des du la le van von &".split())
_HEADER_STOP = frozenset("DIAGNOSIS GROSS MICROSCOPIC CLINICAL HISTORY FINAL COMMENT COMMENTS REPORT SPECIMEN "
                         "PATHOLOGY SURGICAL ADDENDUM DESCRIPTION NOTE Department Division Dept Service Services "
                         "Section Unit Laboratory Lab Report".split())
_OF_TAIL_RE = re.compile(r"[ ]+(?:of|at|for|in|OF|AT|FOR|IN)[ ]+(?:the[ ]+|THE[ ]+)?"
                         r"([A-Z][\w'\-]*(?:[ ]+(?:[A-Z][\w'\-]*|of|the|and)){0,4})")
_OPENERS = "(\"'[“"


def _walk_back(text: str, head_start: int, accept: Callable[[str], bool]) -> tuple[int, list[str]]:
    """Start offset of the words before ``head_start`` on its line that ``accept`` takes (at most six, never
    starting on a connector), and those words (nearest first)."""
    line_start = text.rfind("\n", max(0, head_start - 120), head_start) + 1
    tokens = text[max(line_start, head_start - 120):head_start].split(" ")
    if tokens and tokens[-1] == "":
        tokens.pop()
    else:
        return head_start, []  # the head is glued to what precedes it, or starts the line
    start, taken = head_start, []
    for token in reversed(tokens):
        opened = token[:1] in _OPENERS
        word = token[1:] if opened else token
        if not word or not accept(word):
            break
        taken.append(word)
        start -= len(word) + 1
        if opened or len(taken) >= 6:
            break
    while taken and taken[-1] in _CONNECTORS:  # never start on "of" / "the"
        start += len(taken.pop()) + 1
    return start, taken


def _capitalised_word(token: str) -> bool:
    return bool(_NAME_TOKEN_RE.match(token)) and token.rstrip(",.") not in _HEADER_STOP and not token.endswith(",")


def institutions(text: str) -> list[Candidate]:
    """Hospital, clinic, laboratory and university names: capitalised words (with "of", "the", "&") ending in
    an institution word, "University of X" / "Hospital of the X" forms, names after a leading institution word
    ("Klinikum Peine") and, in lower-case text, unknown words before an institution word."""
    out = []
    for m in _HEAD_RE.finditer(text):
        start, taken = _walk_back(text, m.start(), _capitalised_word)
        end = m.end()
        tail = _OF_TAIL_RE.match(text, end)
        head = m.group().title() if m.group().isupper() else m.group()
        if tail and head not in _WEAK_HEADS | {"Health"}:
            last = tail.group(1).split()
            while last and last[-1] in _CONNECTORS:
                last.pop()
            if last:
                end = tail.start(1) + len(" ".join(last))
        if head in _WEAK_HEADS and not (taken and taken[0].title() in _WEAK_HEAD_QUALIFIERS):
            continue  # "Center", "Group" need "Medical Center", "Health Group"
        if end == m.end() and all(word.lower() in KNOWN_WORDS or word.title() in _WEAK_HEAD_QUALIFIERS
                                  or word in _CONNECTORS for word in taken):
            continue  # "Hospital", "Oncology Clinic", "the University" name no institution
        out.append(Candidate("INSTITUTION", start, end, PATTERN))
    out += [Candidate("INSTITUTION", m.start(), m.end(), PATTERN) for m in _LEADING_RE.finditer(text)]
    for m in _LOWER_HEAD_RE.finditer(text):
        start, taken = _walk_back(text, m.start(), _unknown_lower_word)
        if any(word not in _QUALIFIERS_LOWER for word in taken):
            out.append(Candidate("INSTITUTION", start, m.end(), PATTERN))
    return out


_QUALIFIERS_LOWER = frozenset(word.lower() for word in _WEAK_HEAD_QUALIFIERS)


def _unknown_lower_word(token: str) -> bool:
    return token.isalpha() and token.islower() and (token not in KNOWN_WORDS or token in _QUALIFIERS_LOWER)
