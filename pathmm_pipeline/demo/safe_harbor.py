"""Synthetic pathology reports with planted HIPAA Safe Harbor identifiers, drawn by Faker, for an independent
score of a de-identifier (:func:`pathmm_pipeline.reports.phi_eval.score_deid`).

The values come from Faker (names from eight locales, cities, streets, e-mail domains, URLs, IP addresses) and
from random formats written here; none come from the de-identifier's own word lists. Each report is one of the
:data:`TEMPLATES`, strings in which ``{slot}`` is replaced by an identifier (with its label, title or credential
as plain text) or a clinical term, and ``[[term]]`` marks a fixed clinical term. The text is built piece by piece
and every identifier and clinical term is recorded with its offsets as it is written, so
``text[start:end] == value`` holds by construction (and :func:`check_offsets` verifies it).

Conventions: an identifier span holds only the identifying part ("Dr. " and ", MD" stay outside a NAME, "MRN"
outside the MRN, the "-year-old" outside an AGE_OVER_89 "92"). Ages of 89 and under are clinical terms to keep.
STATE is planted too, although Safe Harbor allows a state to stay: its row can be read on its own.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import random
import re
import string
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pathmm_pipeline.reports.phi_eval import SAFE_HARBOR_CATEGORIES

#: the Faker locales that names (and European addresses and phone numbers) are drawn from
LOCALES: tuple[str, ...] = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "pl_PL", "nl_NL")
KEEP = "KEEP"

Piece = tuple[str | None, str]  # (identifier category, KEEP for a clinical term, or None for plain text; text)


@dataclass(frozen=True)
class PlantedReport:
    """A synthetic report, its planted identifiers ``(category, start, end, value)`` and the clinical terms
    ``(start, end, term)`` that a de-identifier must keep; ``template`` names the layout it was written from."""

    text: str
    identifiers: list[tuple[str, int, int, str]]
    clinical: list[tuple[int, int, str]]
    template: str


@dataclass(frozen=True)
class _Person:
    first: str
    last: str
    middle: str
    female: bool


_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_ROMAN = ("I", "II", "III", "IV", "V")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _ascii(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z]", "", plain).lower()


class _Case:
    """The identifiers of one report, drawn once, and the slots that write them in varied forms."""

    def __init__(self, rng: random.Random, fakers: dict[str, Any], places: Any) -> None:
        self.rng = rng
        self.fakers = fakers
        self.us = places
        self.patient_locale = rng.choice(LOCALES[:1] * 3 + LOCALES[1:])
        self.patient = self._person(self.patient_locale)
        self.doctors = [self._person(rng.choice(LOCALES)) for _ in range(3)]
        self.age = rng.randint(90, 104) if rng.random() < 0.3 else rng.randint(18, 89)
        base = dt.datetime(2012, 1, 1) + dt.timedelta(days=rng.randint(0, 14 * 365), minutes=rng.randint(420, 1080))
        self.collected = base
        self.received = base + dt.timedelta(hours=rng.randint(1, 30))
        self.signed = self.received + dt.timedelta(days=rng.randint(1, 6), minutes=rng.randint(0, 300))
        self.dob = base - dt.timedelta(days=365 * self.age + rng.randint(1, 360))
        self.mrn = self._mrn_value()
        self.accession = self._accession_value()
        city = self.us.city()
        self.institution = rng.choice([
            f"{city} General Hospital", f"{self.us.last_name()} Memorial Medical Center",
            f"St. {self.us.first_name()}'s Hospital", f"{city} Regional Medical Center",
            f"University Hospital of {city}", f"{self.us.last_name()} Cancer Institute",
            f"{city} Community Clinic", f"{self.us.last_name()}-{self.us.last_name()} Pathology Associates",
            f"{city} Children's Hospital", f"Mount {self.us.last_name()} Hospital"])
        other = fakers[rng.choice(LOCALES)]
        self.outside = rng.choice([
            f"{other.city()} University Medical Center", f"Klinikum {fakers['de_DE'].city()}",
            f"Hôpital {fakers['fr_FR'].last_name()}", f"Ospedale {fakers['it_IT'].city()}",
            f"{self.us.city()} Veterans Affairs Medical Center", f"{other.last_name()} Clinic"])

    # ------------------------------------------------------------------------------------------ drawing
    def _person(self, locale: str) -> _Person:
        fake, female = self.fakers[locale], self.rng.random() < 0.5
        first = fake.first_name_female() if female else fake.first_name_male()
        return _Person(first, fake.last_name(), self.rng.choice(string.ascii_uppercase), female)

    def _digits(self, n: int) -> str:
        return "".join(self.rng.choice(string.digits) for _ in range(n))

    def _letters(self, n: int) -> str:
        return "".join(self.rng.choice(string.ascii_uppercase) for _ in range(n))

    def _mrn_value(self) -> str:
        return self.rng.choice([f"00{self._digits(5)}", self._digits(7), self._digits(8), f"E{self._digits(7)}",
                                self._digits(10), f"{self._digits(3)}-{self._digits(3)}-{self._digits(2)}"])

    def _accession_value(self) -> str:
        yy = f"{self.collected.year % 100:02d}"
        return self.rng.choice([
            f"S{yy}-{self._digits(5)}", f"SP-{yy}-{self._digits(6)}", f"SP{yy}-{self._digits(5)}",
            f"CY-{yy}-{self._digits(5)}", f"{self.collected.year}-S-{self._digits(5)}", f"H{yy}-{self._digits(4)}",
            f"NS-{yy}-{self._digits(4)}", f"{self._letters(2)}{yy}{self._digits(6)}"])

    def _us_phone(self) -> str:
        a, b, c = self.rng.randint(201, 989), self.rng.randint(200, 999), self.rng.randint(0, 9999)
        return self.rng.choice([
            f"({a}) {b}-{c:04d}", f"{a}-{b}-{c:04d}", f"{a}.{b}.{c:04d}", f"{a} {b} {c:04d}",
            f"+1 {a} {b} {c:04d}", f"+1-{a}-{b}-{c:04d}", f"1-{a}-{b}-{c:04d}", f"{a}{b}{c:04d}",
            f"{a}-{b}-{c:04d} ext. {self._digits(3)}", f"({a}){b}-{c:04d} x{self._digits(4)}",
            self.us.phone_number()])

    def _phone_value(self) -> str:
        if self.rng.random() < 0.3:
            return str(self.fakers[self.rng.choice(LOCALES[1:])].phone_number()).strip()
        return self._us_phone()

    def _date(self, when: dt.datetime, forms: tuple[str, ...] | None = None) -> str:
        d, month = when, _MONTHS[when.month - 1]
        forms = forms or ("mdy", "iso", "dmy_dot", "long", "d_mon_y", "d_MON_y", "ordinal_of", "month_ordinal",
                          "mon_year", "mdy_time", "iso_time", "long_time", "mdy_short", "dmy_slash", "d_month_y",
                          "weekday")
        hour12 = f"{(d.hour - 1) % 12 + 1}:{d.minute:02d} {'AM' if d.hour < 12 else 'PM'}"
        out = {
            "mdy": f"{d.month:02d}/{d.day:02d}/{d.year}", "iso": f"{d.year}-{d.month:02d}-{d.day:02d}",
            "dmy_dot": f"{d.day:02d}.{d.month:02d}.{d.year}", "long": f"{month} {d.day}, {d.year}",
            "d_mon_y": f"{d.day} {month[:3]} {d.year}", "d_MON_y": f"{d.day:02d}-{month[:3].upper()}-{d.year}",
            "ordinal_of": f"{_ordinal(d.day)} of {month}" + self.rng.choice(["", f" {d.year}", f", {d.year}"]),
            "month_ordinal": f"{month} {_ordinal(d.day)}" + self.rng.choice(["", f", {d.year}"]),
            "mon_year": self.rng.choice([f"{month[:3]} {d.year}", f"{month} {d.year}", f"{month[:3]}. {d.year}"]),
            "mdy_time": f"{d.month:02d}/{d.day:02d}/{d.year} {d.hour:02d}:{d.minute:02d}",
            "iso_time": self.rng.choice([f"{d:%Y-%m-%dT%H:%M:%S}", f"{d:%Y-%m-%d %H:%M}"]),
            "long_time": f"{month} {d.day}, {d.year} at {hour12}", "mdy_short": f"{d.month}/{d.day}/{d.year % 100:02d}",
            "dmy_slash": f"{d.day:02d}/{d.month:02d}/{d.year}", "d_month_y": f"{d.day} {month} {d.year}",
            "weekday": f"{_WEEKDAYS[d.weekday()]}, {month} {d.day}, {d.year}",
        }
        return out[self.rng.choice(forms)]

    # ------------------------------------------------------------------------------------------ names
    def _name(self, p: _Person, forms: tuple[str, ...]) -> list[Piece]:
        form = self.rng.choice(forms)
        value = {"full": f"{p.first} {p.last}", "middle": f"{p.first} {p.middle}. {p.last}",
                 "last_first": f"{p.last.upper()}, {p.first}", "LAST_FIRST": f"{p.last}, {p.first}".upper(),
                 "last_comma": f"{p.last}, {p.first} {p.middle}.", "first": p.first, "last": p.last,
                 "initial": f"{p.first[0]}. {p.last}", "upper": f"{p.first} {p.last}".upper()}[form]
        return [("NAME", value)]

    def _doctor(self, p: _Person) -> list[Piece]:
        style = self.rng.random()
        if style < 0.35:
            title = self.rng.choice(["Dr. ", "Dr. ", "Dr ", "DR. ", "Doctor ", "Prof. Dr. ", "Dr."])
            return [(None, title), *self._name(p, ("full", "last", "last", "middle", "initial"))]
        if style < 0.75:
            cred = self.rng.choice([", MD", ", M.D.", " MD", ", MD, PhD", ", DO", ", FRCPath", ", MBBS",
                                    ", M.D., Ph.D."])
            return [*self._name(p, ("full", "middle", "initial", "upper")), (None, cred)]
        return self._name(p, ("full", "middle", "last_comma", "last_first"))

    def s_patient(self) -> list[Piece]:
        return self._name(self.patient, ("full", "middle", "last_first", "LAST_FIRST", "last_comma", "upper"))

    def s_patient_field(self) -> list[Piece]:
        label = self.rng.choice(["Patient: ", "Patient Name: ", "Name: ", "PATIENT: ", "Pt: ", "Patient:", "Name:",
                                 "Patient name ", "Re: "])
        return [(None, label), *self.s_patient()]

    def s_first(self) -> list[Piece]:
        return self._name(self.patient, ("first",))

    def s_patient_ref(self) -> list[Piece]:
        title = "Ms. " if self.patient.female else "Mr. "
        return self.rng.choice([[(None, title), *self._name(self.patient, ("last",))], self.s_first(),
                                self._name(self.patient, ("last",)), self._name(self.patient, ("full",))])

    def s_dr_path(self) -> list[Piece]:
        return self._doctor(self.doctors[0])

    def s_dr_clin(self) -> list[Piece]:
        return self._doctor(self.doctors[1])

    def s_dr_res(self) -> list[Piece]:
        return self._doctor(self.doctors[2])

    def s_dr_clin_last(self) -> list[Piece]:
        return [(None, self.rng.choice(["Dr. ", "Dr ", "Dr."])), ("NAME", self.doctors[1].last)]

    def s_dr_sig(self) -> list[Piece]:
        p = self.doctors[0]
        return [*self._name(p, ("full", "middle", "upper")),
                (None, self.rng.choice([", MD", ", M.D.", ", MD, FCAP", ", DO", " MD"]))]

    # ------------------------------------------------------------------------------------------ dates, ages
    def s_dob(self) -> list[Piece]:
        return [("DATE", self._date(self.dob, ("mdy", "iso", "dmy_dot", "long", "d_mon_y", "d_MON_y", "mdy_short",
                                               "dmy_slash", "d_month_y")))]

    def s_dob_field(self) -> list[Piece]:
        label = self.rng.choice(["DOB: ", "DOB ", "D.O.B.: ", "Date of Birth: ", "Born ", "Birth date: ", "DOB:"])
        return [(None, label), *self.s_dob()]

    def s_collected(self) -> list[Piece]:
        return [("DATE", self._date(self.collected))]

    def s_received(self) -> list[Piece]:
        return [("DATE", self._date(self.received))]

    def s_signed(self) -> list[Piece]:
        return [("DATE", self._date(self.signed))]

    def s_prior(self) -> list[Piece]:
        when = self.collected - dt.timedelta(days=self.rng.randint(30, 900))
        return [("DATE", self._date(when, ("ordinal_of", "month_ordinal", "mon_year", "long", "mdy", "d_mon_y")))]

    def s_age(self) -> list[Piece]:
        n = str(self.age)
        forms = [("", "-year-old"), ("age ", ""), ("aged ", " years"), ("", " y/o"), ("", " yo"),
                 ("", " years old"), ("", "-yr-old"), ("", "-year-old")]
        before, after = self.rng.choice(forms)
        if self.age > 89:
            return [(None, before), ("AGE_OVER_89", n), (None, after)]
        return [(KEEP, f"{before}{n}{after}")]

    def s_age_rel(self) -> list[Piece]:
        return [(KEEP, self.rng.choice(["age {}", "{}-year-old", "aged {} years"]).format(self.rng.randint(35, 89)))]

    # ------------------------------------------------------------------------------------------ numbers
    def s_phone(self) -> list[Piece]:
        return [("PHONE", self._phone_value())]

    def s_phone_field(self) -> list[Piece]:
        label = self.rng.choice(["Tel: ", "Phone: ", "Ph. ", "Telephone: ", "tel. ", "T: ", "phone ", "Pager: ",
                                 "Cell: ", "Office: ", "(p) ", "Tel.:"])
        return [(None, label), *self.s_phone()]

    def s_fax_field(self) -> list[Piece]:
        label = self.rng.choice(["Fax: ", "FAX ", "F: ", "Fax no. ", "fax ", "(f) ", "Fax#", "Facsimile: "])
        return [(None, label), ("FAX", self._phone_value())]

    def s_ssn(self) -> list[Piece]:
        ssn = str(self.us.ssn())
        return [("SSN", self.rng.choice([ssn, ssn, ssn.replace("-", " ")]))]

    def s_ssn_field(self) -> list[Piece]:
        label = self.rng.choice(["SSN: ", "SSN ", "Social Security #: ", "Social Security Number: ", "SS# ", "SSN#"])
        ssn = str(self.us.ssn())
        return [(None, label), ("SSN", self.rng.choice([ssn, ssn.replace("-", " "), ssn.replace("-", "")]))]

    def s_mrn(self) -> list[Piece]:
        return [("MRN", self.mrn)]

    def s_mrn_field(self) -> list[Piece]:
        style = self.rng.random()
        digits = re.sub(r"\D", "", self.mrn)
        if style < 0.15:
            return [(None, self.rng.choice(["MRN", "MR#", "MRN:"])), ("MRN", digits)]
        if style < 0.25:
            return [(None, self.rng.choice(["MRN # ", "MR # ", "MRN No. "])), ("MRN", f"{digits[:3]} {digits[3:]}")]
        label = self.rng.choice(["MRN: ", "MRN ", "MRN#: ", "MR# ", "Med Rec #: ", "Medical Record No. ", "PID: ",
                                 "Medical Record Number: ", "Hospital No.: ", "Unit No. ", "Patient ID: ", "Chart # "])
        return [(None, label), ("MRN", self.mrn)]

    def s_acc(self) -> list[Piece]:
        return [("ACCESSION", self.accession)]

    def s_acc_field(self) -> list[Piece]:
        label = self.rng.choice(["Accession #: ", "Accession No. ", "Acc#", "Case #: ", "Case No.: ", "Lab No. ",
                                 "Surgical Pathology No.: ", "Specimen ID: ", "ACCESSION: ", "Accession "])
        return [(None, label), *self.s_acc()]

    def s_plan_field(self) -> list[Piece]:
        label = self.rng.choice(["Health plan ID: ", "Member ID: ", "Insurance ID ", "Medicaid #: ", "Medicare No. ",
                                 "Policy #: ", "Subscriber ID: ", "Beneficiary No.: ", "Member#"])
        value = self.rng.choice([f"{self._letters(3)}{self._digits(9)}", f"{self._digits(9)}{self._letters(1)}",
                                 f"{self._digits(1)}{self._letters(2)}{self._digits(1)}-{self._letters(2)}"
                                 f"{self._digits(1)}-{self._letters(2)}{self._digits(2)}", f"W{self._digits(10)}"])
        return [(None, label), ("HEALTH_PLAN", value)]

    def s_account_field(self) -> list[Piece]:
        label = self.rng.choice(["Account #: ", "Acct No. ", "Acct#", "Billing Account: ", "Encounter #: ",
                                 "Visit No. ", "FIN: ", "Account number "])
        value = self.rng.choice([self._digits(10), f"A{self._digits(8)}", f"{self._digits(4)}-{self._digits(6)}"])
        return [(None, label), ("ACCOUNT", value)]

    def s_device_field(self) -> list[Piece]:
        label = self.rng.choice(["Device S/N: ", "pacemaker serial no. ", "implant serial # ", "Serial number: ",
                                 "UDI: ", "ICD serial ", "lot/serial "])
        value = self.rng.choice([f"{self._letters(3)}{self._digits(7)}", f"SN-{self._digits(2)}{self._letters(1)}"
                                 f"{self._digits(4)}", f"(01){self._digits(14)}(21){self._letters(2)}{self._digits(6)}",
                                 f"{self._digits(6)}-{self._digits(3)}"])
        return [(None, label), ("DEVICE", value)]

    def s_license_field(self) -> list[Piece]:
        label = self.rng.choice(["License #: ", "Medical license no. ", "State License: ", "NPI: ", "DEA # ",
                                 "Lic. ", "CLIA #: ", "NPI "])
        value = self.rng.choice([f"MD-{self._digits(5)}", f"G{self._digits(5)}", self._digits(10),
                                 f"{self._letters(2)}{self._digits(7)}", f"{self._digits(2)}D{self._digits(7)}"])
        return [(None, label), ("LICENSE", value)]

    # ------------------------------------------------------------------------------------------ internet
    def _domain(self) -> str:
        return str(self.fakers[self.rng.choice(LOCALES)].domain_name())

    def s_email(self) -> list[Piece]:
        p = self.rng.choice(self.doctors)
        value = self.rng.choice([
            f"{_ascii(p.first)}.{_ascii(p.last)}@{self._domain()}", f"{_ascii(p.first)[0]}{_ascii(p.last)}@"
            f"{self._domain()}", str(self.fakers[self.rng.choice(LOCALES)].email()), str(self.us.free_email()),
            f"pathology-{self._letters(2).lower()}@{self._domain()}"])
        return [("EMAIL", value)]

    def s_email_field(self) -> list[Piece]:
        return [(None, self.rng.choice(["Email: ", "E-mail: ", "email ", "e-mail: ", "Contact: "])), *self.s_email()]

    def s_url(self) -> list[Piece]:
        d = self._domain()
        value = self.rng.choice([
            f"https://{d}/portal/results?mrn={re.sub(r'[^0-9]', '', self.mrn)}&case={self._digits(5)}",
            f"https://www.{d}/{self.us.uri_path()}", f"http://{d}/{self.us.slug()}.html", f"www.{d}/pathology",
            f"https://wsi.{d}:8443/viewer/slide/{self._digits(6)}", str(self.us.uri()), f"www.{d}", f"https://{d}/"])
        return [("URL", value)]

    def s_url_field(self) -> list[Piece]:
        return [(None, self.rng.choice(["Portal: ", "URL: ", "Images: ", "Web: ", "available at "])), *self.s_url()]

    def s_ip(self) -> list[Piece]:
        if self.rng.random() < 0.3:
            return [("IP", ipaddress.IPv6Address(self.us.ipv6()).compressed)]
        return [("IP", str(self.rng.choice([self.us.ipv4_private(), self.us.ipv4(), self.us.ipv4_private()])))]

    # ------------------------------------------------------------------------------------------ places
    def _street(self, fake: Any) -> str:
        street = re.sub(r"\s*\n\s*", ", ", str(fake.street_address())).strip()
        if fake is self.us and self.rng.random() < 0.3 and not re.search(r"Apt|Suite", street):
            street += self.rng.choice([f" Apt {self.rng.randint(1, 40)}{self.rng.choice('ABCD')}",
                                       f", Unit {self.rng.randint(1, 999)}", f" {self.us.secondary_address()}"])
        return street

    def _us_address(self) -> list[Piece]:
        zip_code = str(self.rng.choice([self.us.zipcode(), self.us.zipcode(), self.us.zipcode_plus4()]))
        state = str(self.rng.choice([self.us.state_abbr(), self.us.state_abbr(), self.us.state()]))
        sep = self.rng.choice([", ", "\n", ", "])
        return [("ADDRESS", self._street(self.us)), (None, sep), ("CITY", str(self.us.city())), (None, ", "),
                ("STATE", state), (None, self.rng.choice([" ", "  "])), ("ZIP", zip_code)]

    def _foreign_address(self, locale: str) -> list[Piece]:
        fake = self.fakers[locale]
        return [("ADDRESS", self._street(fake)), (None, ", "), ("ZIP", str(fake.postcode())), (None, " "),
                ("CITY", str(fake.city()))]

    def s_pt_address(self) -> list[Piece]:
        if self.patient_locale != "en_US" and self.rng.random() < 0.4:
            return self._foreign_address(self.patient_locale)
        return self._us_address()

    def s_inst_address(self) -> list[Piece]:
        return self._us_address()

    def s_city(self) -> list[Piece]:
        return [("CITY", str(self.us.city()))]

    def s_state(self) -> list[Piece]:
        return [("STATE", str(self.us.state()))]

    def s_zip_field(self) -> list[Piece]:
        label = self.rng.choice(["ZIP ", "zip code ", "ZIP: ", "Zip ", "postal code "])
        return [(None, label), ("ZIP", str(self.rng.choice([self.us.zipcode(), self.us.zipcode_plus4()])))]

    def s_inst(self) -> list[Piece]:
        return [("INSTITUTION", self.institution)]

    def s_outside(self) -> list[Piece]:
        return [("INSTITUTION", self.outside)]

    # ------------------------------------------------------------------------------------------ clinical terms
    def _keep(self, *choices: str) -> list[Piece]:
        return [(KEEP, self.rng.choice(choices))]

    def s_gleason(self) -> list[Piece]:
        a, b = self.rng.choice([(3, 3), (3, 4), (4, 3), (4, 4), (4, 5), (5, 4)])
        return self._keep(f"Gleason {a}+{b}={a + b}", f"Gleason score {a}+{b}={a + b}")

    def s_pt(self) -> list[Piece]:
        return self._keep(*[f"pT{t}" for t in ("1c", "2", "2a", "2b", "3a", "3b", "4")], "ypT1b")

    def s_pn(self) -> list[Piece]:
        return self._keep("pN0", "pN1", "pN1a", "pN2", "pN0 (sn)", "pNX")

    def s_size(self) -> list[Piece]:
        return self._keep(f"{self.rng.randint(1, 60)} mm", f"{self.rng.randint(1, 9)}.{self.rng.randint(0, 9)} mm")

    def s_dims(self) -> list[Piece]:
        a, b, c = (f"{self.rng.randint(1, 9)}.{self.rng.randint(0, 9)}" for _ in range(3))
        return self._keep(f"{a} x {b} cm", f"{a} x {b} x {c} cm")

    def s_ki67(self) -> list[Piece]:
        n = self.rng.randint(1, 95)
        return self._keep(f"Ki-67 {n} %", f"Ki-67: {n}%", f"Ki-67 {n}%")

    def s_er(self) -> list[Piece]:
        return self._keep(f"ER positive ({self.rng.randint(1, 100)} %)", f"ER positive ({self.rng.randint(1, 100)}%)")

    def s_pr(self) -> list[Piece]:
        return self._keep(f"PR positive ({self.rng.randint(1, 100)} %)", "PR negative (0 %)")

    def s_her2(self) -> list[Piece]:
        return self._keep(f"HER2 {self.rng.randint(0, 3)}+", "HER2 2+", "HER2 negative (1+)")

    def s_grade(self) -> list[Piece]:
        return self._keep(f"Grade {self.rng.randint(1, 3)}", f"grade {self.rng.randint(1, 3)}")

    def s_stage(self) -> list[Piece]:
        return self._keep(*[f"Stage {s}" for s in ("IA", "IB", "IIA", "IIB", "IIIA", "IIIB", "IIIC", "IV")])

    def s_nodes(self) -> list[Piece]:
        n = self.rng.randint(3, 30)
        return self._keep(f"{self.rng.randint(0, 3)} of {n} lymph nodes", f"0/{n} lymph nodes")

    def s_cassettes(self) -> list[Piece]:
        return self._keep(f"A1-A{self.rng.randint(4, 24)}", f"B1-B{self.rng.randint(2, 9)}")

    def s_icdo(self) -> list[Piece]:
        return self._keep("8140/3", "8500/3", "8720/3", "8070/3", "8520/3", "8490/3")

    def s_ajcc(self) -> list[Piece]:
        return self._keep("AJCC 8th edition", "AJCC 8th ed.", "AJCC 8th Edition")

    def s_breslow(self) -> list[Piece]:
        return self._keep(f"Breslow thickness {self.rng.randint(0, 6)}.{self.rng.randint(1, 9)} mm")

    def s_clark(self) -> list[Piece]:
        return self._keep(f"Clark level {self.rng.choice(_ROMAN)}")

    def s_nottingham(self) -> list[Piece]:
        return self._keep(f"Nottingham grade {self.rng.randint(1, 3)}", f"Nottingham score {self.rng.randint(3, 9)}")


_HEADER = """{inst}
Department of Pathology and Laboratory Medicine
{inst_address}
{phone_field}   {fax_field}

