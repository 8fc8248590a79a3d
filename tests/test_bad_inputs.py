"""The table of bad inputs: every command line, fed bad files, bad flags, missing files and unreadable
media, must end with the project's exit code and one line naming what is wrong, never a traceback.

Each case: (id, command, argv (with {placeholders} filled from the workspace), expected exit code,
words the last stderr line must contain). Python commands run in-process through their `cli()` (what
`python -m ...` runs: the same code, far faster than a new interpreter per case); launchers run as
subprocesses. Exit codes: 1 the job failed, 2 usage error (dift.core.cli).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from scripts.make_demo_benchmark import build_benchmark
from scripts.make_demo_rl_data import write_demo_rl_data
from scripts.synthetic_media import moving_square_frames, write_mp4

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_latent, tiny_base, demo_data):
    """Every good and bad file the cases name."""
    root = tmp_path_factory.mktemp("bad-inputs")
    w = {"root": root, "model": tiny_latent, "base": tiny_base, "data": demo_data, "out": root / "out"}
    # DIFT data files (next to the demo data: their image paths are relative to the JSONL)
    data_dir = root / "data"
    shutil.copytree(demo_data.parent, data_dir)
    good = demo_data.read_text().splitlines()
    w["bad_json"] = _write(data_dir / "bad_json.jsonl", good[0] + "\n{not json\n")
    record = json.loads(good[0])
    w["no_field"] = _write(data_dir / "no_field.jsonl",
                           json.dumps({k: v for k, v in record.items() if k != "text_output"}) + "\n")
    w["empty_data"] = _write(data_dir / "empty.jsonl", "")
    w["mismatch"] = _write(data_dir / "mismatch.jsonl",
                           json.dumps({**record, "text_output": "no image <answer>A</answer>"}) + "\n")
    w["missing_image"] = _write(data_dir / "missing_image.jsonl", json.dumps(
        {**record, "image_output": [record["image_output"][0], "/nonexistent/helper.jpg"]}) + "\n")
    corrupt_images = root / "corrupt_images"
    shutil.copytree(demo_data.parent, corrupt_images)
    for helper in sorted((corrupt_images / "helpers").glob("*.jpg")):
        helper.write_bytes(b"not a jpeg")
    w["corrupt_image_data"] = corrupt_images / demo_data.name
    # DeepSpeed, YAML configs
    w["bad_ds"] = _write(root / "bad_ds.json", '{"zero_optimization": {"stage": 2,}')
    w["list_ds"] = _write(root / "list_ds.json", "[1, 2]")
    w["bad_yaml"] = _write(root / "bad.yaml", "exp_name: [x\n")
    w["unknown_yaml"] = _write(root / "unknown.yaml", "no_such_flag: 3\n")
    w["list_yaml"] = _write(root / "list.yaml", "- a\n- b\n")
    incomplete = root / "ckpt" / "checkpoint-3"
    incomplete.mkdir(parents=True)
    w["incomplete"] = incomplete
    # checkpoints with something wrong
    bad_gen = root / "bad_gencfg"
    shutil.copytree(tiny_latent, bad_gen)
    (bad_gen / "generation_config.json").write_text("{top_k: 1")
    w["bad_gencfg"] = bad_gen
    no_weights = root / "no_weights"
    shutil.copytree(tiny_latent, no_weights)
    for f in no_weights.glob("*.safetensors"):
        f.unlink()
    w["no_weights"] = no_weights
    # media
    frames = moving_square_frames(4)
    w["video"] = write_mp4(root / "clip.mp4", frames, fps=1)
    w["corrupt_video"] = _write(root / "corrupt.mp4", "\x00\x00\x00\x18ftypmp42 garbage" * 10)
    w["empty_video"] = _write(root / "empty.mp4", "")
    long = write_mp4(root / "long.mp4", moving_square_frames(24), fps=2, faststart=True)
    data = long.read_bytes()
    w["truncated_video"] = root / "truncated.mp4"
    w["truncated_video"].write_bytes(data[: len(data) * 2 // 3])
    w["empty_dir"] = root / "empty_dir"
    w["empty_dir"].mkdir()
    bad_frames = root / "bad_frames"
    bad_frames.mkdir()
    (bad_frames / "frame_0000.jpg").write_bytes(b"garbage")
    w["bad_frames"] = bad_frames
    # benchmarks
    bench = build_benchmark(root / "bench", per_type=1, frames=2, size=56)
    w["bench"], w["videos"] = bench / "benchmark.parquet", bench / "videos"
    rows = pd.read_parquet(w["bench"]).to_dict("records")
    row = {k: (list(v) if k == "options" else v) for k, v in rows[0].items()}
    corrupt = root / "corrupt.parquet"
    corrupt.write_bytes(w["bench"].read_bytes()[:-50])
    w["corrupt_parquet"] = corrupt
    w["empty_array"] = _write(root / "empty.json", "[]")
    w["outside"] = _write(root / "outside.jsonl", json.dumps({**row, "answer": "F"}) + "\n")
    w["dup_ids"] = _write(root / "dup.jsonl", "".join(json.dumps({**row, "id": 1}) + "\n" for _ in range(2)))
    w["nan_field"] = _write(root / "nan.jsonl", json.dumps(row)[:-1] + ', "type": NaN}\n')
    w["no_answer"] = _write(root / "no_answer.jsonl", json.dumps({k: v for k, v in row.items() if k != "answer"}) + "\n")
    w["csv"] = _write(root / "bench.csv", "a,b\n")
    w["array_rows"] = _write(root / "arrays.json", "[[1, 2]]")
    # results files (rescore, resume)
    result = {"index": 0, "gt": "A", "raw": "<answer>A</answer>", "subtask_type": "abs_dir"}
    w["results_ok"] = _write(root / "ok.jsonl", json.dumps(result) + "\n")
    w["results_bad_line"] = _write(root / "bad_line.jsonl", json.dumps(result) + "\nnot json\n" + json.dumps(result) + "\n")
    w["results_dup"] = _write(root / "dup_results.jsonl", (json.dumps(result) + "\n") * 2)
    w["results_gt"] = _write(root / "gt.jsonl", json.dumps({**result, "gt": "AB"}) + "\n")
    w["results_nan"] = _write(root / "nan_results.jsonl", '{"index": 0, "gt": "A", "raw": NaN}\n')
    w["results_empty"] = _write(root / "empty_results.jsonl", "")
    w["results_noindex"] = _write(root / "noindex.jsonl", '{"gt": "A", "raw": "A"}\n')
    w["results_raw_type"] = _write(root / "raw_type.jsonl", json.dumps({**result, "raw": 5}) + "\n")
    w["results_error_type"] = _write(root / "error_type.jsonl", json.dumps({**result, "error": "no"}) + "\n")
    w["results_options"] = _write(root / "options.jsonl", json.dumps({**result, "num_options": "four"}) + "\n")
    # an evaluation resumed with other settings
    w["resume_output"] = root / "resume" / "run.jsonl"
    # 4DRL data (bad files next to the good one: frame paths are relative to the JSONL)
    rl = write_demo_rl_data(root / "rl", num_samples=2, num_frames=2, size=56)
    rl_good = json.loads(rl.read_text().splitlines()[0])
    w["rl"] = rl
    w["rl_bad_json"] = _write(rl.parent / "bad_json.jsonl", rl.read_text() + "{oops\n")
    w["rl_no_frames"] = _write(rl.parent / "no_frames.jsonl", json.dumps(
        {k: v for k, v in rl_good.items() if k != "frame_paths"}) + "\n")
    w["rl_bad_letter"] = _write(rl.parent / "bad_letter.jsonl", json.dumps({**rl_good, "Correct": "F"}) + "\n")
    w["rl_missing_frame"] = _write(rl.parent / "missing_frame.jsonl", json.dumps(
        {**rl_good, "frame_paths": ["nope/frame.jpg"]}) + "\n")
    w["rl_array"] = _write(rl.parent / "array.jsonl", "[1, 2]\n")
    w["rl_not_utf8"] = rl.parent / "latin1.jsonl"
    w["rl_not_utf8"].write_bytes(json.dumps({**rl_good, "Question": "QQ"}).replace("QQ", "caf\\u00e9").encode()
                                 + b"\n" + json.dumps(rl_good).replace(rl_good["Question"], "x").encode()[:-2]
                                 + b'\xe9"}\n')
    w["rl_half_bad"] = _write(rl.parent / "half_bad.jsonl", json.dumps(rl_good) + "\n"
                              + json.dumps({**rl_good, "Correct": "F"}) + "\n")
    w["rl_empty"] = _write(rl.parent / "empty.jsonl", "")
    w["rl_corrupt_video"] = _write(rl.parent / "corrupt_video.jsonl", json.dumps(
        {k: v for k, v in {**rl_good, "video_path": str(w["corrupt_video"])}.items() if k != "frame_paths"}) + "\n")
    return w


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


TRAIN = ["--exp_name", "x", "--model", "{model}", "--data_path", "{data}", "--output_dir", "{out}", "--max_steps", "1"]
INFER = ["--model_path", "{model}", "--video", "{video}", "--question", "Q?", "--max_new_tokens", "2"]
EVAL = ["--model_path", "{model}", "--benchmark_path", "{bench}", "--video_root", "{videos}", "--output_file",
        "{out}/eval.jsonl", "--max_new_tokens", "2", "--num_workers", "0"]

RL = ["--model_name_or_path", "{model}", "--data_path", "{rl}", "--output_dir", "{out}/rl", "--num_generations", "2",
      "--per_device_train_batch_size", "2", "--max_steps", "1", "--max_completion_length", "4", "--report_to", "none"]


def replace(argv: list[str], flag: str, value: str | None) -> list[str]:
    """`argv` with `flag`'s value changed (None: the flag removed)."""
    out = list(argv)
    i = out.index(flag)
    if value is None:
        del out[i:i + 2]
    else:
        out[i + 1] = value
    return out


