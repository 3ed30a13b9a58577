"""Data sets, partitioners, models, and workloads (data + model + loss + metric + target)."""

from sgdlab.workloads.base import SparseRows, Workload
from sgdlab.workloads.constants import ProblemConstants, estimate_constants
from sgdlab.workloads.registry import (
    WorkloadSpec,
    get_workload,
    linear_workload,
    workload_names,
    workload_options,
    workload_spec,
)

__all__ = [
    "ProblemConstants",
    "estimate_constants",
    "SparseRows",
    "Workload",
    "WorkloadSpec",
    "get_workload",
    "linear_workload",
    "workload_names",
    "workload_options",
    "workload_spec",
]