SURGICAL PATHOLOGY REPORT
{patient_field}            {mrn_field}
{dob_field} ({age})       {acc_field}
Collected: {collected}   Received: {received}
Ordering physician: {dr_clin}   {account_field}
"""

#: report layouts: name -> template with ``{slot}`` identifiers / clinical terms and ``[[term]]`` fixed terms
TEMPLATES: dict[str, str] = {
    "header_synoptic_breast": _HEADER + """
FINAL DIAGNOSIS
Left breast, ultrasound-guided core biopsy: invasive ductal carcinoma, {nottingham}, {size} in greatest core.

SYNOPTIC REPORT ({ajcc})
Procedure: core needle biopsy
Histologic grade: {grade}
Estrogen receptor: {er}
Progesterone receptor: {pr}
HER2 (IHC): {her2}
Proliferation index: {ki67}
ICD-O-3: {icdo}
Blocks: {cassettes}

Electronically signed by {dr_sig} on {signed}   {license_field}
""",
    "narrative_prostate": _HEADER + """
CLINICAL HISTORY: {age} man with rising PSA; prior biopsy {prior} showed {gleason}.

GROSS DESCRIPTION: Received fresh labeled with the name "{patient}" and "{mrn}" is a prostate weighing 42 g
and measuring {dims}. Sections are submitted as {cassettes}.