CASES = [
    # ---- python -m dift.train: flags
    ("train/no_exp_name", "train", replace(TRAIN, "--exp_name", None), 2, "--exp_name"),
    ("train/unknown_flag", "train", TRAIN + ["--no_such_flag", "1"], 2, "--no_such_flag"),
    ("train/batch_size_0", "train", TRAIN + ["--batch_size", "0"], 2, "--batch_size must be >= 1"),
    ("train/hf_batch_size_0", "train", TRAIN + ["--per_device_train_batch_size", "0"], 2, "--batch_size must be >= 1"),
    ("train/grad_accum_0", "train", TRAIN + ["--gradient_accumulation_steps", "0"], 2, "--gradient_accumulation_steps"),
    ("train/latent_size_0", "train", TRAIN + ["--latent_size", "0"], 2, "--latent_size must be >= 1"),
    ("train/lr_negative", "train", TRAIN + ["--learning_rate", "-1"], 2, "--learning_rate"),
    ("train/no_steps", "train", TRAIN + ["--epochs", "0", "--max_steps", "-1"], 2, "--epochs > 0 or --max_steps > 0"),
    ("train/weights_zero", "train", TRAIN + ["--ce_loss_weight", "0", "--sim_loss_weight", "0"], 2, "not both 0"),
    ("train/batch_size_text", "train", TRAIN + ["--batch_size", "two"], 2, "invalid int value"),
    ("train/bad_strategy", "train", TRAIN + ["--compress_strategy", "median"], 2, "invalid choice"),
    ("train/bad_task", "train", TRAIN + ["--task", "nope"], 2, "invalid choice"),
    ("train/bad_report_to", "train", TRAIN + ["--report_to", "mlflow"], 2, "invalid choice"),
    ("train/skip_fraction", "train", TRAIN + ["--max_skip_fraction", "2"], 2, "--max_skip_fraction"),
    ("train/max_frames_0", "train", TRAIN + ["--max_frames", "0"], 2, "--max_frames"),
    ("train/exp_name_slash", "train", replace(TRAIN, "--exp_name", "a/b"), 2, "--exp_name"),
    ("train/missing_model", "train", replace(TRAIN, "--model", "./no/such/model"), 2, "no such checkpoint folder"),
    ("train/missing_data", "train", replace(TRAIN, "--data_path", "{root}/nope.jsonl"), 2, "--data_path"),
    ("train/missing_image_root", "train", TRAIN + ["--image_root", "{root}/nope"], 2, "--image_root"),
    ("train/missing_ds", "train", TRAIN + ["--deepspeed_config", "{root}/nope.json"], 2, "--deepspeed_config"),
    ("train/bad_ds_json", "train", TRAIN + ["--deepspeed_config", "{bad_ds}"], 2, "not valid JSON"),
    ("train/list_ds_json", "train", TRAIN + ["--deepspeed_config", "{list_ds}"], 2, "expected a JSON object"),
    ("train/missing_resume", "train", TRAIN + ["--resume_from_checkpoint", "{root}/nope"], 2, "no checkpoint folder"),
    ("train/incomplete_resume", "train", TRAIN + ["--resume_from_checkpoint", "{incomplete}"], 2, "incomplete"),
    ("train/missing_config", "train", ["--config", "{root}/nope.yaml"], 2, "--config: file not found"),
    ("train/bad_yaml", "train", ["--config", "{bad_yaml}"], 2, "not valid YAML"),
    ("train/unknown_yaml_key", "train", ["--config", "{unknown_yaml}"], 2, "unknown key 'no_such_flag'"),
    ("train/list_yaml", "train", ["--config", "{list_yaml}"], 2, "expected a mapping"),
    # ---- python -m dift.train: data and model
    ("train/bad_json_line", "train", replace(TRAIN, "--data_path", "{bad_json}"), 1, "bad_json.jsonl:2"),
    ("train/missing_field", "train", replace(TRAIN, "--data_path", "{no_field}"), 1, "text_output"),
    ("train/empty_data", "train", replace(TRAIN, "--data_path", "{empty_data}"), 1, "empty.jsonl"),
    ("train/placeholder_mismatch", "train", replace(TRAIN, "--data_path", "{mismatch}"), 1, "mismatch.jsonl:1"),
    ("train/missing_helper_image", "train", replace(TRAIN, "--data_path", "{missing_image}"), 1, "missing_image.jsonl:1"),
    ("train/corrupt_image", "train", replace(TRAIN, "--data_path", "{corrupt_image_data}"), 1, "cannot read image"),
    ("train/corrupt_images_all_skipped", "train", replace(TRAIN, "--data_path", "{corrupt_image_data}")
     + ["--skip_bad_records"], 1, "none of the 4 records could be loaded"),
    ("train/wandb_not_logged_in", "train", TRAIN + ["--report_to", "wandb"], 2, "not logged in to W&B"),
    ("train/model_without_weights", "train", replace(TRAIN, "--model", "{no_weights}"), 1, "no_weights"),
    # ---- python -m dift.inference
    ("infer/no_visual", "infer", replace(INFER, "--video", None), 2, "exactly one of --video"),
    ("infer/both_visuals", "infer", INFER + ["--image_dir", "{empty_dir}"], 2, "exactly one of --video"),
    ("infer/no_question", "infer", replace(INFER, "--question", None), 2, "--question"),
    ("infer/missing_video", "infer", replace(INFER, "--video", "{root}/nope.mp4"), 2, "--video"),
    ("infer/missing_frames", "infer", replace(INFER, "--video", None) + ["--image_dir", "{root}/nope"], 2,
     "--image_dir"),
    ("infer/missing_model", "infer", replace(INFER, "--model_path", "./no/model"), 2, "no such checkpoint folder"),
    ("infer/cuda_without_gpu", "infer", INFER + ["--device", "cuda"], 2, "no CUDA device"),
    ("infer/bad_dtype", "infer", INFER + ["--dtype", "int8"], 2, "invalid choice"),
    ("infer/max_new_tokens_0", "infer", INFER + ["--max_new_tokens", "0"], 2, "--max_new_tokens"),
    ("infer/temperature_0", "infer", INFER + ["--temperature", "0"], 2, "--temperature must be > 0"),
    ("infer/top_p_2", "infer", INFER + ["--top_p", "2"], 2, "--top_p must be in (0, 1]"),
    ("infer/top_k_negative", "infer", INFER + ["--top_k", "-3"], 2, "--top_k must be >= 0"),
    ("infer/penalty_0", "infer", INFER + ["--repetition_penalty", "0"], 2, "--repetition_penalty"),
    ("infer/bad_ablation", "infer", INFER + ["--latent_ablation", "random"], 2, "invalid choice"),
    ("infer/bad_generation_mode", "infer", INFER + ["--generation_config", "yes"], 2, "invalid choice"),
    ("infer/unknown_flag", "infer", INFER + ["--beam", "4"], 2, "--beam"),
    ("infer/empty_frames_dir", "infer", replace(INFER, "--video", None) + ["--image_dir", "{empty_dir}"], 1,
     "no frame_*.jpg"),
    ("infer/corrupt_frame", "infer", replace(INFER, "--video", None) + ["--image_dir", "{bad_frames}"], 1,
     "frame_0000.jpg"),
    ("infer/corrupt_video", "infer", replace(INFER, "--video", "{corrupt_video}"), 1, "corrupt.mp4"),
    ("infer/empty_video", "infer", replace(INFER, "--video", "{empty_video}"), 1, "empty.mp4"),
    ("infer/truncated_video", "infer", replace(INFER, "--video", "{truncated_video}"), 1, "truncated.mp4"),
    ("infer/base_model_without_latents", "infer", replace(INFER, "--model_path", "{base}"), 1, "latent tokens"),
    ("infer/bad_generation_config", "infer", replace(INFER, "--model_path", "{bad_gencfg}"), 1,
     "generation_config.json: not valid JSON"),
    ("infer/model_without_weights", "infer", replace(INFER, "--model_path", "{no_weights}"), 1, "no_weights"),
    # ---- python -m evaluation.dsr_eval: flags
    ("eval/batch_size_0", "eval", EVAL + ["--batch_size", "0"], 2, "--batch_size must be >= 1"),
    ("eval/max_samples_negative", "eval", EVAL + ["--max_samples", "-1"], 2, "--max_samples must be >= 1"),
    ("eval/num_workers_negative", "eval", EVAL + ["--num_workers", "-2"], 2, "--num_workers"),
    ("eval/skip_fraction", "eval", EVAL + ["--max_skip_fraction", "1.5"], 2, "--max_skip_fraction"),
    ("eval/temperature_negative", "eval", EVAL + ["--temperature", "-1"], 2, "--temperature must be > 0"),
    ("eval/top_p_0", "eval", EVAL + ["--top_p", "0"], 2, "--top_p must be in (0, 1]"),
    ("eval/penalty_negative", "eval", EVAL + ["--repetition_penalty", "-1"], 2, "--repetition_penalty"),
    ("eval/max_new_tokens_0", "eval", EVAL + ["--max_new_tokens", "0"], 2, "--max_new_tokens"),
    ("eval/bad_ablation", "eval", EVAL + ["--latent_ablation", "x"], 2, "invalid choice"),
    ("eval/bad_generation_mode", "eval", EVAL + ["--generation_config", "x"], 2, "invalid choice"),
    ("eval/bad_dtype", "eval", EVAL + ["--dtype", "fp8"], 2, "invalid choice"),
    ("eval/unknown_flag", "eval", EVAL + ["--shots", "5"], 2, "--shots"),
    ("eval/missing_model", "eval", replace(EVAL, "--model_path", "./no/model"), 2, "no such checkpoint folder"),
    ("eval/missing_benchmark", "eval", replace(EVAL, "--benchmark_path", "{root}/nope.parquet"), 2, "--benchmark_path"),
    ("eval/missing_video_root", "eval", replace(EVAL, "--video_root", "{root}/nope"), 2, "--video_root"),
    ("eval/cuda_without_gpu", "eval", EVAL + ["--device", "cuda"], 2, "no CUDA device"),
    ("eval/bad_yaml", "eval", ["--config", "{bad_yaml}"], 2, "not valid YAML"),
    ("eval/unknown_yaml_key", "eval", ["--config", "{unknown_yaml}"], 2, "unknown key"),
    ("eval/missing_config", "eval", ["--config", "{root}/nope.yaml"], 2, "file not found"),
    # ---- python -m evaluation.dsr_eval: data, media, checkpoints
    ("eval/corrupt_parquet", "eval", replace(EVAL, "--benchmark_path", "{corrupt_parquet}"), 1,
     "not a readable parquet file"),
    ("eval/empty_json_array", "eval", replace(EVAL, "--benchmark_path", "{empty_array}"), 1, "no questions"),
    ("eval/answer_outside_options", "eval", replace(EVAL, "--benchmark_path", "{outside}"), 1,
     "not one of the options' letters"),
    ("eval/duplicate_ids", "eval", replace(EVAL, "--benchmark_path", "{dup_ids}"), 1, "repeats row 0"),
    ("eval/nan_field", "eval", replace(EVAL, "--benchmark_path", "{nan_field}"), 1, "NaN"),
    ("eval/missing_answer", "eval", replace(EVAL, "--benchmark_path", "{no_answer}"), 1, "missing field 'answer'"),
    ("eval/unknown_format", "eval", replace(EVAL, "--benchmark_path", "{csv}"), 1, "unknown benchmark format"),
    ("eval/rows_not_objects", "eval", replace(EVAL, "--benchmark_path", "{array_rows}"), 1, "expected an object"),
    ("eval/every_video_missing", "eval", replace(EVAL, "--video_root", "{empty_dir}"), 1, "was skipped"),
    ("eval/base_model_without_latents", "eval", replace(EVAL, "--model_path", "{base}"), 1, "latent tokens"),
    ("eval/bad_generation_config", "eval", replace(EVAL, "--model_path", "{bad_gencfg}"), 1, "not valid JSON"),
    ("eval/resume_bad_results", "eval", replace(EVAL, "--output_file", "{results_bad_line}"), 1, "line 2"),
    ("eval/resume_other_settings", "eval", replace(EVAL, "--output_file", "{resume_output}"), 2,
     "the results were written with"),
    # ---- python -m evaluation.rescore
    ("rescore/missing", "rescore", ["{root}/nope.jsonl"], 2, "no such file"),
    ("rescore/no_argument", "rescore", [], 2, "results"),
    ("rescore/bad_letters", "rescore", ["{results_ok}", "--letters", "ab1"], 2, "--letters"),
    ("rescore/bad_line", "rescore", ["{results_bad_line}"], 1, "line 2: invalid JSON"),
    ("rescore/duplicate_index", "rescore", ["{results_dup}"], 1, "repeats record 1"),
    ("rescore/bad_gt", "rescore", ["{results_gt}"], 1, "not one capital letter"),
    ("rescore/nan", "rescore", ["{results_nan}"], 1, "NaN"),
    ("rescore/empty", "rescore", ["{results_empty}"], 1, "no records"),
    ("rescore/no_index", "rescore", ["{results_noindex}"], 1, "no integer 'index'"),
    ("rescore/raw_not_text", "rescore", ["{results_raw_type}"], 1, "not text"),
    ("rescore/error_not_bool", "rescore", ["{results_error_type}"], 1, "not true/false"),
    ("rescore/options_not_count", "rescore", ["{results_options}"], 1, "num_options"),
    ("rescore/benchmark_given_as_results", "rescore", ["{bench}"], 1, "benchmark.parquet"),
    # ---- python -m fourdrl.train: flags
    ("rl/unknown_flag", "rl", RL + ["--num_generationz", "4"], 2, "unknown flag(s) --num_generationz"),
    ("rl/batch_not_whole_groups", "rl", replace(RL, "--per_device_train_batch_size", "3"), 2,
     "not a multiple of --num_generations 2"),
    ("rl/unknown_reward", "rl", RL + ["--reward_funcs", "length"], 2, "valid: accuracy, format"),
    ("rl/weights_count", "rl", RL + ["--reward_weights", "1.0"], 2, "--reward_weights has 1 value(s)"),
    ("rl/vllm_refused", "rl", RL + ["--use_vllm"], 2, "--use_vllm is not supported"),
    ("rl/exp_name_path", "rl", RL + ["--exp_name", "a/b"], 2, "--exp_name"),
    ("rl/bad_lr", "rl", RL + ["--learning_rate", "fast"], 2, "--learning_rate"),
    ("rl/bad_yaml", "rl", ["--config", "{bad_yaml}"], 2, "not valid YAML"),
    ("rl/unknown_yaml_key", "rl", ["--config", "{unknown_yaml}"], 2, "unknown key 'no_such_flag'"),
    ("rl/missing_model", "rl", replace(RL, "--model_name_or_path", "{root}/no_model"), 2, "no_model"),
    ("rl/resume_missing", "rl", RL + ["--resume_from_checkpoint", "{root}/no_ckpt"], 2, "no checkpoint folder"),
    ("rl/resume_incomplete", "rl", RL + ["--resume_from_checkpoint", "{incomplete}"], 2, "incomplete"),
    ("rl/wandb_not_logged_in", "rl", RL + ["--report_to", "wandb"], 2, "not logged in to W&B"),
    # ---- python -m fourdrl.train: data and model
    ("rl/data_missing", "rl", replace(RL, "--data_path", "{root}/none.jsonl"), 1, "RL data file not found"),
    ("rl/bad_json_line", "rl", replace(RL, "--data_path", "{rl_bad_json}"), 1, "bad_json.jsonl:3"),
    ("rl/no_frames", "rl", replace(RL, "--data_path", "{rl_no_frames}"), 1, "'frame_paths' or 'video_path'"),
    ("rl/answer_outside_options", "rl", replace(RL, "--data_path", "{rl_bad_letter}"), 1, "not one of the options"),
    ("rl/missing_frame", "rl", replace(RL, "--data_path", "{rl_missing_frame}"), 1, "file not found"),
    ("rl/array_line", "rl", replace(RL, "--data_path", "{rl_array}"), 1, "array.jsonl:1"),
    ("rl/empty_data", "rl", replace(RL, "--data_path", "{rl_empty}"), 1, "no usable RL records"),
    ("rl/corrupt_video", "rl", replace(RL, "--data_path", "{rl_corrupt_video}"), 1, "corrupt_video.jsonl:1"),
    ("rl/not_utf8", "rl", replace(RL, "--data_path", "{rl_not_utf8}"), 1, "latin1.jsonl:2: not UTF-8"),
    ("rl/skip_fraction", "rl", replace(RL, "--data_path", "{rl_half_bad}") + ["--skip_bad_records",
     "--max_skip_fraction", "0.3"], 1, "1 of 2 records skipped, more than --max_skip_fraction 0.3"),
    ("rl/skip_fraction_range", "rl", RL + ["--max_skip_fraction", "2"], 2, "--max_skip_fraction must be in [0, 1]"),
    ("rl/all_skipped", "rl", replace(RL, "--data_path", "{rl_bad_letter}") + ["--skip_bad_records"], 1,
     "no usable RL records"),
    ("rl/model_without_latent_tokens", "rl", replace(RL, "--model_name_or_path", "{base}"), 1, "latent tokens"),
    # ---- python -m fourdrl.lora
    ("lora/no_flags", "lora", [], 2, "--adapter"),
    ("lora/adapter_missing", "lora", ["--adapter", "{root}/none", "--out", "{out}/m"], 2, "--adapter"),
    ("lora/not_an_adapter", "lora", ["--adapter", "{model}", "--out", "{out}/m"], 1, "not a LoRA checkpoint"),
    ("rl/model_without_weights", "rl", replace(RL, "--model_name_or_path", "{no_weights}"), 1, "no_weights"),
]

