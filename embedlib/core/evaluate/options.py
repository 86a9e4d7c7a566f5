"""What ``embedlib evaluate`` was asked, checked before any work."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LABEL_FORMATS", "EvaluateError", "EvaluateOptions"]

LABEL_FORMATS = ("delta", "parquet", "csv", "table")


class EvaluateError(ValueError):
    """An evaluation cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class EvaluateOptions:
    """What ``embedlib evaluate`` was asked: ``labels`` (with ``label_column``) or ``plant``."""

    labels: str | None = None
    label_column: str | None = None
    positive: str | None = None  # the label value that marks an anomaly, for non-0/1 labels
    labels_format: str | None = None  # delta, parquet, csv or table; None: from the path
    plant: float | None = None
    seed: int = 0
    top_k: int | None = None  # None: the number of positive rows
    baselines: bool = False
    max_rows: int = 200_000

    def check(self) -> None:
        """Refuse contradictory or incomplete options before any work."""
        if (self.labels is None) == (self.plant is None):
            raise EvaluateError("give either --labels PATH (with --label-column NAME) or --plant FRACTION")
        if self.plant is not None:
            if not 0 < self.plant < 0.5:
                raise EvaluateError(f"--plant is the fraction of rows to alter, in (0, 0.5); got {self.plant}")
            extra = [f for f, v in (("--label-column", self.label_column), ("--positive", self.positive),
                                    ("--labels-format", self.labels_format)) if v is not None]
            if extra:
                raise EvaluateError(f"{', '.join(extra)} only apply with --labels, not with --plant")
        elif not self.label_column:
            raise EvaluateError(f"--labels {self.labels} needs --label-column NAME: the column holding the labels")
        if self.labels_format is not None and self.labels_format not in LABEL_FORMATS:
            raise EvaluateError(f"--labels-format must be one of {', '.join(LABEL_FORMATS)}; got {self.labels_format}")
        if self.top_k is not None and self.top_k < 1:
            raise EvaluateError(f"--top-k must be at least 1; got {self.top_k}")
        if self.max_rows < 100:
            raise EvaluateError(f"--max-rows must be at least 100; got {self.max_rows}")
