"""Every grader kind by name, and which kind grades each category unless a recipe says otherwise."""

from __future__ import annotations

from deepdistill_tui.core.grading.base import GraderKind
from deepdistill_tui.core.grading.code_grader import SandboxCode
from deepdistill_tui.core.grading.instructions import Constraints
from deepdistill_tui.core.grading.judge import Judge
from deepdistill_tui.core.grading.math_grader import MathVerify

GRADERS: dict[str, type[GraderKind]] = {
    kind.name: kind for kind in (MathVerify, SandboxCode, Constraints, Judge)
}
"""In the order a mixed batch is graded: the kinds with worker pools first, so they start early."""

FALLBACK = Judge.name
"""Where an item goes that its category's kind does not accept (an instruction with no constraints)."""
