"""The pattern rules of de-identification: dates, e-mail addresses, phone numbers, accession numbers, MRNs and
street addresses, each found as typed :class:`~pathmm_pipeline.reports.phi_rules.Candidate` spans.

:func:`date_spans` finds dates (03/14/2026, 2026-03-14, March 14, 2026, 14-Mar-2026, 14th of March 2026, March
2026, with an optional time; impossible numeric dates are skipped); :func:`contact_spans` finds e-mail
addresses, US and international phone numbers (patterns and ``Tel:`` / ``Phone:`` fields), accession numbers
(patterns and ``Accession`` / ``Case #`` fields), MRNs (``MRN`` fields and bare 7-12 digit numbers, the latter
at list priority) and street addresses (number + capitalised words + street suffix, with unit, city, state and
ZIP; ``Address:`` fields). :mod:`pathmm_pipeline.reports.deid` resolves their overlaps with the name rules.
"""

from __future__ import annotations

import re

from pathmm_pipeline.reports.phi_rules import EXACT, KEYED, LIST, PATTERN, Candidate

# ----------------------------------------------------------------------------------------------- patterns
_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
          r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
_TIME = r"(?:,?[ ](?:at[ ])?\d{1,2}:\d{2}(?::\d{2})?(?:[ ]?[AaPp]\.?[Mm]\.?)?)?"
_ORD = r"(?:st|nd|rd|th)?"
_WEEKDAY = r"(?:(?:Mon|Tue|Tues|Wed|Wednes|Thu|Thur|Thurs|Fri|Sat|Satur|Sun)(?:day)?\.?,?[ ])?"
_DATE_RES = [
    # 03/14/2026, 14.03.2026, 3-14-26 (validated below)
    (re.compile(r"(?<![\w/.\-])(?P<a>\d{1,2})(?P<s>[/.\-])(?P<b>\d{1,2})(?P=s)(?P<y>\d{4}|\d{2})(?![\w/]|[.\-]\d)"
                + _TIME), "numeric"),
    # 2026-03-14, 2026/03/14
    (re.compile(r"(?<![\w/.\-])(?P<y>(?:19|20)\d{2})(?P<s>[/.\-])(?P<a>\d{1,2})(?P=s)(?P<b>\d{1,2})"
                r"(?:[Tt]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+\-]\d{2}:?\d{2})?)?(?![\w/]|[.\-]\d)" + _TIME),
     "iso"),
    # 14-Mar-2026, 14 March 2026, 14th of March, 2026
    (re.compile(rf"(?i)(?<![\w/.\-]){_WEEKDAY}(?:the[ ])?\d{{1,2}}{_ORD}[ \-](?:of[ ])?{_MONTH}\.?,?[ \-]\d{{2,4}}"
                r"(?![\w])" + _TIME), "dmy"),
    # March 14, 2026 ; Mar. 14 2026 ; Sunday, December 12, 2021
    (re.compile(rf"(?i)(?<![\w]){_WEEKDAY}(?:{_MONTH})\.?[ ]\d{{1,2}}{_ORD},?[ ](?:19|20)\d{{2}}(?!\d)" + _TIME),
     "mdy"),
    # 1st of September ; the 3rd of March ; 14 March (no year; the month capitalised unless "of" says it)
    (re.compile(rf"(?i)(?<![\w/.\-]){_WEEKDAY}(?:the[ ])?\d{{1,2}}(?:st|nd|rd|th)?[ ]of[ ]{_MONTH}(?![\w])"), "dm"),
    (re.compile(rf"(?<![\w/.\-])\d{{1,2}}(?:st|nd|rd|th)?[ ]{_MONTH}\.?(?![\w])"), "dm"),
    # March 10th, DECEMBER 21ST (no year: the ordinal says it is a day)
    (re.compile(rf"(?i)(?<![\w]){_WEEKDAY}{_MONTH}\.?[ ]\d{{1,2}}(?:st|nd|rd|th)(?![\w])"), "md"),
    # March 2026
    (re.compile(rf"(?i)(?<![\w])(?:{_MONTH})\.?,?[ ](?:19|20)\d{{2}}(?!\d)"), "my"),
    # 03/2026 (month and year)
    (re.compile(r"(?<![\w/.\-])(?:0?[1-9]|1[0-2])/(?:19|20)\d{2}(?![\w/]|[.\-]\d)"), "mon_year"),
    # March 14 (no year): month must be capitalised
    (re.compile(rf"(?<![\w])(?:{_MONTH})\.?[ ]\d{{1,2}}{_ORD}(?![\d,.:]*\d)(?![\w])"), "md"),
]
_EMAIL_RE = re.compile(r"(?<![\w.+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
_PHONE_RES = [
    re.compile(r"(?<![\w+])(?:\+?1[ .\-]?|00\d{1,3}[ .\-]|011[ .\-])?(?:\(\d{3}\)[ ]?|\d{3}[ .\-])\d{3}[ .\-]\d{4}"
               r"(?:[ ]*(?:x|ext\.?|extension)[ ]*\d{1,5})?(?![\d])"),
    # international: +44 (0)20 7946 0958, +49(0)9244852995, +33 5 59 08 21 23 (groups always separated)
    re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .\-]?\(\d{1,5}\))?[ .\-]?\d{1,12}(?:[ .\-]\d{1,10}){0,5}(?![\w]|[.,]\d)"),
    # national with a trunk 0: 020 7946 0958, (037) 0179675, 01632 960 730 (a separator or parenthesis needed)
    re.compile(r"(?<![\w+.\-/])(?:\(0\d{1,4}\)[ \-]?|0\d{1,4}[ \-])\d{2,8}(?:[ \-]\d{2,4}){0,4}(?![\w\-/]|[.,]\d)"),
    # nine digits in three groups of three (many European mobile and landline numbers)
    re.compile(r"(?<![\w+.\-/])\d{3}[ ]\d{3}[ ]\d{3}(?![\w\-/]|[.,]\d)"),
]
_PHONE_KEY_RE = re.compile(
    r"(?i)(?:\b(?:tel(?:ephone)?|phone|ph|fax|facsimile|telefax|pager|beeper|bleep|cell(?:ular)?|mobile|"
    r"contact[ ]+(?:number|no\.?)|call(?:[ ]+back)?|office|home|work|direct|switchboard|hotline|telefon|t[ée]l[ée]fono|"
    r"telefono|t[ée]l[ée]phone)\b|(?<![\w])[TFPMCHOW](?=[ ]*:)|\((?:f|t|p|m|c|h|o)\))\.?[ ]*(?:no\.?|number|#)?"
    r"[ ]*[:#]?[ ]*(?P<v>\+?\(?\d[\d ().\-]{5,25}\d(?:[ ]*(?:x|ext\.?)"
    r"[ ]*\d{1,5})?)")
