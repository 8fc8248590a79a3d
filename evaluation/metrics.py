"""Per-sub-task aggregation of scored DSR results, the summary JSON and the printed table.

Pure functions over result records (dicts with at least `hit` and `subtask_type`); scoring of one
output lives in `dift.core.extraction`. Rules (spec evaluation.md "Sub-tasks", "Outputs"):
- the 13 sub-task keys map to column names, in table order; keys are compared lower-cased and
  stripped; a record of an unknown type counts in the overall accuracy only;
- "Avg" is the macro average over the sub-tasks with at least one evaluated question (0 if none);
- the table shows percent with 2 decimals, "N/A" for an empty sub-task.

Beside every accuracy the summary and the report give two baselines a model must beat to mean
anything: chance (1 / number of options, averaged over the questions) and the most common answer
letter (the accuracy of always answering the letter most frequent among the questions' ground truths).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

# Sub-task key -> column name, in the table's order.
SUBTASK_COLUMNS: dict[str, str] = {
    "abs_dis": "Abs Dis",
    "abs_dir": "Abs Dir",
    "abs_ori": "Abs Ori",
    "abs_spd": "Abs Spd",
    "abs_spd_comp": "Abs Spd Comp",
    "abs_dir_pred": "Abs Dir Pred",
    "rel_dis": "Rel Dis",
    "rel_dir": "Rel Dir",
    "rel_ori": "Rel Ori",
    "rel_spd": "Rel Spd",
    "rel_spd_comp": "Rel Spd Comp",
    "rel_dir_pred": "Rel Dir Pred",
    "non_temp": "Non-Temp Based",
}
AVG_COLUMN = "Avg"
DEFAULT_NUM_OPTIONS = 4  # results files without `num_options` (the original's): DSR questions have four
COLUMNS_ORDER: tuple[str, ...] = (*SUBTASK_COLUMNS.values(), AVG_COLUMN)


def subtask_column(subtask_type) -> str | None:
    """The table column of a sub-task key (lower-cased, stripped), or None for an unknown type."""
    if subtask_type is None:
        return None
    return SUBTASK_COLUMNS.get(str(subtask_type).strip().lower())


def aggregate(records: Iterable[Mapping], total: int | None = None, skipped: int = 0) -> dict:
    """The summary of evaluated records: overall and per-sub-task accuracy and the macro average.

    `total` is the number of benchmark rows loaded (default: evaluated + skipped); `skipped` the
    rows that were not evaluated (no video, frames failed). Keys and their order follow the
    original's summary JSON.
    """
    correct = {name: 0 for name in SUBTASK_COLUMNS.values()}
    counts = {name: 0 for name in SUBTASK_COLUMNS.values()}
    eval_count = hits = 0
    for record in records:
        hit = int(record["hit"])
        eval_count += 1
        hits += hit
        column = subtask_column(record.get("subtask_type"))
        if column is not None:
            counts[column] += 1
            correct[column] += hit
    per_task = {name: (correct[name] / counts[name] if counts[name] else None) for name in counts}
    present = [acc for acc in per_task.values() if acc is not None]
    summary = {
        "total": eval_count + skipped if total is None else int(total),
        "eval_count": eval_count,
        "skipped": int(skipped),
        "correct": hits,
        "accuracy": hits / eval_count if eval_count else 0.0,
        "subtask_accuracy": per_task,
        "subtask_correct": correct,
        "subtask_total": counts,
        "subtask_macro_avg": sum(present) / len(present) if present else 0.0,
        "subtask_columns_order": list(COLUMNS_ORDER),
    }
    summary["baselines"] = baselines(records)
    return summary


def _baseline(records: list[Mapping]) -> tuple[float | None, float | None, str]:
    """(chance, most-common-letter accuracy, that letter) of a group of records."""
    if not records:
        return None, None, ""
    chance = sum(1 / max(1, int(r.get("num_options") or DEFAULT_NUM_OPTIONS)) for r in records) / len(records)
    letters = Counter(str(r.get("gt", "")) for r in records if r.get("gt"))
    if not letters:
        return chance, 0.0, ""
    letter, n = sorted(letters.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    return chance, n / len(records), letter


def baselines(records: Iterable[Mapping]) -> dict:
    """Chance and most-common-letter accuracy, overall and per sub-task column (None: no questions)."""
    records = list(records)
    by_column: dict[str, list] = {name: [] for name in SUBTASK_COLUMNS.values()}
    for record in records:
        column = subtask_column(record.get("subtask_type"))
        if column is not None:
            by_column[column].append(record)
    chance, majority, letter = _baseline(records)
    per_task = {name: _baseline(group) for name, group in by_column.items()}
    return {"chance": chance, "most_common_letter": letter, "most_common_letter_accuracy": majority,
            "subtask_chance": {name: v[0] for name, v in per_task.items()},
            "subtask_most_common_letter_accuracy": {name: v[1] for name, v in per_task.items()}}


def _percent(value: float | None) -> str:
    return "N/A" if value is None else f"{value * 100:.2f}"


def format_table(summary: Mapping) -> str:
    """Two tab-separated lines (column names, then percentages), ready to paste into a sheet."""
    values = dict(summary["subtask_accuracy"])
    values[AVG_COLUMN] = summary["subtask_macro_avg"]
    columns = summary.get("subtask_columns_order", COLUMNS_ORDER)
    return "\t".join(columns) + "\n" + "\t".join(_percent(values.get(c)) for c in columns)


def _macro(values: Mapping) -> float | None:
    present = [v for v in values.values() if v is not None]
    return sum(present) / len(present) if present else None


def format_baselines(summary: Mapping) -> str:
    """The two baseline rows in the table's columns, each labelled."""
    base = summary["baselines"]
    columns = summary.get("subtask_columns_order", COLUMNS_ORDER)
    rows = []
    for label, values in (("chance", base["subtask_chance"]),
                          ("most common letter", base["subtask_most_common_letter_accuracy"])):
        values = {**values, AVG_COLUMN: _macro(values)}
        rows.append(f"{label}:\t" + "\t".join(_percent(values.get(c)) for c in columns))
    return "\n".join(rows)


def format_report(summary: Mapping) -> str:
    """The overall accuracy line with its baselines, the counts, the sub-task table, then the
    baselines in the same columns."""
    text = (f"Overall accuracy: {_percent(summary['accuracy'])}% "
            f"({summary['correct']}/{summary['eval_count']}; {summary['skipped']} skipped of {summary['total']})")
    base = summary.get("baselines")
    if base:
        text += (f"  [chance {_percent(base['chance'])}%, always '{base['most_common_letter'] or '-'}' "
                 f"{_percent(base['most_common_letter_accuracy'])}%]")
    text += "\n" + format_table(summary)
    if base:
        text += "\nbaselines (same columns):\n" + format_baselines(summary)
    return text
