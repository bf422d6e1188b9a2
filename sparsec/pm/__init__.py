"""Pass infrastructure: passes, registry, analyses, pipelines, instruments, the pass manager."""

from sparsec.pm.analysis import Analysis, AnalysisManager
from sparsec.pm.context import PassContext
from sparsec.pm.manager import PassManager, PassRecord
from sparsec.pm.pass_base import Pass, PassResult, option
from sparsec.pm.pipeline import Pipeline, parse_pipeline
from sparsec.pm.registry import all_passes, get_pass, register_pass

__all__ = [
    "Analysis",
    "AnalysisManager",
    "Pass",
    "PassContext",
    "PassManager",
    "PassRecord",
    "PassResult",
    "Pipeline",
    "all_passes",
    "get_pass",
    "option",
    "parse_pipeline",
    "register_pass",
]
