"""Comparison tables in the paper's layout: methods × dataset variants, mean ± std over seeds,
best in bold, significance marks from Welch's t-test. Markdown, CSV and LaTeX."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metasam.stats import Summary, welch_greater

ALPHA = 0.05
METHOD_ORDER = ("sgd", "sam", "asam", "ssam", "trace_sam", "frob_sam", "det_sam", "best")
METHOD_NAMES = {"sgd": "SGD", "sam": "SAM", "asam": "ASAM", "ssam": "SSAM-F",
                "trace_sam": "Trace-SAM", "frob_sam": "Frob-SAM", "det_sam": "Det-SAM",
                "rwp": "RWP", "tilted_sam": "Tilted SAM", "best": "metasam (best found)"}
LEGEND = ("mean ± std over seeds (accuracy in %); best per column in bold; "
          "* significantly above SGD, † significantly above the best baseline "
          f"(one-sided Welch's t-test, p < {ALPHA})")


@dataclass
class Cell:
    values: list[float]
    summary: Summary
    above_sgd: bool = False
    above_best_baseline: bool = False
    best: bool = False
    p_sgd: float = math.nan
    p_baseline: float = math.nan


@dataclass
class Table:
    columns: list[str]
    rows: list[str]
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    scale: float = 100.0
    best_names: list[str] = field(default_factory=list)  # what "best" is, per study

    def row_name(self, row: str) -> str:
        """A method's name; the search's row names what it found (``metasam (best found =
        sam ρ=0.071)``), so a winner that is a preset reads as that preset."""
        if row == "best" and self.best_names:
            return f"metasam (best found = {', '.join(dict.fromkeys(self.best_names))})"
        return METHOD_NAMES.get(row, row)

    def value_text(self, row: str, column: str) -> str:
        cell = self.cells.get((row, column))
        if cell is None or cell.summary.n == 0:
            return "—"
        s = cell.summary
        std = 0.0 if math.isnan(s.std) else s.std * self.scale
        return f"{s.mean * self.scale:.2f} ± {std:.2f}"

    def marks(self, row: str, column: str) -> tuple[bool, bool]:
        cell = self.cells.get((row, column))
        return (cell is not None and cell.above_sgd, cell is not None and cell.above_best_baseline)


def build_table(results: dict[str, dict[str, list[float]]]) -> Table:
    """``results[column][method]`` holds one value per seed (higher is better)."""
    columns = list(results)
    methods = {m for column in results.values() for m in column}
    rows = [m for m in METHOD_ORDER if m in methods] + sorted(methods - set(METHOD_ORDER))
    table = Table(columns, rows)
    for column, by_method in results.items():
        for method, values in by_method.items():
            table.cells[(method, column)] = Cell(list(values), Summary.of(values))
        baselines = [m for m in by_method if m not in ("sgd", "best") and by_method[m]]
        best_baseline = max(baselines, key=lambda m: Summary.of(by_method[m]).mean,
                            default=None)
        for method, values in by_method.items():
            cell = table.cells[(method, column)]
            if method != "sgd" and "sgd" in by_method:
                cell.p_sgd = welch_greater(values, by_method["sgd"])
                cell.above_sgd = cell.p_sgd < ALPHA
            if best_baseline is not None and method not in (best_baseline, "sgd") and \
                    method not in baselines:
                cell.p_baseline = welch_greater(values, by_method[best_baseline])
                cell.above_best_baseline = cell.p_baseline < ALPHA
        in_column = [c for (_, col), c in table.cells.items() if col == column and c.summary.n]
        top = max((c.summary.mean for c in in_column), default=None)
        for c in in_column:
            c.best = c.summary.mean == top
    return table


def to_markdown(table: Table) -> str:
    header = "| method | " + " | ".join(table.columns) + " |"
    lines = [header, "|" + "---|" * (len(table.columns) + 1)]
    for row in table.rows:
        cells = []
        for column in table.columns:
            text = table.value_text(row, column)
            cell = table.cells.get((row, column))
            if cell is not None and cell.best:
                text = f"**{text}**"
            above_sgd, above_baseline = table.marks(row, column)
            if above_sgd or above_baseline:
                text += "<sup>" + ("\\*" if above_sgd else "") + ("†" if above_baseline
                                                                   else "") + "</sup>"
            cells.append(text)
        lines.append(f"| {table.row_name(row)} | {' | '.join(cells)} |")
    lines.append("")
    lines.append(LEGEND + ".")
    return "\n".join(lines) + "\n"


def to_latex(table: Table) -> str:
    spec = "l" + "c" * len(table.columns)
    lines = [r"\begin{tabular}{" + spec + "}", r"\toprule",
             "Method & " + " & ".join(_tex(c) for c in table.columns) + r" \\", r"\midrule"]
    for row in table.rows:
        cells = []
        for column in table.columns:
            text = table.value_text(row, column).replace("±", r"$\pm$")
            cell = table.cells.get((row, column))
            if cell is not None and cell.best:
                text = r"\textbf{" + text + "}"
            above_sgd, above_baseline = table.marks(row, column)
            text += (r"$^*$" if above_sgd else "") + (r"$^\dagger$" if above_baseline else "")
            cells.append(text)
        lines.append(_tex(table.row_name(row)) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%")


def to_csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["method", "column", "n", "mean", "std", "values", "p_vs_sgd",
                     "p_vs_best_baseline", "best"])
    for row in table.rows:
        for column in table.columns:
            cell = table.cells.get((row, column))
            if cell is None:
                continue
            writer.writerow([row, column, cell.summary.n, cell.summary.mean, cell.summary.std,
                             " ".join(f"{v:.6g}" for v in cell.values), cell.p_sgd,
                             cell.p_baseline, cell.best])
    return out.getvalue()


def write_tables(table: Table, folder: Path, stem: str = "report") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, text in ((".md", to_markdown(table)), (".csv", to_csv(table)),
                         (".tex", to_latex(table))):
        path = folder / f"{stem}{suffix}"
        path.write_text(text)
        paths.append(path)
    return paths


DATASET_NAMES = {"digits": "digits", "mnist": "MNIST", "fashion_mnist": "Fashion-MNIST",
                 "mnist1d": "MNIST-1D", "cifar10": "CIFAR-10", "cifar10-jpeg": "CIFAR-10 (JPEG)",
                 "cifar100": "CIFAR-100", "svhn": "SVHN"}


def column_label(train: Any, names: Sequence[str]) -> str:
    """A unique column name for a study's dataset *variant*: the paper's ``-S`` (first 10%)
    and ``-C`` (20% label noise) where they apply, the fractions otherwise
    (``Fashion-MNIST-S-C``, ``digits-C``, ``MNIST (25% subset, 40% label noise)``)."""
    from metasam.data import parse_name

    base, implied = parse_name(train.dataset)
    subset = implied.get("subset") if train.subset is None else train.subset
    noise = train.label_noise or implied.get("label_noise", 0.0)
    label = DATASET_NAMES.get(base, base)
    suffixes, notes = "", []
    if subset is not None and subset < 1.0:
        if math.isclose(subset, 0.1) and train.subset_mode == "first":
            suffixes += "-S"
        else:
            notes.append(f"{subset:.0%} {'stratified ' if train.subset_mode != 'first' else ''}"
                         "subset")
    if noise > 0:
        if math.isclose(noise, 0.2):
            suffixes += "-C"
        else:
            notes.append(f"{noise:.0%} label noise")
    label += suffixes + (f" ({', '.join(notes)})" if notes else "")
    while label in names:
        label += "'"
    return label


def method_name(method: str, best_name: str | None = None) -> str:
    """The name a reader sees: ``Frob-SAM``, ``metasam (best found = ssam ρ=0.305)``."""
    if method == "best" and best_name:
        return f"metasam (best found = {best_name})"
    return METHOD_NAMES.get(method, method)


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial of an Optuna study, as ``metasam trials`` prints them (and its
    ``--json`` writes them): number, state, whether it counts, its name and role, value, epochs,
    budget, status and reason, passes per step, the member and its repair, its spec (with a
    one-line summary) and training, and where it ran."""
    from metasam.tuning.naming import describe_spec
    from metasam.tuning.record import TrialRecord

    rows = []
    for t in study.get_trials(deepcopy=False):
        rec = TrialRecord.of(t)
        spec, placement = rec.spec, rec.placement
        rows.append({
            "number": t.number, "state": t.state.name, "counted": rec.counts,
            "label": rec.name, "role": rec.label.role.value, "value": t.value,
            "epochs": rec.epochs, "full_budget": rec.full_budget,
            "status": rec.status.value if rec.status else None, "reason": rec.reason,
            "passes": rec.passes_per_step, "interrupted": rec.interrupted,
            "member": rec.member, "repaired": rec.repaired,
            "spec": spec, "summary": describe_spec(spec) if spec else "", "train": rec.train,
            "placement": placement.to_dict() if placement else None,
            "where": placement.where if placement else ""})
    return rows
