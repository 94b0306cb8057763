"""Names of people and places that have no shape: found from titles, cue words and word lists.

A run of capitalised words is a person's name when a title comes first ("Dr. Amara Osei", "Mrs Lee"), when a
cue word comes right before it ("my daughter Zara", "patient: John Doe", "I'm Kofi"), or when it starts with a
known given name followed by another capitalised word, or holds a known surname after a capitalised word. Medical
eponyms ("Parkinson's disease", "non-Hodgkin lymphoma", "Foley catheter") are never names unless a title says
so. A city from the list is a place after "in/from/to/near…".
"""

from __future__ import annotations

import re

from careloop.gateway.phi.lexicon import AMBIGUOUS_FIRST, CITIES, EPONYM_HEADS, EPONYMS, FIRST_NAMES, SURNAMES, words

TITLES = words("""
dr dr. doctor mr mr. mrs mrs. ms ms. miss mx mx. prof prof. professor nurse sr sr. rev rev. fr fr. sister brother
judge officer pastor rabbi imam
""")
# Words right before a name that say a name follows.
CUES = words("""
name named called i'm im am is this patient pt pt. patient: pt: son daughter wife husband mother mom mum mommy
father dad daddy sister brother grandson granddaughter grandmother grandma granny grandfather grandpa aunt uncle
cousin niece nephew friend neighbor neighbour partner spouse fiance fiancee fiancé boyfriend girlfriend caregiver
carer roommate coworker colleague boss child baby infant toddler twin stepson stepdaughter stepmother stepfather
guardian surgeon doctor physician pcp therapist psychiatrist psychologist nurse pharmacist provider dentist
cardiologist oncologist neurologist endocrinologist dermatologist pediatrician obgyn midwife counselor resident
attending intern by dear hi hello hey thanks thank regards sincerely cc contact kin proxy poa attn attention signed
from: to: with mrs mr ms dr
""")
# Cues that are weak ("is", "with", "by", "am"): the word after them must also look like a name.
WEAK_CUES = words("""
call called ask asked tell told text email contact saw met visited
is am this by with from: to: i'm im
""")
CUES = CUES | WEAK_CUES
# Capitalised words that are never part of a person's name.
STOP = words("""
a an the i i'm i've i'd my me we our you your he she his her they them their it its this that these those there here
what when where why how who which whose is are was were be been being am do does did have has had can could will
would shall should may might must not no yes ok okay please thanks thank hi hello hey dear and or but if then so
because also just still yet even now today tonight tomorrow yesterday monday tuesday wednesday thursday friday
saturday sunday january february march april may june july august september october november december jan feb mar
apr jun jul aug sep sept oct nov dec am pm er ed icu or ob gyn ent er type stage grade class level phase part step
day week month year hour minute dose doses tablet tablets patient patients doctor nurse hospital clinic center
centre medical health care urgent emergency department unit ward room floor service services pharmacy lab labs test
tests result results report note notes plan history exam assessment diagnosis treatment medication medications
medicine insurance medicare medicaid disease syndrome cancer diabetes heart blood pressure sugar pain chest kidney
liver lung brain covid monday's tuesday's is it's that's what's let's can't don't won't i'll we'll you'll she's he's
after before during since until about above below between into onto upon over under again further once all any both
each few more most other some such only own same than too very new old good bad best better worse worst high low
normal abnormal positive negative acute chronic left right upper lower mild moderate severe daily twice weekly
monthly nightly morning evening night call text email phone fax see go take give get use start stop keep make help
need want know think feel should'nt isn't aren't wasn't weren't hasn't haven't hadn't doesn't didn't couldn't
wouldn't dx hx rx sx tx bp hr rr spo2 bmi ekg ecg ct mri cbc bmp cmp inr tsh hba1c a1c ldl hdl
team staff everyone sir madam colleagues family committee board doctors nurses all
""")
# Words after which a capitalised city name is a place.
PLACE_CUES = words("""
in from to near of at around outside live lives living moved based resident visiting
""")
FACILITY_HEADS = words("""
clinic hospital medical center centre health university college institute foundation pharmacy labs laboratory school
county
""")

# Titles keep their period ("Dr."), so do initials before a capitalised word ("J. Smith"); any other period
# ends the word (and so a run of capitalised words never crosses a sentence end).
_WORD = re.compile(r"(?:Dr|Mr|Mrs|Ms|Mx|Prof|Sr|Rev|Fr)\.|[A-Z]\.(?=\s*[A-Z][a-z])|[A-Za-z][A-Za-z'’\-]*|[^\sA-Za-z]")


