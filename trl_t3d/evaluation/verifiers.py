"""Verifiers: `verifier(completion: str, reference) -> bool`, one per answer format.

A task pairs prompts with references and one verifier, so users bring their own (any callable with that signature).
Built-ins, also available by name through `get_verifier`:

- `number_verifier` ("number"): GSM8K style, the last number of the completion (commas stripped) equals the reference
  numerically (`"#### 1,234"`, `"= 1234.0"` and `"1234"` all match 1234);
- `boxed_verifier` ("boxed"): the content of the last `\\boxed{...}` equals the reference after LaTeX normalization
  (`\\left`/`\\right`, `\\text{}`, `\\dfrac`, spaces, trailing period, `^\\circ`, ...), or numerically when both parse;
- `exact_match_verifier` ("exact"): equal after whitespace normalization;
- `one_of_verifier` ("one_of"): the normalized completion is one of several valid answers (a collection, or a callable
  `reference(answer) -> bool` for tasks with too many valid answers to list).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection
from fractions import Fraction

# ------------------------------------------------------------------------------------------------ numbers
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_last_number(text: str) -> str | None:
    """The last number in `text` with thousands separators removed (`"1,234.5"` -> `"1234.5"`), or None."""
    matches = _NUMBER.findall(text or "")
    if not matches:
        return None
    number = matches[-1].replace(",", "")
    return number.rstrip(".") or None


def parse_number(text) -> float | None:
    """A float from `"1,234"`, `"-3.5"`, `"3/4"`, `"50%"`, `"$12"`; None when it is not a number."""
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text)
    if text is None:
        return None
    s = str(text).strip().replace(",", "").replace("$", "").rstrip(".").strip()
    if s.endswith("%"):
        s = s[:-1]
    try:
        return float(s)
    except ValueError:
        pass
    try:
        return float(Fraction(s.replace(" ", "")))
    except (ValueError, ZeroDivisionError):
        return None


def numbers_equal(a: float, b: float, rel_tol: float = 1e-6) -> bool:
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)


def _reference_number(reference) -> float:
    value = parse_number(reference)
    if value is None and isinstance(reference, str):
        # GSM8K answers end with "#### 72": take the last number of the reference text.
        last = extract_last_number(reference)
        value = parse_number(last) if last is not None else None
    if value is None:
        raise ValueError(f"The reference {reference!r} holds no number; use `exact_match_verifier` for text answers.")
    return value


def number_verifier(completion: str, reference) -> bool:
    """GSM8K style: the last number in the completion equals the (numeric) reference."""
    last = extract_last_number(completion)
    if last is None:
        return False
    value = parse_number(last)
    return value is not None and numbers_equal(value, _reference_number(reference))


# ------------------------------------------------------------------------------------------------ \boxed{}
def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`), braces balanced; None if absent."""
    text = text or ""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    if i < len(text) and text[i] == " ":  # "\boxed 5"
        match = re.match(r" +([^\s$]+)", text[i:])
        return match.group(1) if match else None
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None  # unbalanced: the completion was cut


def _strip_braced_command(s: str, command: str) -> str:
    """`\\text{abc}` -> `abc` for every occurrence (balanced braces)."""
    out, i, token = [], 0, "\\" + command + "{"
    while True:
        j = s.find(token, i)
        if j < 0:
            out.append(s[i:])
            return "".join(out)
        out.append(s[i:j])
        k, depth = j + len(token), 1
        while k < len(s) and depth:
            depth += {"{": 1, "}": -1}.get(s[k], 0)
            k += 1
        out.append(s[j + len(token) : k - 1] if depth == 0 else s[j + len(token) :])
        i = k


