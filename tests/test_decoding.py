"""Where decoding fields come from (dift.core.decoding): the command line, else the checkpoint's
generation_config.json (as the original), else off."""

from __future__ import annotations

import json

import pytest

from dift.core.decoding import GenerationConfigError, describe, read_checkpoint_defaults, resolve_sampling

FLAGS = dict(max_new_tokens=16, greedy=False, temperature=0.7, top_p=0.9)


def write_config(folder, **fields):
    (folder / "generation_config.json").write_text(json.dumps(fields))
    return folder


def test_unset_fields_come_from_the_checkpoint(tmp_path):
    write_config(tmp_path, top_k=1, repetition_penalty=1.05, temperature=0.1, top_p=0.001)
    sampling, sources = resolve_sampling(**FLAGS, top_k=None, repetition_penalty=None, model_path=tmp_path)
    # temperature and top_p are the flags' (the original set them); top_k and the penalty the file's.
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.repetition_penalty) == (0.7, 0.9, 1, 1.05)
    assert sources == {"top_k": str(tmp_path / "generation_config.json"),
                       "repetition_penalty": str(tmp_path / "generation_config.json")}
    assert "greedy (top_k 1)" in describe(sampling, sources)


def test_flags_win_and_flags_mode_ignores_the_file(tmp_path):
    write_config(tmp_path, top_k=1, repetition_penalty=1.05)
    sampling, sources = resolve_sampling(**FLAGS, top_k=50, repetition_penalty=None, model_path=tmp_path)
    assert (sampling.top_k, sampling.repetition_penalty) == (50, 1.05)
    assert sources["top_k"] == "command line"
    sampling, sources = resolve_sampling(**FLAGS, top_k=None, repetition_penalty=None, model_path=tmp_path,
                                         mode="flags")
    assert (sampling.top_k, sampling.repetition_penalty) == (0, 1.0) and set(sources.values()) == {"off"}


def test_no_file_means_off(tmp_path):
    sampling, sources = resolve_sampling(**FLAGS, top_k=None, repetition_penalty=None, model_path=tmp_path)
    assert (sampling.top_k, sampling.repetition_penalty) == (0, 1.0) and set(sources.values()) == {"off"}


@pytest.mark.parametrize("text, words", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"top_k": -1}', "top_k=-1"),
    ('{"top_k": 1.5}', "top_k=1.5"),
    ('{"repetition_penalty": 0}', "repetition_penalty=0"),
    ('{"repetition_penalty": "high"}', "repetition_penalty='high'"),
])
def test_bad_generation_config_is_one_line_naming_file_and_field(tmp_path, text, words):
    (tmp_path / "generation_config.json").write_text(text)
    with pytest.raises(GenerationConfigError) as err:
        read_checkpoint_defaults(tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "generation_config.json") in message and words in message
