"""Config: layering, --set, and errors that name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedlib.core.config import Config, ConfigError, load_config, redact
from embedlib.core.layout import PathError, RunLayout, check_path

from .conftest import ADULT_CONF, BASE_CONF


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_base_yaml_equals_embedded_defaults() -> None:
    cfg = load_config([BASE_CONF], ["source.path=x.csv"])
    default = Config()
    assert cfg.vocab == default.vocab
    assert cfg.columns == default.columns
    assert cfg.spark.master is None and dict(cfg.spark.conf) == {}
    assert cfg.output_dir == default.output_dir


def test_layering_later_files_and_set_win(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "name: a\nvocab: {min_count: 3}\nsource: {path: x.csv}\n"
              "spark: {conf: {spark.x: '1', spark.y: '2'}}\n")
    b = write(tmp_path, "b.yaml", "vocab: {max_size: 10}\nspark: {conf: {spark.y: '3'}}\n")
    cfg = load_config([a, b], ["vocab.min_count=7", "columns.id=[row_id]", "name=b"])
    assert cfg.name == "b"
    assert cfg.vocab.min_count == 7 and cfg.vocab.max_size == 10
    assert cfg.columns.id == ("row_id",)
    assert dict(cfg.spark.conf) == {"spark.x": "1", "spark.y": "3"}


def test_set_reads_yaml_and_keeps_dotted_mapping_keys() -> None:
    cfg = load_config([], ["source.path=x.csv", "spark.conf.spark.sql.shuffle.partitions=16",
                           "vocab.max_size=null", "vocab.trim=true"])
    assert dict(cfg.spark.conf) == {"spark.sql.shuffle.partitions": "16"}
    assert cfg.vocab.max_size is None and cfg.vocab.trim is True


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.yaml", "vocab: {min_cout: 3}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*unknown key 'vocab\.min_cout'"):
        load_config([bad])


def test_unknown_set_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"--set: unknown key 'vocab\.nope'"):
        load_config([], ["source.path=x.csv", "vocab.nope=1"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config([], ["vocab.min_count"])


def test_wrong_type_names_key_and_file(tmp_path: Path) -> None:
    bad = write(tmp_path, "types.yaml", "source: {path: x.csv}\nvocab: {min_count: many}\n")
    with pytest.raises(ConfigError, match=r"types\.yaml: key 'vocab\.min_count' must be int"):
        load_config([bad])
    with pytest.raises(ConfigError, match=r"--set: key 'columns\.categorical' must be a list"):
        load_config([], ["source.path=x.csv", "columns.categorical=abc"])
    with pytest.raises(ConfigError, match=r"key 'source\.format' must be one of"):
        load_config([], ["source.path=x.csv", "source.format=json"])
    with pytest.raises(ConfigError, match=r"key 'vocab\.trim' must be bool"):
        load_config([], ["source.path=x.csv", "vocab.trim=1"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("vocab.min_count=0", "vocab.min_count' must be at least 1"),
        ("vocab.max_size=-5", "vocab.max_size' must be at least 1"),
        ("columns.categorical=[a, a]", "declares column 'a' twice"),
        ("columns.numeric=[a]", "in both columns.categorical and columns.numeric"),
        ("source.table=c.s.t", "exactly one of 'path' or 'table'"),
        ("columns.log1p=[zz]", "'zz', which is not in columns.numeric"),
        ("name=../escape", "must be a plain name"),
    ],
)
def test_invalid_values(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config([], ["source.path=x.csv", "columns.categorical=[a]", override])


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config([tmp_path / "nope.yaml"])


@pytest.mark.parametrize(
    "path",
    ["data/../secret", "../x", "ftp://host/x", "file://evil.com/etc/passwd", "data/x#frag",
     "s3://b/k?versionId=1", "javascript:alert(1)", ""],
)
def test_bad_paths_refused(path: str) -> None:
    with pytest.raises(PathError):
        check_path(path)
    with pytest.raises((PathError, ConfigError)):
        load_config([], [f"source.path={path!r}" if path else "source.path=''"])


@pytest.mark.parametrize("path", ["data/x.csv", "/abs/x", "s3a://bucket/t", "file:///tmp/x",
                                  "dbfs:/mnt/x", "abfss://c@acct.dfs.core.windows.net/x"])
def test_good_paths_accepted(path: str) -> None:
    assert check_path(path) == path


def test_layout_derives_every_path(tmp_path: Path) -> None:
    layout = RunLayout(str(tmp_path), "run1")
    assert layout.root == f"{tmp_path}/run1"
    assert layout.vocab == f"{tmp_path}/run1/vocab"
    assert RunLayout("s3a://b/x", "r").vocab == "s3a://b/x/r/vocab"


def test_a_run_s_paths_are_resolved_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A configuration resolves its layout once and hands the same paths down: a relative output_dir
    does not move when the working directory changes during the run."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config([BASE_CONF], ["output_dir=runs", "name=r", "source.path=x.csv"])
    layout = cfg.layout
    assert cfg.layout is layout and layout.root == str(tmp_path / "runs" / "r")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert cfg.layout.scores == str(tmp_path / "runs" / "r" / "scores")
    assert load_config([BASE_CONF], ["output_dir=runs", "name=r", "source.path=x.csv"]).layout.root == str(tmp_path / "elsewhere" / "runs" / "r")


def test_adult_conf_loads() -> None:
    cfg = load_config([BASE_CONF, ADULT_CONF])
    assert cfg.name == "adult-demo"
    assert "native-country" in cfg.columns.categorical and "age" in cfg.columns.numeric


def test_redact_hides_secret_values() -> None:
    conf = {"fs.azure.account.key.acct": "SECRET", "spark.sql.shuffle.partitions": "4",
            "spark.hadoop.fs.s3a.secret.key": "S2"}
    out = redact(conf)
    assert "SECRET" not in str(out) and "S2" not in str(out)
    assert out["spark.sql.shuffle.partitions"] == "4"


def test_score_source_as_a_mapping_or_the_string_shorthand() -> None:
    from embedlib.core.config import SourceConfig

    base = [BASE_CONF, ADULT_CONF]
    short = load_config(base, ["score.source=data/x.csv"])
    assert short.score.source == "data/x.csv"
    assert short.source.with_target(short.score.source).format == short.source.format  # the shorthand: same format
    own = load_config(base, ["score.source.path=data/x.parquet", "score.source.format=parquet",
                             "score.source.options.mergeSchema=true", "score.source.options.recursiveFileLookup=true",
                             "features.source.table=main.db.rows"])
    assert own.score.source == SourceConfig(path="data/x.parquet", format="parquet",
                                            options={"mergeSchema": True, "recursiveFileLookup": True})
    assert own.source.with_target(own.score.source) is own.score.source
    assert own.features.source == SourceConfig(table="main.db.rows")
    with pytest.raises(ConfigError, match=r"unknown key 'score\.source\.pth'"):
        load_config(base, ["score.source.pth=data/x.parquet"])
    with pytest.raises(ConfigError, match=r"key 'score\.source' needs exactly one of 'path' or 'table'"):
        load_config(base, ["score.source.path=x.parquet", "score.source.table=main.db.rows"])
    with pytest.raises(ConfigError, match=r"score\.source\.format"):
        load_config(base, ["score.source.path=x.parquet", "score.source.format=excel"])
