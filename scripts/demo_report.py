"""The demo's stage log and its final table: stage, seconds, key figure, output path, and the total.

    python scripts/demo_report.py record --log LOG --kind KIND --start T0 --end T1 --output PATH [--status S]
    python scripts/demo_report.py table --log LOG

`record` appends one JSON line per stage to LOG (scripts/demo.sh: $DEMO_DIR/demo_stages.jsonl);
`table` reads LOG and measures each stage's key figure from the files that stage wrote, at its
output path, so the table shows what ran, not what was expected:

    checkpoint   parameters of the tiny checkpoint (model.safetensors header) and its layers
    data_engine  DIFT and RL records written, from how many clips
    dift         first -> last logged loss (and CE loss, latent cosine similarity) from trainer_state.json
    fourdrl      the last logged step's reward, KL, replay max |log-prob diff|, latent blocks per completion
                 and the fraction of completions cut at the length limit
    inference    each answer's letter, whether the text has an <answer> tag (else the letter is the first
                 capital letter anywhere), and its length (answer_*.txt, as dift.inference printed them)
    evaluation   accuracy beside the chance and always-the-most-common-letter baselines, how many
                 outputs had a letter and how many reached <answer>...</answer>, the rescored accuracy

A missing or unreadable output gives "n/a (why)" in its row; a missing or bad LOG is a one-line
error (exit 1).
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
from collections.abc import Callable
from pathlib import Path

STAGE_TITLES = {
    "checkpoint": "tiny checkpoint",
    "data_engine": "data engine",
    "dift": "DIFT",
    "fourdrl": "4DRL",
    "inference": "inference",
    "evaluation": "evaluation",
}


class ReportError(Exception):
    """A stage output that cannot give its key figure; the message says which file and why."""


class LogError(Exception):
    """The stage log itself cannot be read."""


def _read_json(path: Path):
    if not path.is_file():
        raise ReportError(f"missing {path.name}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ReportError(f"bad JSON in {path.name}") from None


def _count_lines(path: Path) -> int:
    if not path.is_file():
        raise ReportError(f"missing {path.name}")
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def _g(value) -> str:
    """A number in 4 significant digits; "nan" for a missing one."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "nan"
    return f"{value:.4g}"


def _percent(value) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "n/a"
    return f"{100 * value:.1f}%"


# ---- key figures, one per stage kind ------------------------------------------------------------

