"""Per-sub-task aggregation, the macro average with empty sub-tasks, the summary keys and the table."""

from __future__ import annotations

import pytest

from evaluation.metrics import (
    COLUMNS_ORDER,
    SUBTASK_COLUMNS,
    aggregate,
    format_report,
    format_table,
    subtask_column,
)

SPEC_COLUMNS = ["Abs Dis", "Abs Dir", "Abs Ori", "Abs Spd", "Abs Spd Comp", "Abs Dir Pred", "Rel Dis", "Rel Dir",
                "Rel Ori", "Rel Spd", "Rel Spd Comp", "Rel Dir Pred", "Non-Temp Based"]
SPEC_KEYS = ["abs_dis", "abs_dir", "abs_ori", "abs_spd", "abs_spd_comp", "abs_dir_pred", "rel_dis", "rel_dir",
             "rel_ori", "rel_spd", "rel_spd_comp", "rel_dir_pred", "non_temp"]


def rec(subtask, hit):
    return {"subtask_type": subtask, "hit": hit}


def test_columns_in_table_order():
    assert list(SUBTASK_COLUMNS) == SPEC_KEYS
    assert list(SUBTASK_COLUMNS.values()) == SPEC_COLUMNS
    assert list(COLUMNS_ORDER) == SPEC_COLUMNS + ["Avg"]


@pytest.mark.parametrize("key,column", [("abs_dis", "Abs Dis"), (" ABS_DIS ", "Abs Dis"), ("Non_Temp", "Non-Temp Based"),
                                        ("abs-dis", None), ("", None), (None, None), ("other", None)])
def test_subtask_column(key, column):
    assert subtask_column(key) == column


def test_aggregate_macro_over_nonempty_subtasks():
    records = ([rec("abs_dis", 1)] * 3 + [rec("abs_dis", 0)]          # 3/4
               + [rec(" REL_DIR", 0)] * 2                             # 0/2 (key lower-cased, stripped)
               + [rec("non_temp", 1)]                                 # 1/1
               + [rec("mystery", 1)] * 3 + [rec(None, 0)])            # unknown: overall only
    s = aggregate(records, total=15, skipped=4)
    assert (s["total"], s["eval_count"], s["skipped"], s["correct"]) == (15, 11, 4, 7)
    assert s["accuracy"] == pytest.approx(7 / 11)
    assert s["subtask_accuracy"]["Abs Dis"] == 0.75
    assert s["subtask_accuracy"]["Rel Dir"] == 0.0  # evaluated, all wrong: 0, not N/A
    assert s["subtask_accuracy"]["Non-Temp Based"] == 1.0
    assert s["subtask_accuracy"]["Abs Dir"] is None
    assert s["subtask_total"]["Abs Dis"] == 4 and s["subtask_correct"]["Abs Dis"] == 3
    assert s["subtask_total"]["Abs Dir"] == 0
    assert sum(s["subtask_total"].values()) == 7  # unknown types are in no sub-task
    assert s["subtask_macro_avg"] == pytest.approx((0.75 + 0.0 + 1.0) / 3)
    assert s["subtask_columns_order"] == SPEC_COLUMNS + ["Avg"]
    assert list(s) == ["total", "eval_count", "skipped", "correct", "accuracy", "subtask_accuracy", "subtask_correct",
                       "subtask_total", "subtask_macro_avg", "subtask_columns_order", "baselines"]  # the original's, then ours


def test_aggregate_nothing_evaluated():
    s = aggregate([], total=5, skipped=5)
    assert s["accuracy"] == 0.0 and s["subtask_macro_avg"] == 0.0
    assert all(v is None for v in s["subtask_accuracy"].values())
    assert aggregate([rec("x", 1)])["total"] == 1  # total defaults to evaluated + skipped


def test_table_format():
    s = aggregate([rec("abs_dis", 1), rec("abs_dis", 0), rec("abs_dis", 0), rec("non_temp", 1)], total=4)
    header, values = format_table(s).split("\n")
    assert header.split("\t") == SPEC_COLUMNS + ["Avg"]
    cells = values.split("\t")
    assert cells[0] == "33.33" and cells[12] == "100.00"
    assert cells[1:12] == ["N/A"] * 11
    assert cells[13] == "66.67"  # (1/3 + 1) / 2
    report = format_report(s)
    assert report.splitlines()[0].startswith("Overall accuracy: 50.00% (2/4; 0 skipped of 4)  [chance 25.00%")
    assert format_table(s) in report  # the original's two table lines, unchanged, then the baselines


def test_baselines_chance_and_most_common_letter():
    from evaluation.metrics import baselines

    records = [{"hit": 1, "subtask_type": "abs_dir", "gt": "A", "num_options": 4},
               {"hit": 0, "subtask_type": "abs_dir", "gt": "A", "num_options": 2},
               {"hit": 0, "subtask_type": "rel_spd", "gt": "C"},  # no num_options: four (the original's files)
               {"hit": 1, "subtask_type": "unknown", "gt": "B", "num_options": 4}]
    base = baselines(records)
    assert base["chance"] == pytest.approx((0.25 + 0.5 + 0.25 + 0.25) / 4)
    assert (base["most_common_letter"], base["most_common_letter_accuracy"]) == ("A", 0.5)
    assert base["subtask_chance"]["Abs Dir"] == pytest.approx(0.375)
    assert base["subtask_most_common_letter_accuracy"]["Abs Dir"] == 1.0
    assert base["subtask_most_common_letter_accuracy"]["Rel Spd"] == 1.0
    assert base["subtask_chance"]["Abs Dis"] is None
    report = format_report(aggregate(records))
    assert "[chance 31.25%, always 'A' 50.00%]" in report
    assert report.splitlines()[-2].startswith("chance:\t") and report.splitlines()[-1].startswith("most common letter:\t")


def test_synthetic_benchmark_balances_letters_within_sub_tasks():
    from collections import Counter

    from scripts.make_demo_benchmark import build_rows

    rows, _ = build_rows(per_type=4, seed=0)
    by_type: dict = {}
    for row in rows:
        by_type.setdefault(row["type"], Counter())[row["answer"]] += 1
    assert all(sorted(c.values()) == [1, 1, 1, 1] for c in by_type.values())  # 4 questions: each letter once
    rows, _ = build_rows(per_type=2, seed=0)
    overall = Counter(r["answer"] for r in rows)
    assert max(overall.values()) - min(overall.values()) <= 1
    for row in rows:  # the letter still names the true option
        assert row["options"][ord(row["answer"]) - ord("A")].startswith(f"{row['answer']}. ")
