"""Pattern rules for the HIPAA Safe Harbor identifiers that have a shape: numbers, addresses, contacts, dates.

Each rule is (kind, pattern, group, cues): `group` is the part replaced (0 = the whole match); the rule only runs
when one of `cues` is in the lower-cased text (None: always; "#digit": when the text has a digit). Cues are
necessary conditions of their patterns, so skipping is exact. Earlier rules win overlaps.
"""

from __future__ import annotations

import re

from careloop.gateway.phi.lexicon import US_STATES

DIGIT = "#digit"
Rule = tuple[str, re.Pattern[str], int, tuple[str, ...] | None]

_MONTHS = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
           r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?")
_ORD = r"(?:st|nd|rd|th)?"
DATE = (r"(?:(?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12]\d|3[01])/(?:\d{4}|\d{2})(?![\d/])"  # 03/14/1962
        r"|(?:0?[1-9]|1[0-2])-(?:0?[1-9]|[12]\d|3[01])-(?:\d{4}|\d{2})(?![\d\-]|\.\d)"  # 3-14-62
        r"|(?:0?[1-9]|1[0-2])\.(?:0?[1-9]|[12]\d|3[01])\.(?:\d{4}|\d{2})(?![\d\-]|\.\d)"  # 3.14.62
        r"|(?:0?[1-9]|[12]\d|3[01])[/\-.](?:0?[1-9]|1[0-2])[/\-.](?:\d{4}|\d{2})(?![\d/])"  # 14.03.1962
        r"|\d{4}-\d{1,2}-\d{1,2}"  # 1962-03-14
        rf"|{_MONTHS}\s+\d{{1,2}}{_ORD}(?:,?\s+\d{{4}})?(?![\d:])"  # March 14, 1962 / March 14th
        rf"|(?:the\s+)?\d{{1,2}}{_ORD}\s+(?:of\s+)?{_MONTHS}(?:,?\s+\d{{4}})?"  # 14 March 1962, the 14th of March
        rf"|\d{{1,2}}[\-\s]{_MONTHS}[\-\s](?:\d{{4}}|\d{{2}})"  # 12-Jan-1950
        rf"|{_MONTHS}\s+(?:of\s+)?\d{{4}})")  # March 2019
_BIRTH_CUES = r"(?:dob|d\.o\.b\.?|date of birth|birth\s?date|birthday|born(?:\s+on)?|b\.)"
_EVENT_CUES = (r"(?:admitted|admission(?:\s+date)?|admit(?:\s+date)?|discharged?|discharge date|d/c|died|death|"
               r"date of death|dod|passed away|deceased|expired|was seen|date of (?:service|surgery|procedure|"
               r"injury|visit|admission|discharge)|dos|surgery|operated|delivered|gave birth)")
# Between a cue and its date: anything but the end of a sentence, up to ~60 characters.
_GAP = r"(?:(?![.!?]\s+[A-Z])[^;\n]){0,60}?"
_STREET_SUFFIX = (r"(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl|"
                  r"terrace|ter|circle|cir|highway|hwy|parkway|pkwy|square|sq|trail|trl|pike|loop|row|alley|"
                  r"crescent|cres|close|plaza|point|pt)")
_STATE_ABBR = "|".join(US_STATES)
_STATE_NAME = "|".join(sorted((n.title() for n in US_STATES.values()), key=len, reverse=True))
_PLACE_WORD = r"[A-Z][a-z]+(?:[ \-][A-Z][a-z]+){0,2}"

# An identifier after a cue: has a digit, may start with letters ("H0045521", "XJH-884-221-09", "1EG4-TE5-MK73").
_ID = r"(?:\(\d{2}\))?(?=[A-Za-z\-/.]*\d)[A-Za-z0-9][A-Za-z0-9\-/.]{3,}[A-Za-z0-9](?:[ ](?=\d)\d+(?:[ \-]\d+)*)?"
# Words allowed between a cue and its identifier ("member ID number is: ...").
_FILL = (r"(?:[\s:#=\-]+|(?i:id|identifier|number|num|nbr|no|card|policy|member|subscriber|group|plan|insurance|"
         r"is|was|are|of|reads|ending\s+in|starts\s+with|on\s+file|the)\b\.?)*")
_QUAL = r"(?i:\s*(?:id|identifier|number|num|nbr|no\.?|#)\b\.?|\s*#)"


def _cue_rule(kind: str, cues: str, lower_cues: tuple[str, ...], qualified: bool = False) -> Rule:
    """An identifier after one of `cues` (with "number/no/#/id" required after them when `qualified`)."""
    qual = _QUAL if qualified else ""
    pattern = re.compile(rf"(?i:\b(?:{cues}))(?:'s)?{qual}{_FILL}({_ID})(?<![.\-/])")
    return kind, pattern, 1, lower_cues