_ACCESSION_RES = [
    re.compile(r"(?<![\w\-/])[A-Z]{1,4}-?\d{2}-\d{3,7}(?![\w\-])"),
    re.compile(r"(?<![\w\-/])\d{2,4}-(?i:[A-Z]{1,3})-\d{3,7}(?![\w\-])"),
    re.compile(r"(?<![\w\-])TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}(?:-[A-Z0-9]{2,3}[A-Z]?)*(?![\w\-])"),
]
_ACCESSION_KEY_RE = re.compile(
    r"(?i)\b(?:accession|acc\.|case|surgical[ ]+pathology|path(?:ology)?|lab(?:oratory)?|specimen|"
    r"requisition|consult(?:ation)?)(?:[ ]+(?:number|no\.?|#|id))?(?:[ ]*[:#]|(?<=accession)|(?<=\.)[ ])[ ]*"
    r"(?P<v>[A-Z0-9][A-Z0-9\-/.]{0,30}\d[A-Z0-9]{0,20})(?![\w\-])")
_MRN_KEY_RE = re.compile(
    r"(?i)\b(?:mrn|mr[ ]?#|mr[ ]?no\.?|med(?:ical)?\.?[ ]+rec(?:ord)?s?\.?(?:[ ]+(?:number|no\.?|#))?|"
    r"(?:patient|pt\.?)[ ]+(?:id|identifier|number|no\.?|#)|record[ ]*(?:number|no\.?|#)|"
    r"hospital[ ]+(?:number|no\.?|#|id)|unit[ ]+(?:number|no\.?)|chart[ ]*(?:number|no\.?|#)|"
    r"health[ ]+(?:card|record)[ ]+(?:number|no\.?)|nhs[ ]+(?:number|no\.?)|account[ ]*(?:number|no\.?|#)|"
    r"acct\.?[ ]*#?|ssn|social[ ]+security[ ]+(?:number|no\.?)|encounter[ ]+(?:id|number|no\.?)|"
    r"id[ ]*(?:number|no\.?|#))(?:[ ]*[:#=][ ]*|[ ]+(?:is[ ]+|was[ ]+)?)"
    r"(?P<v>[A-Z]{0,4}-?\d[\d.\-/]{0,30}\d[A-Z]?|\d{3,4}(?:[ ]\d{3,4}){1,3}(?![ ]*(?:mm|cm)))(?![\w\-])")
_BARE_NUMBER_RE = re.compile(r"(?<![\w.\-/,])\d{7,12}(?![\w.\-/]|,\d)")