MICROSCOPIC: Acinar adenocarcinoma, {gleason}, involving both lobes; the dominant nodule measures {size}.
[[Perineural invasion]] is present. {pt} {pn}; {nodes} are negative. {stage} ({ajcc}).

I, {dr_sig}, have personally reviewed the slides. Signed {signed}.
""",
    "consult_letter": """{inst}
{inst_address}

{signed}

{dr_clin}
{outside}
{pt_address}

Re: {patient}, {dob_field}, {mrn_field}, {plan_field}

Dear {dr_clin_last},

Thank you for referring {patient_ref} ({age}) for a second opinion on material from {outside}
(outside case {acc}, collected {collected}). We agree with the diagnosis of melanoma, {breslow},
{clark}, {pt}. Please do not hesitate to call me at {phone} or write to {email}.

Sincerely,
{dr_sig}
{license_field}
{phone_field}
""",
    "addendum_phone_call": _HEADER + """
ADDENDUM ({signed})
Her-2 testing on block A2: {her2}; {ki67}.

COMMENT: These results were discussed with {dr_clin} at {phone} on {received}. The findings were also
communicated to {dr_res} by phone ({phone}). {first} was informed by the clinic the same day.

Addendum signed by {dr_path} ({email}); result released to the portal from {ip}.
""",
    "caps_melanoma": """{inst}
