import json

import pytest

from hlrp_ladder.util import sizes
from hlrp_ladder.spec import SpecError, load_spec, parse_spec
from tests.helpers import ROOT, cli

GOOD = """\
name: demo
command: [python, train.py]
batch_sizes: {start: 8, stop: 20, step: 4}
overrides:
  data.adapter.tf.prefetch.final_stream_buffer: 2
  note: "a b; rm -rf / $(x)"
env: {WANDB_API_KEY: secret-value, PLAIN: "1"}
memory: {rss_limit: 85%, cap: 1.5GiB}
"""


@pytest.mark.pure
def test_good_spec_expands_range_and_renders_argv_literally():
    spec = parse_spec(GOOD, "demo.yaml")
    assert spec.batch_sizes == [8, 12, 16, 20]
    argv = spec.argv(12)
    assert argv[:2] == ["python", "train.py"]
    # a value with spaces and shell syntax stays one literal argv item
    assert "note=a b; rm -rf / $(x)" in argv
    assert argv[-4:] == ["training.max_steps=35", "training.validation.check_interval=30",
                         "training.validation.limit_batches=1", "data.loader.batch_size=12"]
    assert spec.masked()["env"] == {"WANDB_API_KEY": "***", "PLAIN": "1"}
    assert spec.memory.cap_bytes(total=24 * 2**30) == int(1.5 * 2**30)


@pytest.mark.pure
def test_recipe_keys_can_be_renamed_or_dropped():
    spec = parse_spec("name: x\nbatch_sizes: [4]\nprobe:\n  max_steps: 7\n  keys: {max_steps: trainer.steps, "
                      "check_interval: null, limit_batches: null}\nbatch_size_key: bs\n", "x.yaml")
    assert spec.argv(4)[-2:] == ["trainer.steps=7", "bs=4"]
    assert not any("check_interval" in a for a in spec.argv(4))


@pytest.mark.parametrize("text,expected", [
    ("name: t\nbatch_sizes: [8]\nmemory:\n  metric: rss\n  rss_limit: '28 gigs'\n",
     "x.yaml:5: memory.rss_limit: '28 gigs' is not a size"),
    ("name: t\nbatch_sizes: [8, 4]\n", "x.yaml:2: batch_sizes: must be strictly ascending"),
    ("name: t\nbatch_sizes: [8]\nfoo: 1\n", "x.yaml:3: foo: unknown key"),
    ("batch_sizes: [8]\n", "x.yaml:1: name: required key is missing"),
    ("name: t\nbatch_sizes: [8]\nmemory:\n  rss_limt: 1G\n",
     "x.yaml:4: memory.rss_limt: unknown key; did you mean 'rss_limit'?"),
    ("name: t\nbatch_sizes: [8]\nexecutor: {slurm: {partiton: a}}\n",
     "x.yaml:3: executor.slurm.partiton: unknown key; did you mean 'partition'?"),
    ("name: t\nbatch_sizes: [8]\nmemroy: {cap: 1G}\n", "x.yaml:3: memroy: unknown key; did you mean 'memory'?"),
    ("name: t\nbatch_sizes: [8, x]\n", "x.yaml:2: batch_sizes.1:"),
    ("name: t\nbatch_sizes: {start: 8}\n", "x.yaml:2: batch_sizes.stop: required key is missing"),
    ("name: t\n batch_sizes: [8]\n", "x.yaml:2: not valid YAML"),
    ("name: t\nbatch_sizes: [8]\ntimeout_s: abc\n", "x.yaml:3: timeout_s:"),
    ("name: t\nbatch_sizes: [8]\noverrides: {a: [1, 2]}\n", "x.yaml:3: overrides: a: a value must be a scalar"),
    ("name: t\nbatch_sizes: [8]\nmemory: {metric: vss}\n", "x.yaml:3: memory.metric:"),
    ("- a\n", "x.yaml:1: a spec is a mapping"),
])
@pytest.mark.pure
def test_bad_spec_is_one_line_naming_file_line_and_key(text, expected):
    with pytest.raises(SpecError) as exc:
        parse_spec(text, "x.yaml")
    message = str(exc.value)
    assert message.startswith(expected), message
    assert "\n" not in message


@pytest.mark.process
def test_cli_validate_bad_spec_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nbatch_sizes: [8]\nmemory:\n  rss_limit: '28 gigs'\n")
    res = cli("validate", str(bad))
    assert res.returncode == 2
    assert f"{bad}:4: memory.rss_limit: '28 gigs' is not a size" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    missing = cli("validate", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


@pytest.mark.process
def test_cli_validate_prints_every_probe(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(GOOD)
    res = cli("validate", str(spec))
    assert res.returncode == 0, res.stderr
    for bs in (8, 12, 16, 20):
        assert f"bs={bs}: python train.py" in res.stdout
    assert "WANDB_API_KEY=***" in res.stdout and "secret-value" not in res.stdout


@pytest.mark.process
def test_cli_schema_is_json_schema():
    res = cli("schema")
    schema = json.loads(res.stdout)
    assert "batch_sizes" in schema["properties"] and "memory" in schema["properties"]


# The specs the README and docs/ run: the glob must find at least these, so a moved folder fails here.
SHIPPED = {"local_s2.yaml", "slurm_s2.yaml", "compare_s2.yaml", "compare_seed.yaml", "trainer_default.yaml",
           "gpu/cuda_oom_h200.yaml"}


@pytest.mark.pure
def test_shipped_ladders_validate():
    paths = sorted((ROOT / "ladders").glob("**/*.yaml"))
    found = {path.relative_to(ROOT / "ladders").as_posix() for path in paths}
    assert SHIPPED <= found, f"shipped specs missing under {ROOT / 'ladders'}: {sorted(SHIPPED - found)}"
    for path in paths:
        assert load_spec(path).name, path


@pytest.mark.parametrize("text,total,expected", [
    ("28GiB", 0, 28 * 2**30), ("900MiB", 0, 900 * 2**20), ("1.5 GB", 0, 1_500_000_000),
    ("85%", 1000, 850), ("2048", 0, 2048),
])
@pytest.mark.pure
def test_sizes(text, total, expected):
    assert sizes.resolve(text, total) == expected


@pytest.mark.parametrize("text", ["28 gigs", "-1GiB", "0", "150%", "GiB"])
@pytest.mark.pure
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        sizes.resolve(text, 100)


@pytest.mark.pure
@pytest.mark.parametrize("path, ladder, matrix", [
    ("ladders/local_s2.yaml", "2517571d43a2a002", None),
    ("ladders/slurm_s2.yaml", "bdbb33b8b95a930f", None),
    ("ladders/compare_s2.yaml", "f0d556ea33609b12", "compare-5de67e0819a0a109"),
    ("ladders/compare_seed.yaml", "407c86ebec44a222", "compare-a97b89cb6db30059"),
])
def test_keys_added_later_leave_the_fingerprints_of_existing_specs_as_they_were(path, ladder, matrix):
    """The values the code before GPU judging, ranks, step-time regexes and render.bools computed: runs started
    then still resume."""
    from pathlib import Path

    from hlrp_ladder.compare.runner import fingerprint
    from hlrp_ladder.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parent.parent / path)
    assert spec.fingerprint() == ladder
    assert (fingerprint(spec) if spec.compare else None) == matrix