#: street suffixes: the USPS standard suffixes (Publication 28, appendix C1) in their full and common short forms,
#: and British ones
_STREET_WORDS = """
Alley Aly Annex Arcade Avenue Ave Av Bayou Beach Bend Bluff Bluffs Bottom Boulevard Blvd Branch Bridge Brook Brooks
Burg Burgs Bypass Camp Canyon Cape Causeway Center Centers Circle Cir Circles Cliff Cliffs Close Club Common Commons
Corner Corners Course Court Ct Courts Cove Coves Creek Crescent Cres Crest Crossing Crossroad Crossroads Curve Dale
Dam Divide Drive Dr Drives Estate Estates Expressway Expy Extension Ext Fall Falls Ferry Field Fields Flat Flats
Ford Fords Forest Forge Forges Fork Forks Fort Freeway Fwy Garden Gardens Gdns Gateway Glen Glens Green Greens Grove
Groves Harbor Harbors Haven Heights Hts Highway Hwy Hill Hills Hollow Inlet Island Islands Isle Junction Junctions
Key Keys Knoll Knolls Lake Lakes Land Landing Lane Ln Light Lights Loaf Lock Locks Lodge Loop Mall Manor Manors
Meadow Meadows Mews Mill Mills Mission Motorway Mount Mountain Mountains Neck Orchard Oval Overpass Park Parks Parkway
Pkwy Parkways Pass Passage Path Pike Pine Pines Place Pl Plain Plains Plaza Plz Point Pt Points Port Ports Prairie
Radial Ramp Ranch Rapid Rapids Rest Ridge Ridges River Road Rd Roads Route Rte Row Rue Run Shoal Shoals Shore Shores
Skyway Spring Springs Spur Spurs Square Sq Squares Station Sta Stravenue Stream Street St Streets Summit Terrace Ter
Throughway Trace Track Trafficway Trail Trl Trailer Tunnel Turnpike Tpke Underpass Union Unions Valley Valleys Via
Viaduct View Views Village Vlg Villages Ville Vista Walk Walks Wall Way Ways Well Wells Wynd Gate Grange Rise Hill
""".split()
_STREET_SUFFIX = "(?:" + "|".join(sorted(set(_STREET_WORDS), key=len, reverse=True)) + ")"
_UNIT = r"(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Fl|Room|Rm|Bldg|Building|Box|\#)"
_STATES = ("AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY "
           "NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY").split()
_STATE = "(?:" + "|".join(_STATES) + ")"
_CITY = r"(?:St\.[ ])?[A-Z][a-zA-Z'\-]+(?:[ ][A-Z][a-zA-Z'\-]+){0,2}"
_ADDRESS_RES = [
    re.compile(rf"(?<![\w.\-])\d{{1,6}}[A-Z]?[ ](?:[NSEW]\.?[ ])?(?:[A-Z][A-Za-z'\-]*\.?[ ]){{1,4}}"
               rf"(?i:{_STREET_SUFFIX})\b\.?(?:,?[ ](?i:{_UNIT})\.?[ ]?[\w\-]{{1,8}})?"
               rf"(?:,[ ]?{_CITY}(?:,[ ]?{_STATE}\b)?(?:[ ]{{1,2}}\d{{5}}(?:-\d{{4}})?)?)?"),
    re.compile(rf"(?<![\w])(?:{_CITY}),[ ]?{_STATE}[ ]{{1,2}}\d{{5}}(?:-\d{{4}})?(?!\d)"),
    # European forms: Hauptstraße 5, Müllerstr. 12a, Via Roma 12, ul. Długa 7, 12 rue de la Paix, Calle Mayor 3
    re.compile(r"(?<![\w])[A-ZÄÖÜ][\wäöüß\-]{1,30}(?:straße|strasse|str\.|weg|gasse|platz|allee|ring|damm|laan|"
               r"straat|gracht|plein|dreef|kade|singel)[ ]\d{1,4}[a-z]?\b"),
    re.compile(r"(?<![\w])(?:Via|Viale|Piazza|Piazzale|Corso|Vicolo|Largo|Borgo|Contrada|Vico|Strada|Calle|Avenida|"
               r"Avda\.|Paseo|Plaza|Ronda|Rambla|Camino|Carretera|Cuesta|Travesía|Glorieta|Pasaje|Callejón|Carrer|"
               r"Rua|Ul\.|ul\.|Ulica|ulica|Aleja|al\.|Plac|pl\.|Osiedle|os\.)[ ](?:[\w'\-.]{1,30}[ ]){0,4}?"
               r"[\w'\-.]{1,30},?[ ]\d{1,4}[A-Za-z]?(?:/\d{1,4})?"
               r"(?:,?[ ](?:Apt|Piso|Puerta|Int|Scala|m)\.?[ ]?\d{1,4})?"
               r"\b"),
    # British flats: "Flat 98, Cox Shoal", "Studio 42, Marion Brooks"
    re.compile(rf"(?<![\w])(?:Flat|Studio|Apartment|Unit|Suite|Room)[ ]\d{{1,4}}[A-Za-z]?,[ ]"
               rf"(?:[A-Z][A-Za-z'\-]*[ ]){{1,3}}(?i:{_STREET_SUFFIX})\b"),
    re.compile(r"(?<![\w])\d{1,4}(?:[ ]?bis|[ ]?ter)?,?[ ](?:rue|avenue|boulevard|bd|chemin|allée|place|impasse|"
               r"quai|route|cours|passage|square)[ ](?:(?:de|du|des|la|le|l'|d')[ ]?){0,2}[\w'\-]{2,30}"
               r"(?:[ ][A-Z\u00c0-\u00de][\w'\-]{1,30}){0,3}", re.IGNORECASE),
    re.compile(r"(?i)(?<![\w])P\.?[ ]?O\.?[ ]+Box[ ]+\d+"),
]
_ADDRESS_KEY_RE = re.compile(
    r"(?im)\b(?:(?:home|street|mailing|patient)[ ]+)?address[ ]*:[ ]*(?P<v>[^\n]*?)(?=[ ]{2,}|\t|$)|"
    r"\b(?:resides|residing|lives|living)[ ]+(?:at|on)[ ]+(?P<v2>\d[^\n.;]*?)(?=[.;]|[ ]{2,}|$)")


