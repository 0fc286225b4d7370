"""Pure placement: worker views and pool counts in, plans and gap reports out. No I/O."""

from rma.placement.feasible import Verdict, check, engine_for
from rma.placement.gaps import Gap, gap_report
from rma.placement.model import SERVING_STATES, Pool, WorkerState, contribution
from rma.placement.planner import Plan, desire, multitask_limit

__all__ = [
    "SERVING_STATES", "Gap", "Plan", "Pool", "Verdict", "WorkerState", "check", "contribution",
    "desire", "engine_for", "gap_report", "multitask_limit",
]