LAUNCHER_CASES = [
    # (id, script, environment, arguments, exit code, words)
    ("sh/dift_nnodes_0", "dift/train.sh", {"NNODES": "0", "DRY_RUN": "1"}, [], 2, "NNODES"),
    ("sh/dift_node_rank_high", "dift/train.sh", {"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "h", "DRY_RUN": "1"},
     [], 2, "NODE_RANK"),
    ("sh/dift_port_text", "dift/train.sh", {"NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "x",
                                            "DRY_RUN": "1"}, [], 2, "MASTER_PORT"),
    ("sh/dift_no_master", "dift/train.sh", {"NNODES": "2", "NODE_RANK": "1", "DRY_RUN": "1"}, [], 2, "MASTER_ADDR"),
    ("sh/eval_nnodes_text", "evaluation/eval.sh", {"NNODES": "two", "DRY_RUN": "1"}, [], 2, "NNODES"),
    ("sh/batch_output_file", "evaluation/batch_dsr_eval.sh", {"DRY_RUN": "1"}, ["0 x", "--", "--output_file", "a"], 2,
     "--output_file"),
    ("sh/single_gpu_multinode", "dift/train_single_gpu.sh", {"NNODES": "2", "DRY_RUN": "1"}, [], 2, "NNODES"),
    ("sh/rl_nnodes_0", "fourdrl/train.sh", {"NNODES": "0", "DRY_RUN": "1"}, [], 2, "NNODES"),
    ("sh/rl_no_master", "fourdrl/train.sh", {"NNODES": "2", "NODE_RANK": "1", "DRY_RUN": "1"}, [], 2, "MASTER_ADDR"),
    ("sh/rl_generations_0", "fourdrl/train.sh", {"NUM_GENERATIONS": "0", "DRY_RUN": "1"}, [], 2, "NUM_GENERATIONS"),
    ("sh/rl_gpus_text", "fourdrl/train_cpu.sh", {"NUM_GPUS": "two", "DRY_RUN": "1", "MODEL": "m", "DATA": "d"}, [], 2,
     "NUM_GPUS"),
]


def fill(argv: list[str], ws: dict) -> list[str]:
    return [a.format(**ws) for a in argv]


def run_python(command: str, argv: list[str], capsys) -> tuple[int, str]:
    from dift import inference, train
    from evaluation import dsr_eval, rescore
    from fourdrl import lora
    from fourdrl import train as rl_train

    cli = {"train": train.cli, "infer": inference.cli, "eval": dsr_eval.cli, "rescore": rescore.cli,
           "rl": rl_train.cli, "lora": lora.main}[command]
    with pytest.raises(SystemExit) as exit_info:
        cli(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


@pytest.mark.parametrize("case, command, argv, code, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input(ws, capsys, monkeypatch, case, command, argv, code, words):
    for name in ("WANDB_API_KEY", "WANDB_MODE"):  # the W&B cases need a machine that is not logged in
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(ws["root"] / "no-netrc"))
    if case == "eval/resume_other_settings" and not ws["resume_output"].exists():
        # A results file written with another seed: resuming it with these settings must be refused.
        from evaluation import dsr_eval

        dsr_eval.main(fill(replace(EVAL, "--output_file", "{resume_output}") + ["--seed", "7", "--max_samples", "1"],
                           ws))
        capsys.readouterr()
    got, output = run_python(command, fill(argv, ws), capsys)
    assert "Traceback" not in output, output[-3000:]
    last = output.strip().splitlines()[-1] if output.strip() else ""
    assert got == code, f"exit {got}, want {code}: {last}"
    assert words in last, last


@pytest.mark.parametrize("case, script, env, args, code, words", LAUNCHER_CASES, ids=[c[0] for c in LAUNCHER_CASES])
def test_bad_launcher_input(case, script, env, args, code, words):
    import os

    done = subprocess.run(["bash", str(ROOT / script), *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
    assert done.returncode == code, f"exit {done.returncode}, want {code}: {output[-1500:]}"
    assert words in last, last


def test_the_table_is_large_enough():
    assert len(CASES) + len(LAUNCHER_CASES) >= 100