def _valid_numeric_date(a: int, b: int, year: str) -> bool:
    if not (1 <= a <= 31 and 1 <= b <= 31):
        return False
    if a > 12 and b > 12:
        return False
    return len(year) == 2 or 1900 <= int(year) <= 2099


def date_spans(text: str) -> list[Candidate]:
    out = []
    for pattern, kind in _DATE_RES:
        for m in pattern.finditer(text):
            if kind in ("numeric", "iso"):
                if not _valid_numeric_date(int(m["a"]), int(m["b"]), m["y"]):
                    continue
                if kind == "iso" and not (1 <= int(m["a"]) <= 12):
                    continue
            out.append(Candidate("DATE", m.start(), m.end(), PATTERN))
    return out


def contact_spans(text: str) -> list[Candidate]:
    out = [Candidate("EMAIL", m.start(), m.end(), EXACT) for m in _EMAIL_RE.finditer(text)]
    for pattern in _PHONE_RES:
        for m in pattern.finditer(text):
            digits = sum(ch.isdigit() for ch in m.group())
            if digits >= 10 or (m.group().startswith(("+", "(0", "0")) and 9 <= digits <= 15) or digits == 9 \
                    or (m.group().startswith("+") and digits >= 8):
                out.append(Candidate("PHONE", m.start(), m.end(), PATTERN))
    for m in _PHONE_KEY_RE.finditer(text):
        if sum(ch.isdigit() for ch in m["v"]) >= 7:
            value = m["v"].rstrip(" .-")
            out.append(Candidate("PHONE", m.start("v"), m.start("v") + len(value), KEYED))
    for pattern in _ACCESSION_RES:
        out += [Candidate("ACCESSION", m.start(), m.end(), PATTERN) for m in pattern.finditer(text)]
    for m in _ACCESSION_KEY_RE.finditer(text):
        value = m["v"].rstrip(".")
        if sum(ch.isdigit() for ch in value) >= 3 and not _DATE_RES[0][0].fullmatch(value):
            out.append(Candidate("ACCESSION", m.start("v"), m.start("v") + len(value), KEYED))
    for m in _MRN_KEY_RE.finditer(text):
        value = m["v"].rstrip(".")
        if sum(ch.isdigit() for ch in value) >= 4:
            out.append(Candidate("MRN", m.start("v"), m.start("v") + len(value), KEYED))
    out += [Candidate("MRN", m.start(), m.end(), LIST) for m in _BARE_NUMBER_RE.finditer(text)]
    for pattern in _ADDRESS_RES:
        out += [Candidate("ADDRESS", m.start(), m.end(), PATTERN) for m in pattern.finditer(text)]
    for m in _ADDRESS_KEY_RE.finditer(text):
        group = "v" if m["v"] is not None else "v2"
        value = m[group].rstrip(" ,;")
        if value and (any(ch.isdigit() for ch in value) or len(value.split()) >= 2):
            out.append(Candidate("ADDRESS", m.start(group), m.start(group) + len(value), KEYED))
    return out
