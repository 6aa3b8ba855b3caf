"""The job spec as the job store keeps it: :class:`converter.spec.JobSpec`, stored as JSON in the job record under
``spec`` by the API (built once, at submit) and read back typed by the workers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from converter.spec import DestinationSpec, JobSpec, SourceSpec


def spec_of(record: Mapping[str, Any]) -> JobSpec:
    """The spec of a job record (``JobStore.get``)."""
    return JobSpec.from_dict(record["spec"])


__all__ = ["DestinationSpec", "JobSpec", "SourceSpec", "spec_of"]