RULES: list[Rule] = [
    ("EMAIL", re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b"), 0, ("@",)),
    ("EMAIL", re.compile(
        r"(?i)\b[a-z0-9_\-]+(?:(?:\s+dot\s+|\s*\[dot\]\s*|\s*\(dot\)\s*|\.)[a-z0-9_\-]+)*"
        r"(?:\s+at\s+|\s*\[at\]\s*|\s*\(at\)\s*|\s+@\s+)"
        r"[a-z0-9\-]+(?:(?:\s+dot\s+|\s*\[dot\]\s*|\s*\(dot\)\s*|\.)[a-z0-9\-]+)*?"
        r"(?:\s+dot\s+|\s*\[dot\]\s*|\s*\(dot\)\s*|\.)(?:com|org|net|edu|gov|io|us|co|info|health|uk|ca|mil|me|ai|app)\b"),
     0, ("dot", "[at]", "(at)", " @ ")),
    ("URL", re.compile(r"(?i)\b(?:https?://|ftp://|www\.)[^\s<>\"')\]]+(?<![.,;:!?])"), 0, ("http", "www.", "ftp")),
    ("URL", re.compile(r"(?i)\b(?:[a-z0-9\-]+\.)+(?:com|org|net|edu|gov|io|health|info|biz|app|us)"
                       r"(?:/[^\s<>\"')\]]*)?(?<![.,;:!?])"), 0, (".com", ".org", ".net", ".edu", ".gov",
                                                                  ".io", ".health", ".info", ".biz", ".app",
                                                                  ".us")),
    ("IP", re.compile(r"(?<![\d.])(?:25[0-5]|2[0-4]\d|1?\d?\d)(?:\.(?:25[0-5]|2[0-4]\d|1?\d?\d)){3}"
                      r"(?:/\d{1,2})?(?![\d.]*\d)"), 0, (DIGIT,)),
    ("IP", re.compile(r"(?i)(?<![\w:])(?:(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}|"
                      r"(?:[0-9a-f]{1,4}:){1,6}:(?:[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,5})?|::1)(?![\w:])"), 0,
     (":",)),
    ("DEVICE", re.compile(r"(?i)(?<![\w:\-])(?:[0-9a-f]{2}[:\-]){5}[0-9a-f]{2}(?![\w:\-])"), 0, (":", "-")),
    ("SSN", re.compile(r"(?i)\b(?:ssn|ss#|s\.s\.n\.?|social\s+security(?:\s+(?:number|no\.?|#|num))?|social)"
                       r"(?:'s)?[\s:#=\-]*(?:(?:is|was|number|no\.?|ending\s+in|last\s+(?:4|four)(?:\s+digits)?"
                       r"(?:\s+(?:are|is))?|are)[\s:#\-]*)*"
                       r"(\d{3}[\s.\-/]?\d{2}[\s.\-/]?\d{4}|\d{4})\b"), 1, ("ss", "social")),
    ("SSN", re.compile(r"(?<![\w\-./])(?!000|666|9\d\d)\d{3}([\-.\s/])(?!00)\d{2}\1(?!0000)\d{4}(?![\w\-/]|\.\d)"),
     0, (DIGIT,)),
    _cue_rule("HEALTH_PLAN", r"member|subscriber|policy|insurance|insurer|medicare|medicaid|mbi|beneficiary|"
              r"bcbs|blue\s+cross(?:\s+blue\s+shield)?|aetna|cigna|humana|united\s?healthcare|uhc|kaiser|tricare|"
              r"anthem|hmo|ppo|health\s+plan|plan\s+id|group\s+(?:number|no\.?|#)|rx\s?bin|pcn",
              ("member", "subscriber", "policy", "insur", "medicare", "medicaid", "mbi", "beneficiary", "bcbs",
               "blue cross", "aetna", "cigna", "humana", "united", "uhc", "kaiser", "tricare", "anthem", "hmo",
               "ppo", "plan", "group", "rx", "pcn")),
    ("HEALTH_PLAN", re.compile(r"\b\d[A-Z][A-Z0-9]\d-?[A-Z][A-Z0-9]\d-?[A-Z]{2}\d{2}\b"), 0, (DIGIT,)),  # MBI
    _cue_rule("MRN", r"mrn|m\.r\.n\.?|medical\s+record|med\.?\s*rec(?:ord)?|hospital|hosp\.?|patient|pt\.?|"
              r"chart|record|case|encounter|accession|specimen|registration|visit|admission|fin|csn|empi|"
              r"mpi|emr|ehr|h#", ("mrn", "m.r.n", "record", "rec", "hosp", "patient", "pt", "chart", "case",
                                  "encounter", "accession", "specimen", "registration", "visit",
                                  "admission", "fin", "csn", "empi", "mpi", "emr", "ehr", "h#"),
              qualified=True),
    _cue_rule("MRN", r"mrn|m\.r\.n\.?|medical\s+record|med\.?\s*rec\.?|empi|csn|h#", ("mrn", "m.r.n", "record",
                                                                                      "rec", "empi", "csn", "h#")),
    ("VEHICLE", re.compile(r"\b(?=[A-HJ-NPR-Z0-9]*\d)(?=[A-HJ-NPR-Z0-9]*[A-HJ-NPR-Z])[A-HJ-NPR-Z0-9]{17}\b"), 0,
     (DIGIT,)),
    ("VEHICLE", re.compile(r"(?i:\b(?:licen[cs]e\s+plate|plate|tag|vin|vehicle(?:\s+identification)?)\b"
                           r"(?:\s+(?:number|no\.?|#|is|was|reads))*[\s:#\-]*)"
                           r"((?=[A-Z0-9\- ]*\d)[A-Z0-9]{1,4}[\- ]?[A-Z0-9]{2,5}(?:[\- ][A-Z0-9]{1,4})?)\b"), 1,
     ("plate", "tag", "vin", "vehicle")),
    _cue_rule("DEVICE", r"serial|s/n|s\.n\.|sn|udi|imei|device|pacemaker|defibrillator|implant|pump|cgm|"
              r"monitor|lot|model|hearing\s+aid", ("serial", "s/n", "s.n", "sn", "udi", "imei", "device",
                                                   "pacemaker", "defib", "implant", "pump", "cgm", "monitor",
                                                   "lot", "model", "hearing"), qualified=True),
    _cue_rule("DEVICE", r"serial|s/n|s\.n\.|udi|imei", ("serial", "s/n", "s.n", "udi", "imei")),
    _cue_rule("ACCOUNT", r"account|acct|a/c|billing|invoice|claim|statement|card|credit\s+card|debit\s+card|"
              r"routing|iban|bank|guarantor", ("account", "acct", "a/c", "billing", "invoice", "claim", "statement",
                                               "card", "routing", "iban", "bank", "guarantor"),
              qualified=True),
    _cue_rule("ACCOUNT", r"acct|account|iban|card", ("acct", "account", "iban", "card")),
    ("ACCOUNT", re.compile(r"(?<![\d\-])(?:\d{4}[\s\-]){3}\d{4}(?![\d\-])"), 0, (DIGIT,)),  # card numbers
    _cue_rule("LICENSE", r"driver'?s\s+licen[cs]e|licen[cs]e|dea|npi|passport|certificate|cert|permit|"
              r"state\s+id|id\s+card|registration", ("licen", "dea", "npi", "passport", "cert", "permit",
                                                     "state id", "id card", "registration")),
    ("DOB", re.compile(rf"(?i)\b{_BIRTH_CUES}(?!\w){_GAP}\b({DATE})", re.S), 1,
     ("dob", "d.o.b", "birth", "born", "b.")),
    ("DATE", re.compile(rf"(?i)\b{_EVENT_CUES}(?!\w){_GAP}\b({DATE})", re.S), 1,
     ("admi", "discharg", "d/c", "died", "death", "dod", "passed", "deceased", "expired", "seen", "date of",
      "dos", "surgery", "operated", "delivered", "gave birth")),
    ("DATE", re.compile(rf"(?i)\b(?:{_EVENT_CUES}|{_BIRTH_CUES})\s+(?:on\s+)?"
                        r"((?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12]\d|3[01]))(?![\d/])"), 1,
     ("admi", "discharg", "died", "death", "born", "birth", "dob", "surgery", "seen", "passed", "expired",
      "delivered")),
    ("PHONE", re.compile(r"(?<![\w/.\-])(?:\+?1[\s.\-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.\-])\d{3}[\s.\-]\d{4}\b"
                         r"(?:\s*(?:x|ext\.?|extension)\s*\d{1,5})?"), 0, (DIGIT,)),
    ("PHONE", re.compile(r"(?<![\w/.\-])\+(?:[2-9]\d{0,2})[\s.\-]?(?:\(?\d{1,4}\)?[\s.\-]?){2,4}\d{2,4}\b"), 0,
     ("+",)),
    ("PHONE", re.compile(r"(?<![\w/.\-+])(?:1[\s.\-]?)?[2-9]\d{2}[2-9]\d{6}(?![\w/\-]|\.\d)"), 0, (DIGIT,)),
    ("PHONE", re.compile(r"(?i:\b(?:phone|call|cell|mobile|text|fax|tel|telephone|pager|beeper|reach|"
                         r"number|extension|ext)\b[^.\n\d]{0,20}?)(?<![\d\-])(\d{3}[\s.\-]\d{4})(?![\d\-])"), 1,
     ("phone", "call", "cell", "mobile", "text", "fax", "tel", "pager", "beeper", "reach", "number", "ext")),
    # A title, then name particles ("Dr. de la Cruz", "Mr van der Berg").
    ("NAME", re.compile(r"\b(?:Dr|Mr|Mrs|Ms|Mx|Prof|Doctor|Nurse)\.?\s+((?:(?:de|del|della|la|le|van|von|der|den|da|"
                        r"di|du|dos|das|bin|ibn|al|el|ter|ten|op)\s+)+[A-Z][A-Za-z'\-]+)"), 1,
     (" de ", " del", " la ", " le ", " van ", " von ", " der ", " den ", " da ", " di ", " du ", " dos ", " das ",
      " bin ", " ibn ", " al ", " el ", " ter ", " ten ", " op ")),
    # A labelled name, in capitals too ("Name: DOE, JANE", "Patient name: Smith, John A.").
    ("NAME", re.compile(r"(?<![A-Za-z] )(?i:\b(?:patient\s+|pt\s+|full\s+|legal\s+)?name\s*[:\-]\s*)"
                        r"([A-Z][A-Za-z'\-]+(?:,?\s+(?!(?:DOB|MRN|SSN|DOD|ID|Age|Sex|Phone)\b)"
                        r"(?:[A-Z]\.|[A-Z][A-Za-z'\-]+)){0,2})"), 1, ("name",)),
    ("ADDRESS", re.compile(r"(?i)\b(?:p\.?\s?o\.?\s+box|post\s+office\s+box)\s+\d+\b"), 0, ("box",)),
    ("ADDRESS", re.compile(
        rf"\b\d{{1,6}}(?:-\d{{1,4}})?[A-Za-z]?\s+(?:[NSEW]\.?\s+|(?:North|South|East|West)\s+)?"
        rf"(?:[A-Z][a-z']+\.?\s+|\d{{1,3}}(?:st|nd|rd|th)\s+){{1,3}}(?i:{_STREET_SUFFIX})\b\.?"
        rf"(?:\s+(?:[NSEW]|NE|NW|SE|SW)\b\.?)?"
        rf"(?:,?\s+(?i:apt|apartment|unit|suite|ste|#|room|rm|floor|fl)\.?\s*#?\s*[\w\-]+)?"), 0, (DIGIT,)),
    ("ADDRESS", re.compile(r"(?i)\b(?:apt|apartment|unit|suite|ste)\.?\s*#?\s*\d+[a-z]?\b(?=,|\s+(?:at|in|on))"),
     0, ("apt", "apartment", "unit", "suite", "ste")),
    ("LOCATION", re.compile(rf"\b{_PLACE_WORD},\s*(?:{_STATE_ABBR})\b(?:\.?,?\s+\d{{5}}(?:-\d{{4}})?)?"), 0, (",",)),
    ("LOCATION", re.compile(rf"\b{_PLACE_WORD},\s*(?:{_STATE_NAME})\b(?:,?\s+\d{{5}}(?:-\d{{4}})?)?"), 0, (",",)),
    ("LOCATION", re.compile(rf"\b{_PLACE_WORD}\s+(?:{_STATE_ABBR})\s+\d{{5}}(?:-\d{{4}})?\b"), 0, (DIGIT,)),
    ("LOCATION", re.compile(rf"\b(?:{_STATE_ABBR}|{_STATE_NAME})\.?,?\s+(\d{{5}}(?:-\d{{4}})?)\b"), 1, (DIGIT,)),
    ("LOCATION", re.compile(r"(?i:\b(?:zip|zip\s*code|postal\s+code|zipcode)\b[\s:#\-]*(?:is\s+)?)"
                            r"(\d{5}(?:-\d{4})?)\b"),
     1, ("zip", "postal")),
    ("LOCATION", re.compile(r"\b[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?\s+(?:County|Parish|Borough|Township)\b"), 0,
     ("county", "parish", "borough", "township")),
]

# The fewest digits a text needs for a rule of each kind to match (a cheap gate: one C-level count per text).
MIN_DIGITS = {"PHONE": 7, "SSN": 4, "IP": 4, "ACCOUNT": 5, "VEHICLE": 1, "HEALTH_PLAN": 3, "MRN": 3,
              "LICENSE": 4, "ADDRESS": 1, "DOB": 1, "DATE": 1}
GATED: list[tuple[str, re.Pattern[str], int, tuple[str, ...] | None, int]] = [
    (kind, pattern, group, cues, MIN_DIGITS.get(kind, 0)) for kind, pattern, group, cues in RULES]
