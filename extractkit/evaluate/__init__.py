"""Gold-set evaluation: every tier forced on every gold document, field scores, chain simulation."""

from ._gold import GoldError, GoldItem, convert_invoice2data, load_gold
from ._render import eval_csv, eval_html, print_eval
from ._run import EvalSummary, aevaluate, evaluate
from ._score import FieldScore, parse_date, parse_number, prf, same, score
from ._summary import build_eval, latest_eval_run, simulate

__all__ = [
    "EvalSummary",
    "FieldScore",
    "GoldError",
    "GoldItem",
    "aevaluate",
    "build_eval",
    "convert_invoice2data",
    "eval_csv",
    "eval_html",
    "evaluate",
    "latest_eval_run",
    "load_gold",
    "parse_date",
    "parse_number",
    "prf",
    "print_eval",
    "same",
    "score",
    "simulate",
]
