"""Contract of the claims stage: the claims table, the curves of its figures, the figures."""

from __future__ import annotations

from .spec import Figure, make_table

STAGE = "claims"
#: The claim ids (bpttbench.claims.CLAIMS registers one module per id; a test checks that
#: both lists agree). Figure figures/claim_<id>.png per claim.
CLAIM_IDS = ("1_depth", "2_tied_untied", "3_orthogonal", "4_pascanu", "5_mean_field",
             "6_float32", "7_gating", "8_precision")
#: Claims shown in their own report section rather than under "Claims".
CLAIM_SECTIONS = {"8_precision": "Reduced precision"}
OVERVIEW = "claims_overview"

CLAIMS_DOCS = {
    "claim_id": "unique id of the check: claim number, letter, and the condition "
    "(e.g. 1b.rnn_tanh.s0.5)",
    "description": "the statement that is checked",
    "measured": "the measured value (unit in column unit)",
    "predicted": "the value theory or the seed text predicts",
    "tolerance": "allowed deviation, from the statistics (t or z standard errors), a "
    "floating-point error bound or a stated finite-size correction; see note",
    "passed": "True when measured and predicted agree as the comparison column states",
    "comparison": "|m-p|<=tol (equal within tolerance), m<=p+tol (upper bound or count), "
    "m>=p-tol (lower bound) or p<=m<=p+tol (inside the predicted interval)",
    "kind": "prediction (a correct implementation could fail it: the theory's assumptions "
    "or approximations could be wrong for this system), exactness (an identity, theorem or "
    "rigorous bound, also one checked by Monte Carlo: only a bug, round-off beyond its "
    "bound or a sampling accident can fail it) or method agreement (two numerical methods "
    "for one quantity)",
    "score": "how far the row is from failing; it passes exactly when score <= 1: "
    "|m-p|/tol (|m-p|<=tol rows), max(m-p, 0)/tol (m<=p+tol), max(p-m, 0)/tol (m>=p-tol), "
    "distance from the interval's centre in half-widths, |m-p-tol/2|/(tol/2) (p<=m<=p+tol); "
    "inf: a count that should be zero is not",
    "claim": "the claim (experiment) the row belongs to: 1_depth ... 8_precision (CLAIM_IDS)",
    "condition": "model, sizes and parameters of the row",
    "n": "number of independent samples or checks behind the measured value",
    "stderr": "standard error of the measured value (or of measured - predicted)",
    "unit": "unit of measured, predicted and tolerance (nats are natural logs)",
    "source": "where the claim comes from (seed text, paper, bpttbench.theory function)",
    "note": "how the tolerance was set and, for a failing row, why theory and "
    "measurement disagree",
}

CLAIM_CURVES_DOCS = {
    "claim": "the claim the curve belongs to (its figure is figures/claim_<claim>.png)",
    "panel": "panel of the figure",
    "group": "curve within the panel (colour and legend entry)",
    "kind": "measured (solid), predicted (dashed), bound (dotted), points (markers with "
    "error bars), band (line with spread), vline / hline (reference lines)",
    "x": "abscissa (see the panel's axis label)",
    "y": "ordinate; natural logs where it is a log",
    "y_err": "error bar (points: tolerance-sized) or half-width of the band",
}


TABLES = (
    make_table("claims", STAGE, "claims.csv", ("claim_id", "condition"), CLAIMS_DOCS,
               {"claim_id": "str", "description": "str", "passed": "bool", "comparison": "str",
                "kind": "str?", "claim": "str", "condition": "str", "n": "int", "unit": "str",
                "source": "str", "note": "str"},
               compare="rows"),
    # the points of a curve follow in order: the keys name a curve, not a row
    make_table("claim_curves", STAGE, "claim_curves.parquet", ("claim", "panel", "group"),
               CLAIM_CURVES_DOCS,
               {"claim": "str", "panel": "str", "group": "str", "kind": "str"}),
)


def claim_figure_name(claim: str) -> str:
    return f"claim_{claim}"


FIGURES = (
    Figure(OVERVIEW, STAGE, ("claims",), "bpttbench.claims.figures:overview_figure", "Claims",
           "Claims"),
    *(Figure(claim_figure_name(c), STAGE, ("claims", "claim_curves"),
             "bpttbench.claims.figures:claim_figure", "Claims", CLAIM_SECTIONS.get(c, "Claims"))
      for c in CLAIM_IDS),
)