PATIENT: {patient}   {mrn_field}   {dob_field}   SEX: F   {age}   {ssn_field}
ACCESSION: {acc}   DATE OF PROCEDURE: {collected}
SURGEON: {dr_clin}
PATHOLOGIST: {dr_path}

DIAGNOSIS: SKIN, LEFT BACK, WIDE EXCISION: MALIGNANT MELANOMA, {breslow}, {clark}.
MARGINS FREE BY {size}. {pt} {pn}. {stage}.
SENTINEL NODES: {nodes}.
""",
    "colon_resection": _HEADER + """
SPECIMEN: sigmoid colon, resection.
GROSS: A segment of colon, {dims}, with an ulcerated mass of {size}. Cassettes {cassettes}.
MICROSCOPIC: Adenocarcinoma, moderately differentiated ({grade}), invading the subserosa.
{nodes} contain metastatic carcinoma. [[Lynch syndrome]] screening (MMR IHC): retained.
PATHOLOGIC STAGE: {pt} {pn} ({ajcc}); {stage}. ICD-O {icdo}.
Resident: {dr_res}     Attending: {dr_sig}
Report date: {signed}   {license_field}
""",
    "frozen_section": """INTRAOPERATIVE CONSULTATION - {inst}
{patient_field} ({age}), {mrn_field}
Received at {collected} from OR 6, surgeon {dr_clin}.
FS1 (right upper lobe nodule, {size}): adenocarcinoma. Called to {dr_clin_last} in the OR at {phone}
by {dr_path} on {received}; read back confirmed.
Final: {pt} {pn}, {stage}, {nodes}; blocks {cassettes}. {dob_field}. {acc_field}. {ssn_field}.
""",
    "outside_review": _HEADER + """
