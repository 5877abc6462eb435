"""The per-family parts of the compression job (base.py says what a workflow supplies),
registered here. The order is the fallback match order for a model whose family the
registry does not name: most specific first (a segmenter is also an image model)."""

from toolkit.workflows import classifier, llm, portrait
from toolkit.workflows.base import (
    CalibrationData,
    Workflow,
    last_report,
    register_workflow,
    registered_workflows,
    workflow_for,
)

for _workflow in (portrait.WORKFLOW, classifier.WORKFLOW, llm.WORKFLOW):
    register_workflow(_workflow)

__all__ = ["CalibrationData", "Workflow", "last_report", "register_workflow",
           "registered_workflows", "workflow_for"]