def _bare(token: str) -> str:
    """A token lower-cased, without a possessive or a trailing period."""
    t = token.lower().rstrip(".")
    for suffix in ("'s", "’s", "'", "’"):
        if t.endswith(suffix):
            return t[: -len(suffix)]
    return t


def _lookup(token: str) -> str:
    """A token as the word lists spell it ("O'Connor" → "oconnor")."""
    return _bare(token).replace("'", "").replace("’", "")


def _capitalised(token: str) -> bool:
    return token[:1].isupper() and (len(token) == 1 or not token.isupper() or (len(token) <= 2 and token.endswith(".")))


def _span_end(token: str, end: int) -> int:
    """Where the name in `token` ends (a possessive and a sentence period stay outside)."""
    for suffix in ("'s", "’s"):
        if token.endswith(suffix):
            return end - len(suffix)
    if token.endswith(".") and len(token) > 2:
        return end - 1
    return end


_TOKEN = r"(?:(?:Dr|Mr|Mrs|Ms|Mx|Prof|Sr|Rev|Fr)\.|[A-Z]\.(?=\s*[A-Z][a-z])|[A-Z][A-Za-z'’\-]*)"
# A run of capitalised words on one line (the only places a name can start, so the rest of the text is skipped).
_RUN = re.compile(rf"{_TOKEN}(?:[ \t]+{_TOKEN}){{0,5}}")
_CONTEXT = 48  # characters of context read before and after a run
_LOWER_WORD = re.compile(r"[a-z]+")


def find_names(text: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) of people's names ("NAME") and listed cities ("LOCATION") in `text`."""
    out: list[tuple[int, int, str]] = []
    for m in _RUN.finditer(text):
        if m.end() - m.start() < 12 and " " not in m.group() and _bare(m.group()) in STOP:
            continue  # one common word ("The", "My", "Is"): the usual sentence start, never a name
        lo = max(0, m.start() - _CONTEXT)
        before = [(t.group(), lo + t.start(), lo + t.end()) for t in _WORD.finditer(text, lo, m.start())]
        before = before[-3:]
        run_tokens = [(t.group(), t.start(), t.end()) for t in _WORD.finditer(text, m.start(), m.end())]
        after = [(t.group(), t.start(), t.end()) for t in _WORD.finditer(text, m.end(), m.end() + _CONTEXT)][:3]
        tokens = before + run_tokens + after
        first = len(before)
        run = [first + k for k, tok in enumerate(run_tokens) if _capitalised(tok[0])]
        run = _contiguous(run)
        while run:
            i = run[0]
            prev = _bare(tokens[i - 1][0]) if i > 0 else ""
            prev2 = _bare(tokens[i - 2][0]) if i > 1 else ""
            if prev in (",", ":", "-") and (prev2 in CUES or prev2 + ":" in CUES):
                prev = prev2  # "my grandson, Liam", "Patient: Xiomara", "Sincerely,\nBartholomew"
            end = run[-1] + 1
            found = _name_in_run(tokens, run, prev, prev2, end)
            if found is not None:
                a, b = found
                out.append((tokens[a][1], _span_end(tokens[b][0], tokens[b][2]), "NAME"))
                run = [k for k in run if k > b]
                continue
            place = _city_in_run(tokens, run, prev)
            if place is not None:
                a, b = place
                out.append((tokens[a][1], _span_end(tokens[b][0], tokens[b][2]), "LOCATION"))
                run = [k for k in run if k > b]
                continue
            break
    if _maybe_lower_names(text):
        tokens = [(t.group(), t.start(), t.end()) for t in _WORD.finditer(text)]
        for i in range(len(tokens) - 1):
            if _lower_pair(tokens, i) and not any(s <= tokens[i][1] < e for s, e, _ in out):
                out.append((tokens[i][1], _span_end(tokens[i + 1][0], tokens[i + 1][2]), "NAME"))
        out.sort()
    return out


def _maybe_lower_names(text: str) -> bool:
    """Whether the text has a lower-case given name and surname at all (a cheap gate for the slow scan)."""
    words = set(_LOWER_WORD.findall(text))
    return not words.isdisjoint(_PLAIN_FIRST) and not words.isdisjoint(SURNAMES)


_PLAIN_FIRST = FIRST_NAMES - AMBIGUOUS_FIRST - STOP


def _lower_pair(tokens: list[tuple[str, int, int]], i: int) -> bool:
    """A lower-case given name + surname ("john smith"), both in the lists and neither a common word."""
    if i + 1 >= len(tokens):
        return False
    first, last = tokens[i][0].lower(), _bare(tokens[i + 1][0])
    return (first in FIRST_NAMES and first not in AMBIGUOUS_FIRST and first not in STOP
            and last in SURNAMES and last not in STOP and tokens[i + 1][0][:1].islower())


