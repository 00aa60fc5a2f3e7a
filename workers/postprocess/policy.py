"""The safety policy engine: YAML policies of rules on classifier category scores, checked strictly.

A policy document::

    policy: default                 # its name ([a-z0-9_-], unique in the configured set)
    description: free text
    defaults:
      action: allow                 # the decision when no rule matches
      missing_score: review         # the decision when a category the policy knows has no score
    rules:
      - name: stripes-review        # optional; "rule <n>" otherwise
        category: stripes           # a category the classifier scores, or "any" (each category)
        min_score: 0.25             # the rule matches when min_score <= score
        max_score: 0.75             # ... and score < max_score (optional; no upper bound when absent)
        action: review              # allow | blur | review | block

Every matching rule is a candidate and the most severe action wins (block > review > blur > allow;
among equals, the first in the file): a rule can only make a decision stricter, never release what
another rule holds. A document with an unknown field, an unknown category or action, a score outside
[0, 1], min_score >= max_score, a duplicate policy name or no rules is refused as a whole, naming the
problem (``PolicyError``, protocol code POLICY_INVALID); nothing of a refused set is installed.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.protocol.messages import ErrorCode

ACTIONS = ("allow", "blur", "review", "block")  # least to most severe
SEVERITY = {a: i for i, a in enumerate(ACTIONS)}
ANY = "any"
SHIPPED_DIR = Path(__file__).parent / "policies"
_DOC_FIELDS = ("policy", "description", "defaults", "rules")
_DEFAULT_FIELDS = ("action", "missing_score")
_RULE_FIELDS = ("name", "category", "min_score", "max_score", "action")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class PolicyError(ValueError):
    """A policy document that cannot be installed; the message names the document, rule and field."""

    code = ErrorCode.POLICY_INVALID


@dataclass(frozen=True)
class Rule:
    name: str
    category: str  # a category or ANY
    action: str
    min_score: float
    max_score: float | None  # exclusive; None: no upper bound

    def matches(self, score: float) -> bool:
        return self.min_score <= score and (self.max_score is None or score < self.max_score)

    def describe(self, category: str, score: float) -> str:
        upper = "" if self.max_score is None else f", {self.max_score:g})"
        span = f"[{self.min_score:g}{upper}" if upper else f">= {self.min_score:g}"
        return f"rule {self.name!r}: {category} {score:.3f} {span} -> {self.action}"


@dataclass(frozen=True)
class Decision:
    action: str
    rule: str  # the deciding rule's name; "defaults.action" or "defaults.missing_score"
    category: str  # the category whose score decided ("" when the default decided)
    score: float | None
    reason: str


@dataclass(frozen=True)
class Policy:
    name: str
    description: str
    default_action: str
    missing_score_action: str
    rules: tuple[Rule, ...]
    categories: tuple[str, ...]  # what the engine knew when the policy was parsed
    source: str
    sha256: str

    def decide(self, scores: Mapping[str, float]) -> Decision:
        """The decision for one item's category scores. A score that is not a number in [0, 1] is
        refused (ValueError): the caller decides what a bad score means (the validator fails closed)."""
        for cat, s in scores.items():
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not 0 <= s <= 1:
                raise ValueError(f"score of {cat!r} must be a number in [0, 1], got {s!r}")
        best: Decision | None = None
        for cat in self.categories:
            if cat not in scores:
                cand = Decision(self.missing_score_action, "defaults.missing_score", cat, None,
                                f"policy {self.name!r}: no score for {cat!r} -> {self.missing_score_action}")
                best = _stricter(best, cand)
                continue
            score = float(scores[cat])
            for rule in self.rules:
                if rule.category in (cat, ANY) and rule.matches(score):
                    best = _stricter(best, Decision(rule.action, rule.name, cat, score,
                                                    f"policy {self.name!r} {rule.describe(cat, score)}"))
        if best is None:
            return Decision(self.default_action, "defaults.action", "", None,
                            f"policy {self.name!r}: no rule matched -> {self.default_action}")
        return best


def _stricter(a: Decision | None, b: Decision) -> Decision:
    return b if a is None or SEVERITY[b.action] > SEVERITY[a.action] else a


def _fail(where: str, message: str) -> PolicyError:
    return PolicyError(f"{where}: {message}")


def _unknown(where: str, given: Iterable[Any], allowed: Sequence[str], what: str) -> None:
    extra = [str(k) for k in given if k not in allowed]
    if extra:
        raise _fail(where, f"unknown {what} {extra[0]!r} (allowed: {', '.join(allowed)})")


def _score(where: str, field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(where, f"{field} must be a number in [0, 1], got {value!r}")
    if not 0 <= value <= 1:
        raise _fail(where, f"{field} must be in [0, 1], got {value!r}")
    return float(value)


def _action(where: str, field: str, value: Any) -> str:
    if value not in ACTIONS:
        raise _fail(where, f"{field} {value!r} is not an action (allowed: {', '.join(ACTIONS)})")
    return str(value)


def _rule(where: str, i: int, raw: Any, categories: Sequence[str]) -> Rule:
    label = f"{where}: rule {i}"
    if not isinstance(raw, dict):
        raise _fail(label, f"must be a mapping of {', '.join(_RULE_FIELDS)}, got {type(raw).__name__}")
    name = raw.get("name", f"rule {i}")
    if not isinstance(name, str) or not name:
        raise _fail(label, f"name must be a non-empty string, got {name!r}")
    if "name" in raw:
        label = f"{where}: rule {i} ({name})"
    _unknown(label, raw, _RULE_FIELDS, "field")
    for required in ("category", "min_score", "action"):
        if required not in raw:
            raise _fail(label, f"missing required field {required!r}")
    category = raw["category"]
    if category != ANY and category not in categories:
        raise _fail(label, f"unknown category {category!r} (known: {', '.join([*categories, ANY])})")
    lo = _score(label, "min_score", raw["min_score"])
    hi = None if raw.get("max_score") is None else _score(label, "max_score", raw["max_score"])
    if hi is not None and hi <= lo:
        raise _fail(label, f"max_score {hi:g} must be above min_score {lo:g} (the rule would never match)")
    return Rule(name, str(category), _action(label, "action", raw["action"]), lo, hi)


def parse_policy(text: str, *, source: str, categories: Sequence[str]) -> Policy:
    """One YAML document -> a Policy, or PolicyError naming what is wrong and where."""
    import yaml

    if not categories:
        raise ValueError("the policy engine needs the classifier's categories to check rules against")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _fail(source, f"not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise _fail(source, f"must be a mapping with {', '.join(_DOC_FIELDS)}, got {type(doc).__name__}")
    _unknown(source, doc, _DOC_FIELDS, "field")
    name = doc.get("policy")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(source, f"policy name must match {_NAME.pattern}, got {name!r}")
    where = f"{source} (policy {name!r})"
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise _fail(where, f"description must be text, got {type(description).__name__}")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise _fail(where, f"defaults must be a mapping of {', '.join(_DEFAULT_FIELDS)}")
    _unknown(f"{where}: defaults", defaults, _DEFAULT_FIELDS, "field")
    default_action = _action(f"{where}: defaults", "action", defaults.get("action", "allow"))
    missing = _action(f"{where}: defaults", "missing_score", defaults.get("missing_score", "review"))
    rules_raw = doc.get("rules")
    if not isinstance(rules_raw, list) or not rules_raw:
        raise _fail(where, "rules must be a non-empty list")
    rules = tuple(_rule(where, i, r, categories) for i, r in enumerate(rules_raw, start=1))
    names = [r.name for r in rules]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _fail(where, f"rule names must be unique, {dupes[0]!r} is used twice")
    return Policy(name, description.strip(), default_action, missing, rules, tuple(categories), source,
                  hashlib.sha256(text.encode()).hexdigest())


def parse_set(documents: Mapping[str, str], categories: Sequence[str]) -> dict[str, Policy]:
    """Several documents (source label -> YAML text), all or nothing: names must be unique."""
    out: dict[str, Policy] = {}
    for source, text in documents.items():
        policy = parse_policy(text, source=source, categories=categories)
        if policy.name in out:
            raise _fail(source, f"policy {policy.name!r} is also defined by {out[policy.name].source}")
        out[policy.name] = policy
    return out


def shipped_documents(directory: Path = SHIPPED_DIR) -> dict[str, str]:
    """The configured policies shipped with the worker: every *.yaml of ``directory``, by file name."""
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"no policy files (*.yaml) in {directory}")
    return {f"policies/{f.name}": f.read_text() for f in files}


def load_shipped(categories: Sequence[str], directory: Path = SHIPPED_DIR) -> dict[str, Policy]:
    return parse_set(shipped_documents(directory), categories)
