"""The data engine's command line: a YAML config parses like the same flags (and flags override it),
and the secret scrubber removes every run of 6 characters of a key, in each form a service echoes
it, and nothing else."""

from __future__ import annotations

import json
from urllib.parse import quote, quote_plus

import pytest

from dift.core.cli import UsageError
from preprocess import redact
from preprocess.arguments import parse_step_args

KEY = "sk-Cl4/Ab8+Zq1=Yw6_Pe9"


def test_yaml_config_equals_flags_and_flags_override_it(tmp_path):
    flags = ["--out", str(tmp_path), "--seed", "3", "--workers", "2", "--llm_model", "m", "--llm_retries", "1",
             "--retry_failed"]
    config = tmp_path / "qa.yaml"
    config.write_text(f"out: {tmp_path}\nseed: 3\nworkers: 2\nllm_model: m\nllm_retries: 1\nretry_failed: true\n")
    assert parse_step_args("camera_qa", ["--config", str(config)]) == parse_step_args("camera_qa", flags)
    qa, llm = parse_step_args("camera_qa", ["--config", str(config), "--seed", "4"])
    assert qa.seed == 4 and qa.workers == 2 and llm.llm_model == "m"
    config.write_text("sed: 3\n")
    with pytest.raises(UsageError, match="unknown key 'sed'"):
        parse_step_args("camera_qa", ["--config", str(config)])


@pytest.fixture()
def secret():
    redact.register(KEY)
    yield KEY


@pytest.mark.parametrize("echo", [
    KEY, KEY[:6], KEY[:10] + "...", KEY[5:14], KEY[-6:], quote(KEY, safe=""), quote_plus(KEY), json.dumps({"k": KEY}),
    f"Bearer {KEY}!", KEY[2:9] + " and " + KEY[11:19],
])
def test_every_run_of_six_characters_is_scrubbed(secret, echo):
    text = f"error: {echo} (end)"
    clean = redact.scrub(text)
    assert clean.startswith("error: ") and clean.endswith(" (end)") and "***" in clean
    for i in range(len(KEY) - 5):
        assert KEY[i:i + 6] not in clean


def test_shorter_runs_and_other_text_are_kept(secret):
    text = f"frame_0001.jpg {KEY[:5]} sk- Pan Left"  # 5 characters of the key are not a leak
    assert redact.scrub(text) == text
