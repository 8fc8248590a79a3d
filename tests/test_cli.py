"""Every command line follows dift.core.cli: --help answers before torch is imported, the usage line
shows the command to type, help texts have no internal references or empty defaults, a YAML config
and the same flags parse alike, and the Hugging Face flag names mean what the original's do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dift.core.cli import UsageError, parse_cli_args
from preprocess.arguments import STEPS as PREPROCESS_STEPS

ROOT = Path(__file__).resolve().parent.parent
# (module and its arguments before --help, the usage line's command); each CLI is `python -m <module>`.
COMMANDS = [
    ("evaluation.dsr_eval", "python -m evaluation.dsr_eval"),
    ("dift.inference", "python -m dift.inference"),
    ("dift.train", "python -m dift.train"),
    ("evaluation.rescore", "python -m evaluation.rescore"),
    ("fourdrl.train", "python -m fourdrl.train"),  # its help is fourdrl/help.txt, kept equal by a test
    ("preprocess", "python -m preprocess"),
    *[(f"preprocess {step}", f"python -m preprocess {step}") for step in PREPROCESS_STEPS],  # each step's flags
]

HELP_PROBE = """
import runpy, sys
module, *args = sys.argv[1].split()
sys.argv = [module, *args, "--help"]
try:
    runpy.run_module(module, run_name="__main__")
except SystemExit as e:
    code = e.code
print("EXIT", code, "TORCH", "torch" in sys.modules)
"""


@pytest.mark.parametrize("module, command", COMMANDS, ids=[m for m, _ in COMMANDS])
def test_help_is_fast_and_speaks_to_the_user(module, command):
    proc = subprocess.run([sys.executable, "-c", HELP_PROBE, module], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    out = proc.stdout
    assert out.rstrip().endswith("EXIT 0 TORCH False"), out[-500:] + proc.stderr[-2000:]
    assert out.startswith(f"usage: {command} ")
    for noise in ("spec section", "(default: )", "(default: None)", "Required."):
        assert noise not in out, noise


def test_yaml_config_equals_flags_and_flags_override_it(tmp_path, tiny_latent):
    from evaluation.dsr_eval import make_parser

    bench = tmp_path / "b.jsonl"
    bench.write_text("")
    flags = ["--model_path", str(tiny_latent), "--benchmark_path", str(bench), "--video_root", str(tmp_path),
             "--batch_size", "3", "--greedy", "--top_k", "5"]
    config = tmp_path / "eval.yaml"
    config.write_text(f"model_name_or_path: {tiny_latent}\nbenchmark_path: {bench}\nvideo_root: {tmp_path}\n"
                      "per_device_eval_batch_size: 3\ngreedy: true\ntop_k: 5\n")
    (from_flags,) = parse_cli_args(make_parser(), flags)
    (from_yaml,) = parse_cli_args(make_parser(), ["--config", str(config)])
    assert from_yaml == from_flags
    (overridden,) = parse_cli_args(make_parser(), ["--config", str(config), "--batch_size", "7"])
    assert overridden.batch_size == 7 and overridden.top_k == 5
    config.write_text("no_such_flag: 1\n")
    with pytest.raises(UsageError, match="unknown key 'no_such_flag'"):
        parse_cli_args(make_parser(), ["--config", str(config)])
    config.write_text("a: [1\n")
    with pytest.raises(UsageError, match=r"eval.yaml:\d+: not valid YAML"):
        parse_cli_args(make_parser(), ["--config", str(config)])


def test_hf_flag_names_mean_the_originals(tmp_path, tiny_latent):
    from evaluation.dsr_eval import make_parser

    bench = tmp_path / "b.jsonl"
    bench.write_text("")
    common = ["--benchmark_path", str(bench), "--video_root", str(tmp_path)]
    (a,) = parse_cli_args(make_parser(), ["--model_path", str(tiny_latent), "--batch_size", "4", *common])
    (b,) = parse_cli_args(make_parser(), ["--model_name_or_path", str(tiny_latent),
                                          "--per_device_eval_batch_size", "4", *common])
    assert a == b


@pytest.mark.parametrize("argv, words", [
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--max_samples", "-1"], "--max_samples must be >= 1"),
])
def test_bad_values_are_usage_errors_naming_the_flag(tmp_path, tiny_latent, argv, words):
    from evaluation.dsr_eval import make_parser

    bench = tmp_path / "b.jsonl"
    bench.write_text("")
    base = ["--model_path", str(tiny_latent), "--benchmark_path", str(bench), "--video_root", str(tmp_path)]
    with pytest.raises(UsageError, match=words):
        parse_cli_args(make_parser(), base + argv)


def test_a_path_flag_naming_nothing_is_a_usage_error(tmp_path):
    from evaluation.dsr_eval import parse_args

    args = parse_args(["--model_path", "./no/such/folder", "--benchmark_path", str(tmp_path / "b.jsonl")])
    with pytest.raises(UsageError, match="--model_path ./no/such/folder: no such checkpoint folder"):
        args.check_paths()


# Each example config in configs/ parses with its command (flags of the right names and types).
CONFIG_PARSERS = {"dift_": "dift.train", "dsr_eval": "evaluation.dsr_eval", "fourdrl_": "fourdrl.recipe"}


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_parses(config):
    import importlib

    module = next((m for prefix, m in CONFIG_PARSERS.items() if config.name.startswith(prefix)), None)
    assert module is not None, f"{config.name}: no command known for this config (add it to CONFIG_PARSERS)"
    parsed = parse_cli_args(importlib.import_module(module).make_parser(), ["--config", str(config)])
    assert parsed