def _fix_fracs(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{2}` -> `\\frac{1}{2}` (short forms MATH answers use)."""
    return re.sub(
        r"\\frac\s*(\{[^{}]*\}|[0-9a-zA-Z])\s*(\{[^{}]*\}|[0-9a-zA-Z])",
        lambda m: "\\frac" + "".join(g if g.startswith("{") else "{" + g + "}" for g in m.groups()),
        s,
    )


def normalize_latex_answer(answer: str) -> str:
    """Canonical form of a LaTeX answer so that equivalent spellings compare equal.

    Removes `$`, spaces, `\\left`/`\\right`, `\\!`, `\\,`, `\\;`, `\\text{}`/`\\textbf{}`/`\\mathrm{}`/`\\mbox{}`
    wrappers, degree signs, a trailing period, a leading `x=`; `\\dfrac`/`\\tfrac` -> `\\frac`, short fractions
    braced, `0.5` kept as is, thousands separators in plain numbers dropped.
    """
    s = str(answer).strip()
    s = s.replace("\n", "").replace("\\$", "").replace("$", "")
    for cmd in ("text", "textbf", "mathrm", "mathbf", "mbox", "operatorname"):
        s = _strip_braced_command(s, cmd)
    s = s.replace("\\left", "").replace("\\right", "")
    for spacing in ("\\!", "\\,", "\\;", "\\:", "\\quad", "\\qquad", "~"):
        s = s.replace(spacing, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\circ", "").replace("\\%", "").replace("%", "")
    s = s.replace("\\displaystyle", "")
    s = re.sub(r"\s+", "", s)
    s = _fix_fracs(s)
    s = s.rstrip(".")
    if re.fullmatch(r"[a-zA-Z]=.+", s):  # "x=5" -> "5"
        s = s.split("=", 1)[1]
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if re.fullmatch(r"\{.*\}", s) and s.count("{") == 1:  # "{5}" -> "5"
        s = s[1:-1]
    return s


def _latex_number(s: str) -> float | None:
    match = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s)
    if match:
        sign, num, den = match.groups()
        if int(den) == 0:
            return None
        return (-1 if sign else 1) * int(num) / int(den)
    return parse_number(s)


def boxed_verifier(completion: str, reference) -> bool:
    """The last `\\boxed{}` of the completion equals the reference after normalization (or numerically)."""
    predicted = extract_boxed(completion)
    if predicted is None:
        return False
    ref = str(reference)
    ref_boxed = extract_boxed(ref)
    if ref_boxed is not None:  # a reference given as a full solution
        ref = ref_boxed
    a, b = normalize_latex_answer(predicted), normalize_latex_answer(ref)
    if a == b:
        return True
    x, y = _latex_number(a), _latex_number(b)
    return x is not None and y is not None and numbers_equal(x, y)


# ------------------------------------------------------------------------------------------------ text
def normalize_whitespace(text: str) -> str:
    return " ".join(str(text).split())


def exact_match_verifier(completion: str, reference) -> bool:
    """Equal after collapsing whitespace and stripping both ends."""
    return normalize_whitespace(completion) == normalize_whitespace(reference)


def one_of_verifier(completion: str, reference) -> bool:
    """Tasks with many valid answers: `reference` is a collection of valid answers or a predicate `answer -> bool`."""
    answer = normalize_whitespace(completion)
    if callable(reference):
        return bool(reference(answer))
    if isinstance(reference, str) or not isinstance(reference, Collection):
        raise ValueError(
            f"`one_of_verifier` needs a collection of valid answers or a callable, got {type(reference).__name__}. "
            "Use `exact_match_verifier` for a single answer."
        )
    return answer in {normalize_whitespace(r) for r in reference}


def permutation_verifier(completion: str, reference) -> bool:
    """The completion uses every character of `reference` exactly once, in any order (whitespace ignored)."""
    answer = "".join(str(completion).split())
    return sorted(answer) == sorted("".join(str(reference).split()))


VERIFIERS: dict[str, Callable[[str, object], bool]] = {
    "number": number_verifier,
    "boxed": boxed_verifier,
    "exact": exact_match_verifier,
    "one_of": one_of_verifier,
    "permutation": permutation_verifier,
}


def get_verifier(verifier) -> Callable[[str, object], bool]:
    """A verifier from its name ("number", "boxed", "exact", "one_of", "permutation") or a callable as is."""
    if callable(verifier):
        return verifier
    if isinstance(verifier, str) and verifier in VERIFIERS:
        return VERIFIERS[verifier]
    raise ValueError(
        f"Unknown verifier {verifier!r}. Use one of {sorted(VERIFIERS)} or pass a callable "
        "`verifier(completion: str, reference) -> bool`."
    )