OUTSIDE MATERIAL REVIEW
Slides and blocks from {outside} ({outside} case {acc}) received on {received}.
The outside report by {dr_res} dated {prior} is reviewed. The patient is a {age} woman from {city}, {state},
with a breast implant ({device_field}).
Digital slides: {url_field}
Our diagnosis: invasive lobular carcinoma, {nottingham}, {er}, {pr}, {her2}.
Questions: {email_field}, {phone_field}
""",
    "cytology": """CYTOPATHOLOGY REPORT    {acc_field}
{patient_field}   {dob_field}   {mrn_field}   {plan_field}
SSN {ssn}
Source: thyroid FNA, collected {collected} by {dr_clin}.
Diagnosis: papillary thyroid carcinoma (Bethesda VI), ICD-O {icdo}.
Screened by {dr_res}; reviewed by {dr_path}. Report faxed to {fax_field} on {signed}.
""",
    "device_explant": _HEADER + """
SPECIMEN: explanted cardiac device and lead.
GROSS: A pulse generator, {dims}, {device_field}, and a lead, {device_field}.
The device is returned to the manufacturer rep ({phone_field}). Patient {patient_ref} ({age}) lives at
{pt_address}.
Diagnosis: device with fibrous capsule; no tumor. Blocks {cassettes}.
{dr_sig}    {license_field}
""",
    "lower_dictation": """{inst} surgical pathology, dictated {collected}
{patient_field} {mrn_field} {acc_field}
clinical: {age} with a lung mass, prior resection {prior} at {outside}.
gross: received in formalin labeled "{patient}", a wedge of lung {dims} with a {size} nodule. {cassettes}.
micro: squamous cell carcinoma, {grade}, {pt} {pn}, {stage}, {nodes}; {ajcc}. icd-o {icdo}.
dictated by {dr_res}, transcribed {received}, signed {dr_sig} {signed}. call {phone} with questions.
""",
    "european_gastric": """{inst}
