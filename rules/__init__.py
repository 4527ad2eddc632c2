"""The rules engine: which tickets page whom, from admin-written YAML (see docs/rules.md).

``load_rules(path)`` validates a file or directory strictly (all errors at once, each with
``file:line:col``) and returns a compiled :class:`RuleSet`; ``RuleSet.evaluate(EvalContext(...))`` returns
one :class:`RuleResult` per rule. :class:`RuleStore` keeps the last good set and hot-reloads it.
"""

from rules.evaluator import EvalContext, RuleResult, RuleSet
from rules.load import load_rules
from rules.loader import RuleFileError, RuleFileErrors
from rules.reload import RuleStore

__all__ = [
    "EvalContext",
    "RuleFileError",
    "RuleFileErrors",
    "RuleResult",
    "RuleSet",
    "RuleStore",
    "load_rules",
]
