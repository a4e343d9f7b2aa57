"""The stage registry: a new kind is one module, and the commands, the pipeline YAML and its schema,
and the demo's data section and stage table all come from its record.

The toy kind here lives outside phi1, in a package the test writes, and is found through the
entry-point group `phi1.data_stages` the way a user's plugin would be."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TOY = '''
"""A toy stage kind: every text upper-cased, and a suffix added."""

from dataclasses import dataclass

from datatrove.pipeline.base import PipelineStep

from phi1.data.records import finish_report
from phi1.data.stages.base import DemoPlace, StageKind, config_of, one_block, run_stage_file


@dataclass
class ShoutStage:
    """The shout stage's settings."""

    suffix: str = "!"  # appended to every text
    times: int = 1  # how many times the suffix is appended

    def validate(self):
        if self.times < 0:
            from phi1.errors import ConfigError

            raise ConfigError(f"shout.times: {self.times} must be >= 0")


class Shout(PipelineStep):
    name = "shout"

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def run(self, data, rank=0, world_size=1):
        for doc in data:
            doc.text = doc.text.upper() + self.cfg.suffix * self.cfg.times
            self.stat_update("shouted")
            yield doc


def build_shout(ctx, cfg):
    return one_block(ctx, [Shout(cfg)])


def run_shout(input_path, output_path, *, cfg=None, workers=0, skip_bad_lines=False, rejected=None, quiet=False,
              overwrite=False, **options):
    cfg = config_of(KIND, cfg, options)
    report, _ = run_stage_file(KIND, cfg, input_path, output_path, rejected=rejected, skip_bad_lines=skip_bad_lines,
                               quiet=quiet, overwrite=overwrite, workers=workers)
    return finish_report(report, quiet)


KIND = StageKind("shout", ShoutStage, build_shout, run_shout, help="upper-case every text (a toy kind)",
                 demo=DemoPlace("dedup", "shout every document"))
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    """A package `toyshout` with its dist-info, as `pip install` would leave it."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "toyshout.py").write_text(textwrap.dedent(TOY))
    info = root / "toyshout-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyshout\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[phi1.data_stages]\nshout = toyshout\n")
    return root


def _phi1(plugin: Path, *args, cwd=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")]),
           "PHI1_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "phi1", *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_a_plugin_kind_gets_a_command_flags_a_pipeline_stage_and_a_schema(plugin, tmp_path):
    res = _phi1(plugin, "data", "--help")
    assert res.returncode == 0, res.stderr
    assert "shout" in res.stdout and "upper-case every text" in res.stdout

    res = _phi1(plugin, "data", "shout", "--help")
    assert res.returncode == 0, res.stderr
    assert "--suffix" in res.stdout and "appended to every text" in res.stdout and "--times" in res.stdout

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"r{i}", "text": f"x = {i}"}) + "\n" for i in range(4)))
    res = _phi1(plugin, "data", "shout", inp, "--out", tmp_path / "o.jsonl", "--suffix", "?", "--times", "2",
                "--workers", "1", "--quiet")
    assert res.returncode == 0, res.stderr
    assert [json.loads(x)["text"] for x in (tmp_path / "o.jsonl").read_text().splitlines()] == \
        [f"X = {i}??" for i in range(4)]
    res = _phi1(plugin, "data", "shout", inp, "--out", tmp_path / "o2.jsonl", "--times", "-1")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "shout.times" in res.stderr

    pipe = tmp_path / "p.yaml"
    pipe.write_text(json.dumps({"workdir": str(tmp_path / "work"), "workers": 1, "stages": [
        {"name": "loud", "kind": "shout", "input": str(inp), "suffix": "!!"}]}))
    res = _phi1(plugin, "data", "run", pipe, "--quiet")
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / "work" / "loud" / "manifest.json").read_text())
    assert m["kind"] == "shout" and m["kept"] == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"stages": [{"name": "loud", "kind": "shout", "input": str(inp), "volume": 3}]}))
    res = _phi1(plugin, "data", "run", bad)
    assert res.returncode == 2 and "volume" in res.stderr and "suffix" in res.stderr

    res = _phi1(plugin, "data", "schema")
    assert res.returncode == 0, res.stderr
    schema = json.loads(res.stdout)
    assert schema["$defs"]["shout"]["properties"]["suffix"]["description"] == "appended to every text"
    import jsonschema

    jsonschema.validate(json.loads(pipe.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(bad.read_text()), schema)


def test_a_registered_kind_joins_the_demo_recipe_and_its_stage_table(plugin, tmp_path, monkeypatch):
    bare = tmp_path / "bare"  # the module alone, without the dist-info: in-process registration only
    bare.mkdir()
    (bare / "toyshout.py").write_text((plugin / "toyshout.py").read_text())
    monkeypatch.syspath_prepend(str(bare))
    import toyshout

    from phi1.data import stages
    from phi1.demo.config import demo_config_from
    from phi1.demo.layout import Layout
    from phi1.demo.pipeline import data_pipeline, data_stages

    stages.register(toyshout.KIND)
    try:
        cfg = demo_config_from({"data": {"shout": {"suffix": "?"}}})
        assert cfg.data.shout.suffix == "?"
        pipeline = data_pipeline(cfg, Layout(tmp_path / "run"))
        names = [s["name"] for s in pipeline["stages"]]
        assert names[-1] == "shout" and pipeline["stages"][-1]["input"] == "dedup"
        table = {st.name: st.title for st in data_stages(cfg, Layout(tmp_path / "run"))}
        assert table["shout"] == "shout every document"
    finally:
        stages.unregister("shout")
    assert "shout" not in stages.kinds()


def test_every_kind_has_one_name_and_the_old_names_say_the_new_one(tmp_path):
    from phi1.data import stages
    from phi1.data.pipeline import parse_pipeline
    from phi1.errors import ConfigError

    for name, kind in stages.kinds().items():
        assert kind.name == name
        assert kind.config.__name__.lower().startswith(name.replace("-", "")), kind.config.__name__
    for old, new in stages.RENAMED.items():
        with pytest.raises(ConfigError, match=f"'{old}' is now called '{new}'"):
            parse_pipeline({"stages": [{"name": "x", "kind": old, "input": "in.jsonl"}]}, tmp_path / "p.yaml")


def test_schema_out_never_replaces_a_file_it_was_not_told_to(tmp_path, capsys):
    from phi1.cli import main

    out = tmp_path / "pipeline.schema.json"
    out.write_text("my notes\n")
    assert main(["data", "schema", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == "my notes\n"
    assert main(["data", "schema", "--out", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["title"] == "phi1 data pipeline"


def test_the_schema_accepts_the_shipped_pipelines_and_names_bad_options():
    import jsonschema

    from phi1.data.pipeline import pipeline_schema
    from phi1.demo.config import RECIPES
    from phi1.utils.config import read_yaml_mapping

    schema = pipeline_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(read_yaml_mapping(RECIPES / "data-demo.yaml"), schema)
    for bad in ({"stages": [{"name": "dedup", "shingle": "five"}]},
                {"stages": [{"name": "dedup", "threshhold": 0.8}]},
                {"stages": [{"name": "nosuchkind"}]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