Institut für Pathologie / Department of Pathology
{pt_address}
{patient_field}   {dob_field}   {mrn_field}
Eingang / received: {received}   Befund / report: {signed}
Einsender / sender: {dr_clin}, {outside}, {phone_field}, {fax_field}

Gastric biopsy: diffuse-type adenocarcinoma ([[Lauren]] diffuse), {grade}, {ki67}. {her2}.
Cassettes {cassettes}. ICD-O {icdo}. {dr_sig}
""",
    "digital_slide_note": _HEADER + """
WHOLE-SLIDE IMAGING NOTE
Slides {cassettes} of case {acc} were scanned on {collected} at workstation {ip} and uploaded to
{url} (image server {ip}). Viewer access: {url_field}.
Diagnosis: [[Breslow]] thickness not assessable; {clark}; margins {size}.
Technical issues reported to {email} / {phone_field}.
""",
    "face_sheet": """REGISTRATION FACE SHEET - {inst}
{patient_field}
{dob_field}   {age}   {ssn_field}
Address: {pt_address}
Home phone: {phone}   {email_field}
{plan_field}   {account_field}
Guarantor SSN {ssn}   Emergency contact: {patient_ref} (spouse), {phone}
Referring: {dr_clin}, {outside}, {zip_field}
Specimen {acc}: breast core biopsy, {er}, {her2}, {grade}.
""",
    "synoptic_checklist_lung": """{inst} -- CAP SYNOPTIC CHECKLIST ({ajcc})