def checkpoint_figure(path: Path) -> str:
    """Parameter count from the safetensors header (shapes only, no weights read) and the layers."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ReportError("missing *.safetensors")
    params = 0
    for file in files:
        with file.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ReportError(f"bad safetensors header in {file.name}")
            try:
                header = json.loads(f.read(struct.unpack("<Q", head)[0]))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise ReportError(f"bad safetensors header in {file.name}") from None
        params += sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    config = _read_json(path / "config.json")
    text = config.get("text_config", config)
    layers = text.get("num_hidden_layers", "?")
    return f"{params / 1e6:.2f}M params (random), {layers} layers, hidden {text.get('hidden_size', '?')}"


def data_engine_figure(path: Path) -> str:
    dift, rl = _count_lines(path / "dift_data.jsonl"), _count_lines(path / "rl_data.jsonl")
    if (path / "clips.jsonl").is_file():
        clips = _count_lines(path / "clips.jsonl")
    elif (path / "clips").is_dir():
        clips = sum(1 for p in (path / "clips").iterdir() if p.is_dir())
    else:
        raise ReportError("missing clips.jsonl")
    return f"{dift} DIFT + {rl} RL records from {clips} clips"


def _log_history(path: Path) -> list[dict]:
    state = _read_json(path / "trainer_state.json")
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise ReportError("trainer_state.json has no log_history")
    return [entry for entry in history if isinstance(entry, dict)]


DIFT_SERIES = (("loss", "loss"), ("ce", "ce_loss"), ("latent cos", "cos_similarity"))


def dift_figure(path: Path) -> str:
    """First -> last logged value of the training loss, the CE loss and the latent cosine similarity
    (each over the steps where it was logged), and the steps they span."""
    history = _log_history(path)
    parts, steps = [], []
    for label, key in DIFT_SERIES:
        series = [(e.get("step"), e[key]) for e in history if isinstance(e.get(key), (int, float))]
        if series:
            parts.append(f"{label} {_g(series[0][1])} -> {_g(series[-1][1])}")
            steps += [s for s, _ in series if isinstance(s, int)]
    if not parts:
        raise ReportError("no loss logged in trainer_state.json")
    span = f" (steps {min(steps)}-{max(steps)})" if steps else ""
    return ", ".join(parts) + span


FOURDRL_COLUMNS = (("reward", "reward"), ("kl", "kl"), ("replay max diff", "replay/max_abs_logprob_diff"),
                   ("latent blocks", "completions/latent_blocks_mean"))


def fourdrl_figure(path: Path) -> str:
    steps = [e for e in _log_history(path) if "reward" in e]
    if not steps:
        raise ReportError("no reward logged in trainer_state.json")
    last = steps[-1]
    return (f"step {last.get('step', '?')}: " + ", ".join(f"{label} {_g(last.get(key))}" for label, key in FOURDRL_COLUMNS)
            + f", clipped {_percent(last.get('completions/clipped_ratio'))}")


def _answer_file(path: Path) -> tuple[str, str]:
    """(answer letter or "(none)", the model text) of one dift.inference output."""
    lines = path.read_text(encoding="utf-8", errors="replace").rstrip("\n").split("\n")
    if not lines or not lines[-1].startswith("Answer:"):
        raise ReportError(f"{path.name} has no 'Answer:' line")
    return lines[-1][len("Answer:"):].strip(), "\n".join(lines[:-1])


def inference_figure(path: Path) -> str:
    files = sorted(path.glob("answer_*.txt"), key=lambda p: (p.stat().st_mtime, p.name))  # in the order written
    if not files:
        raise ReportError("missing answer_*.txt")
    from dift.core.extraction import answer_tag_text

    parts = []
    for file in files:
        letter, text = _answer_file(file)
        tag = "in <answer>" if answer_tag_text(text) is not None else "no <answer>"
        parts.append(f"{file.stem.removeprefix('answer_')}: {letter} ({tag}, {len(text)} chars)")
    return ", ".join(parts)


def _summary_accuracy(summary) -> str:
    if not isinstance(summary, dict) or "accuracy" not in summary:
        raise ReportError("summary has no accuracy")
    base = summary.get("baselines") or {}
    return (f"acc {_percent(summary['accuracy'])} ({summary.get('correct', '?')}/{summary.get('eval_count', '?')})"
            f" [chance {_percent(base.get('chance'))}, always '{base.get('most_common_letter') or '-'}'"
            f" {_percent(base.get('most_common_letter_accuracy'))}]")


def evaluation_figure(path: Path) -> str:
    """`path` is the results JSONL; its summaries lie next to it (evaluation.results' names)."""
    from dift.core.extraction import answer_tag_text

    figure = _summary_accuracy(_read_json(path.with_name(f"{path.stem}_summary.json")))
    if not path.is_file():
        raise ReportError(f"missing {path.name}")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise ReportError(f"{path.name}:{number}: bad JSON") from None
    lettered = sum(1 for r in records if isinstance(r, dict) and r.get("pred"))
    tagged = sum(1 for r in records if isinstance(r, dict) and answer_tag_text(str(r.get("raw") or "")) is not None)
    figure += f"; letter in {lettered}/{len(records)}, <answer> in {tagged}/{len(records)}"
    rescored = path.with_name(f"{path.stem}_rescored_summary.json")
    if rescored.is_file():
        try:
            figure += f"; rescored {_percent(_read_json(rescored)['accuracy'])}"
        except (ReportError, KeyError, TypeError):
            figure += "; rescored n/a"
    return figure


FIGURES: dict[str, Callable[[Path], str]] = {
    "checkpoint": checkpoint_figure,
    "data_engine": data_engine_figure,
    "dift": dift_figure,
    "fourdrl": fourdrl_figure,
    "inference": inference_figure,
    "evaluation": evaluation_figure,
}


def key_figure(kind: str, output: str | Path) -> str:
    """The stage's key figure, or "n/a (why)" when its outputs cannot give it."""
    measure = FIGURES.get(kind)
    if measure is None:
        return f"n/a (unknown stage kind {kind!r})"
    try:
        return measure(Path(output))
    except ReportError as err:
        return f"n/a ({err})"
    except (OSError, KeyError, TypeError, ValueError, AttributeError) as err:
        return f"n/a ({type(err).__name__}: {err})"


# ---- the log and the table ----------------------------------------------------------------------

def _seconds(text: str) -> float:
    """A time stamp as bash's $EPOCHREALTIME writes it (the decimal mark follows the locale)."""
    return float(str(text).replace(",", "."))


def append_record(log: Path, kind: str, start: str, end: str, output: str, status: str = "ok") -> dict:
    record = {"kind": kind, "start": _seconds(start), "end": _seconds(end), "output": str(output), "status": status}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return record


def read_log(log: Path) -> list[dict]:
    if not log.is_file():
        raise LogError(f"{log}: no stage log (scripts/demo.sh writes it)")
    records = []
    for number, line in enumerate(log.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record["start"], record["end"] = float(record["start"]), float(record["end"])
            record["kind"], record["output"] = str(record["kind"]), str(record["output"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise LogError(f"{log}:{number}: not a stage record (kind, start, end, output)") from None
        records.append(record)
    if not records:
        raise LogError(f"{log}: no stage recorded")
    return records


def _shown(path: str) -> str:
    """A path under the working folder relative to it (demo.sh runs from the repository root)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return path


def table_rows(records: list[dict]) -> list[tuple[str, str, str, str]]:
    rows = []
    for number, record in enumerate(records, 1):
        status = record.get("status", "ok")
        figure = key_figure(record["kind"], record["output"])
        if status != "ok":
            figure = f"{status.upper()}; {figure}"
        rows.append((f"{number}. {STAGE_TITLES.get(record['kind'], record['kind'])}",
                     f"{record['end'] - record['start']:.1f}", figure, _shown(record["output"])))
    total = max(r["end"] for r in records) - min(r["start"] for r in records)
    rows.append(("total", f"{total:.1f}", "", ""))
    return rows


def format_table(rows: list[tuple[str, ...]]) -> str:
    header = ("stage", "seconds", "key figure", "output")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    def line(cells):
        return "| " + " | ".join(c.ljust(w) if i != 1 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/demo_report.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="append one stage's record to the log")
    rec.add_argument("--log", type=Path, required=True)
    rec.add_argument("--kind", required=True, choices=sorted(FIGURES))
    rec.add_argument("--start", required=True, help="start time in seconds (bash: $EPOCHREALTIME)")
    rec.add_argument("--end", required=True, help="end time in seconds")
    rec.add_argument("--output", required=True, help="the stage's output path")
    rec.add_argument("--status", default="ok", help="ok, or why the stage failed")
    tab = sub.add_parser("table", help="print the table of the logged stages")
    tab.add_argument("--log", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "record":
            append_record(args.log, args.kind, args.start, args.end, args.output, args.status)
        else:
            print(format_table(table_rows(read_log(args.log))))
    except ValueError as err:  # a time stamp that is not a number
        print(f"demo_report: {err}", file=sys.stderr)
        return 1
    except (LogError, OSError) as err:
        print(f"demo_report: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