def _is_eponym(tokens: list[tuple[str, int, int]], k: int, end: int) -> bool:
    """Whether the word at k is a disease/sign/device eponym here ("Parkinson's", "Hodgkin lymphoma")."""
    tok = tokens[k][0]
    word = _bare(tok)
    nxt = tokens[end][0].lower().rstrip(".") if end < len(tokens) else ""
    if word in EPONYMS and (tok.lower().endswith(("'s", "’s")) or nxt in EPONYM_HEADS or (k > 0 and
                            tokens[k - 1][0].lower() in ("non", "non-", "of"))):
        return True
    if word in EPONYMS and word not in FIRST_NAMES and word not in SURNAMES:
        return True
    return nxt in EPONYM_HEADS


def _name_in_run(tokens: list[tuple[str, int, int]], run: list[int], prev: str, prev2: str,
                 end: int) -> tuple[int, int] | None:
    """The (first, last) token indexes of a person's name in this run of capitalised words, if any."""
    words = [_bare(tokens[k][0]) for k in run]
    # A title inside the run ("Dr. Osei") or just before it ("nurse Jackie").
    if words[0] in TITLES or words[0] + "." in TITLES:
        rest = [k for k, w in zip(run[1:], words[1:], strict=False) if w not in STOP]
        rest = _contiguous(rest)
        if rest:
            return rest[0], rest[-1]
        return None
    keep = [k for pos, (k, w) in enumerate(zip(run, words, strict=False))
            if w not in STOP or (w in FIRST_NAMES and pos + 1 < len(run) and words[pos + 1] not in STOP)]
    names = _contiguous(keep)
    if not names:
        return None
    if names[0] != run[0]:  # words of the run before the name ("Dear Nurse", "I'm") act as its cue
        inner = _bare(tokens[names[0] - 1][0])
        if inner in TITLES or inner + "." in TITLES or inner in CUES:
            prev, prev2 = inner, _bare(tokens[names[0] - 2][0]) if names[0] > 1 else ""
    after = _bare(tokens[names[-1] + 1][0]) if names[-1] + 1 < len(tokens) else ""
    if after in FACILITY_HEADS and prev not in TITLES:
        return None  # "Johns Hopkins Hospital", "Mayo Clinic"
    first = _bare(tokens[names[0]][0])
    if prev in TITLES and prev not in ("sister", "brother"):
        return names[0], names[-1]
    last_next = names[-1] + 1
    if _is_eponym(tokens, names[-1], last_next) and not (prev in CUES and prev not in WEAK_CUES):
        return None
    cue = prev in CUES or (prev2 in ("name", "named", "called") and prev == "is")
    if cue and (prev not in WEAK_CUES or first in FIRST_NAMES or len(names) > 1):
        return names[0], names[min(len(names), 3) - 1]
    for pos, k in enumerate(names):
        word = _bare(tokens[k][0])
        more = pos + 1 < len(names)
        if word in FIRST_NAMES and (word not in AMBIGUOUS_FIRST or more):
            if more and _bare(tokens[names[pos + 1]][0]) in EPONYM_HEADS:
                return k, k
            return k, names[min(len(names), pos + 3) - 1]
    for pos, k in enumerate(names[1:], 1):
        if _lookup(tokens[k][0]) in SURNAMES:
            return names[pos - 1], k
    # "Okafor, Margaret": a surname, a comma, a given name.
    if (_lookup(tokens[names[0]][0]) in SURNAMES and end + 1 < len(tokens) and tokens[end][0] == ","
            and _bare(tokens[end + 1][0]) in FIRST_NAMES and _capitalised(tokens[end + 1][0])):
        return names[0], end + 1
    return None


def _contiguous(ks: list[int]) -> list[int]:
    """The leading stretch of consecutive token indexes."""
    out: list[int] = []
    for k in ks:
        if out and k != out[-1] + 1:
            break
        out.append(k)
    return out


def _city_in_run(tokens: list[tuple[str, int, int]], run: list[int], prev: str) -> tuple[int, int] | None:
    """A listed city in the run, after a place cue ("in Boston"), not part of a facility's name."""
    if prev not in PLACE_CUES:
        return None
    words = [_bare(tokens[k][0]) for k in run]
    for size in (3, 2, 1):
        name = " ".join(words[:size])
        if len(words) >= size and name in CITIES:
            after = words[size] if len(words) > size else ""
            if after in FACILITY_HEADS:
                return None
            return run[0], run[size - 1]
    return None