Patient {patient} | MRN{mrn} | DOB {dob} | {age} | Accession {acc}
Procedure date: {collected}
+ Procedure: lobectomy
+ Tumor size: {dims}
+ Histologic type: adenocarcinoma, acinar predominant (ICD-O {icdo})
+ Grade: {grade}
+ Visceral pleural invasion: not identified
+ Regional lymph nodes: {nodes}
+ pTNM: {pt} {pn}
+ Stage: {stage}
+ Ki-67: {ki67}
Checklist completed by {dr_path} on {signed} from {ip}; copy to {dr_clin} ({fax_field}; {email}).
Patient portal: {url}
""",
}

_CASE_OF = {"caps_melanoma": "upper", "lower_dictation": "lower"}
_TOKEN = re.compile(r"\{(\w+)\}|\[\[(.+?)\]\]", re.S)


def _pieces(template: str, case: _Case) -> list[Piece]:
    out: list[Piece] = []
    last = 0
    for m in _TOKEN.finditer(template):
        out.append((None, template[last:m.start()]))
        if m.group(1):
            slot: Callable[[], list[Piece]] = getattr(case, f"s_{m.group(1)}")
            out += slot()
        else:
            out.append((KEEP, m.group(2)))
        last = m.end()
    out.append((None, template[last:]))
    return out


def _write(name: str, pieces: list[Piece], mode: str) -> PlantedReport:
    parts: list[str] = []
    identifiers: list[tuple[str, int, int, str]] = []
    clinical: list[tuple[int, int, str]] = []
    pos = 0
    for kind, raw in pieces:
        text = raw.upper() if mode == "upper" else raw.lower() if mode == "lower" else raw
        if kind == KEEP:
            clinical.append((pos, pos + len(text), text))
        elif kind is not None:
            identifiers.append((kind, pos, pos + len(text), text))
        parts.append(text)
        pos += len(text)
    return PlantedReport("".join(parts), identifiers, clinical, name)


def check_offsets(report: PlantedReport) -> None:
    """Raise ``ValueError`` unless every identifier and clinical term is found at its offsets, and every
    identifier category is a Safe Harbor one."""
    for category, start, end, value in report.identifiers:
        if category not in SAFE_HARBOR_CATEGORIES or report.text[start:end] != value or not value.strip():
            raise ValueError(f"{report.template}: identifier {category} {value!r} is not at [{start}, {end})")
    for start, end, term in report.clinical:
        if report.text[start:end] != term:
            raise ValueError(f"{report.template}: clinical term {term!r} is not at [{start}, {end})")


def build_safe_harbor_corpus(n_reports: int, seed: int, locale: str = "en_US") -> list[PlantedReport]:
    """``n_reports`` reports, the same for the same ``seed``; the templates are used in turn, shuffled.

    ``locale`` is the Faker locale of places, phone numbers, SSNs and institutions (names always mix
    :data:`LOCALES`); it must provide US-style providers (``state_abbr``, ``zipcode_plus4``, ``ssn``).
    """
    from faker import Faker

    rng = random.Random(seed)
    fakers: dict[str, Any] = {}
    for i, name in enumerate(dict.fromkeys((*LOCALES, locale))):
        fakers[name] = Faker(name)
        fakers[name].seed_instance(seed * 1009 + i)
    names = sorted(TEMPLATES)
    order: list[str] = []
    reports = []
    for _ in range(n_reports):
        if not order:
            order = rng.sample(names, len(names))
        name = order.pop()
        case = _Case(rng, fakers, fakers[locale])
        mode = _CASE_OF.get(name) or ("upper" if rng.random() < 0.08 else "plain")
        report = _write(name, _pieces(TEMPLATES[name], case), mode)
        check_offsets(report)
        reports.append(report)
    return reports
