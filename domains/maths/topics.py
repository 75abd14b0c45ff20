"""The maths topics: each a fact space, a true answer per fact and sentence templates."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

# --- topic machinery ---------------------------------------------------------------------

NUM = r"[0-9]{1,9}"  # bounded: int() of a 5000-digit string raises in Python >= 3.11
COUNT_WORDS = {"a": 1, "an": 1, "one": 1}  # "A triangle has 3 sides." reads as a count of 1
_IS = {"is": None, "are": None}
_HAS = {"has": None, "have": None}
_MAKE = {"makes": None, "make": None}


@dataclass(frozen=True, eq=False)
class Topic:
    name: str
    templates: tuple[str, ...]
    space: Callable[[], list[tuple]]  # every fact (params) this topic can state truly
    answer: Callable[[tuple], object]  # the true answer of a fact
    holds: Callable[[tuple, object], bool]  # is (fact, claimed answer) true?
    key: Callable[[tuple, object], str]
    render: Callable[[tuple, object], dict[str, str]]  # slot -> text, for every slot
    read: Callable[[dict], tuple[tuple, object] | None]  # slots -> (fact, claim) or None
    words: dict[str, dict[str, object]]  # slot -> {form: value}; others are numbers
    count_slots: frozenset[str] = frozenset()  # number slots that also accept "a"/"an"/"one"
    corrupt: Callable[[tuple, object], object] = lambda params, claim: claim + 1


def _nouns(table: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """{canonical: (singular, plural, *aliases)} -> {form: canonical} for parsing."""
    return {form: canon for canon, forms in table.items() for form in forms}


def _pick(table: dict[str, tuple[str, ...]], canon: str, count: int) -> str:
    return table[canon][0] if count == 1 else table[canon][1]


# --- arithmetic --------------------------------------------------------------------------

def _binary(name, sym, templates, space, answer, holds):
    return Topic(
        name=name,
        templates=templates,
        space=space,
        answer=lambda p: answer(*p),
        holds=lambda p, c: holds(p[0], p[1], c),
        key=lambda p, c: f"{name}:{p[0]}{sym}{p[1]}={c}",
        render=lambda p, c: {"a": str(p[0]), "b": str(p[1]), "c": str(c)},
        read=lambda s: ((s["a"], s["b"]), s["c"]),
        words={},
    )


_OPERAND = range(0, 51)  # addition/subtraction operands 0..50
_TABLE = range(1, 13)  # times tables 1..12

ADDITION = _binary(
    "addition", "+",
    (
        "{a} plus {b} equals {c}.",
        "The sum of {a} and {b} is {c}.",
        "If you add {b} to {a}, you get {c}.",
        "Adding {a} and {b} gives {c}.",
        "{a} and {b} together make {c}.",
    ),
    space=lambda: [(a, b) for a in _OPERAND for b in _OPERAND],
    answer=lambda a, b: a + b,
    holds=lambda a, b, c: a + b == c,
)
SUBTRACTION = _binary(
    "subtraction", "-",
    (
        "{a} minus {b} equals {c}.",
        "The difference between {a} and {b} is {c}.",
        "If you take {b} away from {a}, you get {c}.",
        "Subtracting {b} from {a} leaves {c}.",
        "{a} take away {b} is {c}.",
    ),
    space=lambda: [(a, b) for a in _OPERAND for b in range(0, a + 1)],  # no negative results
    answer=lambda a, b: a - b,
    holds=lambda a, b, c: a - b == c,
)
MULTIPLICATION = _binary(
    "multiplication", "*",
    (
        "{a} times {b} equals {c}.",
        "{a} multiplied by {b} is {c}.",
        "The product of {a} and {b} is {c}.",
        "Multiplying {a} by {b} gives {c}.",
        "If you multiply {a} by {b}, you get {c}.",
    ),
    space=lambda: [(a, b) for a in _TABLE for b in _TABLE],
    answer=lambda a, b: a * b,
    holds=lambda a, b, c: a * b == c,
)
DIVISION = _binary(
    "division", "/",
    (
        "{a} divided by {b} equals {c}.",
        "{a} shared equally between {b} gives {c} each.",
        "If you split {a} into {b} equal groups, each group has {c}.",
        "Dividing {a} by {b} gives {c}.",
        "The quotient of {a} and {b} is {c}.",
    ),
    space=lambda: [(b * q, b) for b in _TABLE for q in _TABLE],  # exact divisions only
    answer=lambda a, b: a // b,
    holds=lambda a, b, c: b != 0 and a == b * c,  # "5 divided by 0 equals 0" is false
)

FRACTIONS = Topic(
    name="fractions",
    templates=(
        "{n}/{d} of {w} is {c}.",
        "Taking {n}/{d} of {w} gives {c}.",
        "If you take {n}/{d} of {w}, you get {c}.",
        "{c} is {n}/{d} of {w}.",
        "{n}/{d} of a group of {w} is {c}.",
    ),
    # fractions in lowest terms with denominators 2..10, of whole multiples of the denominator
    space=lambda: [
        (n, d, d * k) for d in range(2, 11) for n in range(1, d) if math.gcd(n, d) == 1
        for k in range(1, 11)
    ],
    answer=lambda p: p[0] * p[2] // p[1],
    holds=lambda p, c: p[1] != 0 and p[0] * p[2] == c * p[1],
    key=lambda p, c: f"fractions:{p[0]}/{p[1]}*{p[2]}={c}",
    render=lambda p, c: {"n": str(p[0]), "d": str(p[1]), "w": str(p[2]), "c": str(c)},
    read=lambda s: ((s["n"], s["d"], s["w"]), s["c"]),
    words={},
)

# --- shapes ------------------------------------------------------------------------------

_SIDES = {
    "triangle": 3, "square": 4, "rectangle": 4, "quadrilateral": 4, "pentagon": 5,
    "hexagon": 6, "heptagon": 7, "octagon": 8, "nonagon": 9, "decagon": 10,
}
_SHAPE_FORMS = {s: (s, s + "s") for s in _SIDES}
_ATTR_FORMS = {"sides": ("side", "sides"), "corners": ("corner", "corners", "vertex", "vertices")}

SHAPES = Topic(
    name="shapes",
    templates=(
        "{k} {shape} {has} {c} {attr}.",
        "There are {c} {attr} on {k} {shape}.",
        "If you count the {attr} of {k} {shape}, you get {c}.",
        "The number of {attr} on {k} {shape} is {c}.",
        "Altogether, {k} {shape} {has} {c} {attr}.",
    ),
    space=lambda: [(k, s, a) for s in _SIDES for a in _ATTR_FORMS for k in range(1, 13)],
    answer=lambda p: p[0] * _SIDES[p[1]],
    holds=lambda p, c: p[0] * _SIDES[p[1]] == c,  # a polygon has as many corners as sides
    key=lambda p, c: f"shapes:{p[0]}*{p[1]}.{p[2]}={c}",
    render=lambda p, c: {
        "k": str(p[0]), "shape": _pick(_SHAPE_FORMS, p[1], p[0]),
        "has": "has" if p[0] == 1 else "have", "attr": _pick(_ATTR_FORMS, p[2], c), "c": str(c),
    },
    read=lambda s: ((s["k"], s["shape"], s["attr"]), s["c"]),
    words={"shape": _nouns(_SHAPE_FORMS), "attr": _nouns(_ATTR_FORMS), "has": _HAS},
    count_slots=frozenset({"k"}),
)

# --- unit conversions: time, measurement -------------------------------------------------

# canonical -> (dimension, size in the dimension's base unit, singular, plural, *aliases)
_TIME_UNITS = {
    "second": ("clock", 1, "second", "seconds"),
    "minute": ("clock", 60, "minute", "minutes"),
    "hour": ("clock", 3600, "hour", "hours"),
    "day": ("clock", 86400, "day", "days"),
    "week": ("clock", 7 * 86400, "week", "weeks"),
    "fortnight": ("clock", 14 * 86400, "fortnight", "fortnights"),
    # months vary in days, so the calendar is its own dimension: days in a year is not asked
    "month": ("calendar", 1, "month", "months"),
    "year": ("calendar", 12, "year", "years"),
    "decade": ("calendar", 120, "decade", "decades"),
    "century": ("calendar", 1200, "century", "centuries"),
}
_TIME_PAIRS = [
    ("minute", "second"), ("hour", "minute"), ("day", "hour"), ("week", "day"),
    ("fortnight", "day"), ("year", "month"), ("decade", "year"), ("century", "year"),
]
_MEASURE_UNITS = {
    "millimeter": ("length", 1, "millimeter", "millimeters", "millimetre", "millimetres"),
    "centimeter": ("length", 10, "centimeter", "centimeters", "centimetre", "centimetres"),
    "meter": ("length", 1000, "meter", "meters", "metre", "metres"),
    "kilometer": ("length", 1_000_000, "kilometer", "kilometers", "kilometre", "kilometres"),
    "gram": ("mass", 1, "gram", "grams"),
    "kilogram": ("mass", 1000, "kilogram", "kilograms"),
    "milliliter": ("volume", 1, "milliliter", "milliliters", "millilitre", "millilitres"),
    "liter": ("volume", 1000, "liter", "liters", "litre", "litres"),
}
_MEASURE_PAIRS = [
    ("centimeter", "millimeter"), ("meter", "centimeter"), ("meter", "millimeter"),
    ("kilometer", "meter"), ("kilogram", "gram"), ("liter", "milliliter"),
]


def _conversion(name: str, units: dict, pairs: list, templates: tuple[str, ...]) -> Topic:
    forms = {u: spec[2:] for u, spec in units.items()}
    size = {u: spec[1] for u, spec in units.items()}
    dim = {u: spec[0] for u, spec in units.items()}

    def read(s):
        big, small = s["big"], s["small"]
        if dim[big] != dim[small]:
            return None  # e.g. days in a year: not a fixed conversion, so no verdict
        return (s["k"], big, small), s["c"]

    return Topic(
        name=name,
        templates=templates,
        space=lambda: [(k, big, small) for big, small in pairs for k in range(1, 21)],
        answer=lambda p: p[0] * size[p[1]] // size[p[2]],
        holds=lambda p, c: p[0] * size[p[1]] == c * size[p[2]],
        key=lambda p, c: f"{name}:{p[0]}*{p[1]}={c}*{p[2]}",
        render=lambda p, c: {
            "k": str(p[0]), "big": _pick(forms, p[1], p[0]), "c": str(c),
            "small": _pick(forms, p[2], c),
            "is": "is" if p[0] == 1 else "are", "has": "has" if p[0] == 1 else "have",
        },
        read=read,
        words={"big": _nouns(forms), "small": _nouns(forms), "is": _IS, "has": _HAS},
        count_slots=frozenset({"k"}),
    )


TIME = _conversion("time", _TIME_UNITS, _TIME_PAIRS, (
    "There are {c} {small} in {k} {big}.",
    "{k} {big} {is} equal to {c} {small}.",
    "In {k} {big} there are {c} {small}.",
    "{k} {big} {has} {c} {small}.",
    "{c} {small} make {k} {big}.",
))
MEASUREMENT = _conversion("measurement", _MEASURE_UNITS, _MEASURE_PAIRS, (
    "There are {c} {small} in {k} {big}.",
    "{k} {big} {is} the same as {c} {small}.",
    "{k} {big} can be written as {c} {small}.",
    "{c} {small} make {k} {big}.",
    "If you convert {k} {big} to {small}, you get {c}.",
))

# --- money -------------------------------------------------------------------------------

_COIN_CENTS = {"penny": 1, "nickel": 5, "dime": 10, "quarter": 25, "half-dollar": 50, "dollar": 100}
_COIN_FORMS = {
    "penny": ("penny", "pennies"), "nickel": ("nickel", "nickels"), "dime": ("dime", "dimes"),
    "quarter": ("quarter", "quarters"),
    "half-dollar": ("half dollar", "half dollars", "half-dollar", "half-dollars"),
    "dollar": ("dollar", "dollars"),
}
_CENT_FORMS = {"cent": ("cent", "cents")}

MONEY = Topic(
    name="money",
    templates=(
        "{k} {coin} {make} {c} {cents}.",
        "{k} {coin} {is} worth {c} {cents}.",
        "The value of {k} {coin} is {c} {cents}.",
        "{c} {cents} is the same as {k} {coin}.",
        "You need {k} {coin} to make {c} {cents}.",
    ),
    space=lambda: [(k, coin) for coin in _COIN_CENTS for k in range(1, 21)],
    answer=lambda p: p[0] * _COIN_CENTS[p[1]],
    holds=lambda p, c: p[0] * _COIN_CENTS[p[1]] == c,
    key=lambda p, c: f"money:{p[0]}*{p[1]}={c}*cent",
    render=lambda p, c: {
        "k": str(p[0]), "coin": _pick(_COIN_FORMS, p[1], p[0]), "c": str(c),
        "cents": _pick(_CENT_FORMS, "cent", c),
        "make": "makes" if p[0] == 1 else "make", "is": "is" if p[0] == 1 else "are",
    },
    read=lambda s: ((s["k"], s["coin"]), s["c"]),
    words={"coin": _nouns(_COIN_FORMS), "cents": _nouns(_CENT_FORMS), "make": _MAKE, "is": _IS},
    count_slots=frozenset({"k"}),
)

# --- parity ------------------------------------------------------------------------------


def _parity_read(s):
    if "rem" in s:
        claim = {0: "even", 1: "odd"}.get(s["rem"])  # a remainder of 7 states no parity
    else:
        claim = s.get("even") or s.get("can")
    return None if claim is None else ((s["n"],), claim)


PARITY = Topic(
    name="parity",
    templates=(
        "{n} is an {even} number.",
        "The number {n} is {even}.",
        "{n} {can} be split into 2 equal groups.",
        "When you divide {n} by 2, the remainder is {rem}.",
        "{n} belongs to the {even} numbers.",
    ),
    space=lambda: [(n,) for n in range(0, 201)],
    answer=lambda p: "even" if p[0] % 2 == 0 else "odd",
    holds=lambda p, c: c == ("even" if p[0] % 2 == 0 else "odd"),
    key=lambda p, c: f"parity:{p[0]}={c}",
    render=lambda p, c: {
        "n": str(p[0]), "even": c, "can": "can" if c == "even" else "cannot",
        "rem": "0" if c == "even" else "1",
    },
    read=_parity_read,
    words={
        "even": {"even": "even", "odd": "odd"},
        "can": {"can": "even", "cannot": "odd", "can not": "odd", "can't": "odd"},
    },
    corrupt=lambda p, c: "odd" if c == "even" else "even",
)

# --- comparison --------------------------------------------------------------------------

_GT, _LT = ">", "<"
# slot -> (word rendered for >, word rendered for <, extra accepted forms)
_CMP_SLOTS = {
    "greater": ("greater", "less", {"bigger": _GT, "larger": _GT, "more": _GT,
                                    "smaller": _LT, "fewer": _LT}),
    "bigger": ("bigger", "smaller", {"larger": _GT, "greater": _GT, "less": _LT}),
    "after": ("after", "before", {}),
    "right": ("right", "left", {}),
    "larger": ("larger", "smaller", {"bigger": _GT, "greater": _GT, "less": _LT}),
}


def _cmp_read(s):
    rel = next(s[slot] for slot in _CMP_SLOTS if slot in s)
    return (s["a"], s["b"]), rel


COMPARISON = Topic(
    name="comparison",
    templates=(
        "{a} is {greater} than {b}.",
        "The number {a} is {bigger} than {b}.",
        "{a} comes {after} {b} when counting.",
        "On a number line, {a} is to the {right} of {b}.",
        "{a} is a {larger} number than {b}.",
    ),
    space=lambda: [(a, b) for a in range(0, 101) for b in range(0, 101) if a != b],
    answer=lambda p: _GT if p[0] > p[1] else _LT,
    holds=lambda p, c: p[0] > p[1] if c == _GT else p[0] < p[1],
    key=lambda p, c: f"comparison:{p[0]}{c}{p[1]}",
    render=lambda p, c: {"a": str(p[0]), "b": str(p[1])} | {
        slot: (gt if c == _GT else lt) for slot, (gt, lt, _) in _CMP_SLOTS.items()
    },
    read=_cmp_read,
    words={slot: {gt: _GT, lt: _LT} | extra for slot, (gt, lt, extra) in _CMP_SLOTS.items()},
    corrupt=lambda p, c: _LT if c == _GT else _GT,
)

# --- place value -------------------------------------------------------------------------

_PLACES = {"ones": 0, "tens": 1, "hundreds": 2, "thousands": 3}

PLACE_VALUE = Topic(
    name="place_value",
    templates=(
        "The digit in the {place} place of {n} is {d}.",
        "In {n}, the {place} digit is {d}.",
        "{n} has {d} in the {place} place.",
        "The {place} digit of {n} is {d}.",
        "In the number {n}, the digit {d} is in the {place} place.",
    ),
    space=lambda: [(n, p) for n in range(10, 1000) for p in _PLACES if 10 ** _PLACES[p] <= n],
    answer=lambda p: p[0] // 10 ** _PLACES[p[1]] % 10,
    holds=lambda p, c: p[0] // 10 ** _PLACES[p[1]] % 10 == c,  # missing places read as 0
    key=lambda p, c: f"place_value:{p[0]}.{p[1]}={c}",
    render=lambda p, c: {"n": str(p[0]), "place": p[1], "d": str(c)},
    read=lambda s: ((s["n"], s["place"]), s["d"]),
    words={"place": {p: p for p in _PLACES} | {"units": "ones"}},
)

TOPICS: dict[str, Topic] = {
    t.name: t for t in (
        ADDITION, SUBTRACTION, MULTIPLICATION, DIVISION, FRACTIONS, SHAPES, TIME, MONEY,
        MEASUREMENT, PARITY, COMPARISON, PLACE_VALUE,
    )
}
ALL_TOPICS: tuple[str, ...] = tuple(TOPICS)


@functools.lru_cache(maxsize=None)
def fact_space(topic: str) -> tuple[tuple, ...]:
    return tuple(TOPICS[topic].space())
