"""The decontamination filter as a datatrove step (the decontaminate and exercises stages)."""

from __future__ import annotations

from datatrove.pipeline.filters.base_filter import BaseFilter

from phi1.data.decontam import Decontaminator
from phi1.data.engine import one_thread_per_task


class DecontaminationFilter(BaseFilter):
    """Drops records that overlap a benchmark task (13-gram containment, syntax-tree similarity, and
    optionally embedding + syntax); `meta.contamination` on a rejected record lists each hit.
    `kwargs` are `Decontaminator`'s."""

    name = "decontaminate"

    def __init__(self, kwargs: dict, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.kwargs, self._deco = kwargs, None

    def run(self, data, rank: int = 0, world_size: int = 1):
        if world_size > 1 and self.kwargs.get("embedding"):
            one_thread_per_task()
        yield from super().run(data, rank, world_size)

    def filter(self, doc):
        if self._deco is None:
            self._deco = Decontaminator(**self.kwargs)
        hits = self._deco.check(doc.text)
        if not hits:
            return True
        doc.metadata["contamination"] = [h.to_dict() for h in hits]
        return False, "benchmark_overlap"
