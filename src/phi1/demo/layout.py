"""Where every stage of a demo run directory writes."""

from __future__ import annotations

from pathlib import Path


class Layout:
    """Where every stage of a run directory writes. The data stages are one `phi1 data run` pipeline
    (`configs/data.yaml`) whose stage directories are `data/<stage>/` (shards + manifest.json)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.data = d = self.root / "data"
        self.synth = d / "synth"
        self.tokenizer = self.root / "tokenizer"
        self.shards = self.root / "shards"
        self.configs = self.root / "configs"
        self.runs = self.root / "runs"
        self.model = self.root / "model"
        self.eval = self.root / "eval"
        self.data_pipeline = self.configs / "data.yaml"

    def run_dir(self, name: str) -> Path:
        return self.runs / name

    def stage(self, kind: str) -> Path:
        """The stage directory of one data stage: `data/<kind>/` (a demo stage is named as its kind)."""
        return self.data / kind
