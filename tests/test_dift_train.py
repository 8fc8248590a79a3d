"""DIFT training: the CLI and its flags, the DeepSpeed configs, the launchers, a real loss drop,
resume, and the 2-process DeepSpeed ZeRO-2 run on CPU (spec model_and_dift.md sections 4 and 6)."""

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dift.collator import DIFTCollator
from dift.core.checkpoint import load_latent_model, load_processor
from dift.core.cli import UsageError, parse_cli_args
from dift.core.tokens import LatentTokenIds
from dift.core.training_checkpoint import COMPLETE_MARKER, is_complete_checkpoint
from dift.data import DIFTJsonlDataset
from dift.recipe import (
    build_training_arguments,
    finalize_for_device,
    load_model_and_processor,
    resolve_deepspeed_config,
    resume_checkpoint,
)
from dift.train import TASKS, DIFTTrainingArguments, ModelArguments, make_parser
from dift.trainer import DIFTTrainer, decode_sample, non_finite_parameters

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("ds_*.json"))


def run(cmd, env=None, timeout=600, cwd=ROOT):
    # One thread per process: on a small shared CPU, torch's thread pool oversubscribes the cores
    # (a 30-step run took 2-3x longer with two threads per process here).
    full_env = {"OMP_NUM_THREADS": "1", **os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def parse(*argv):
    return make_parser().parse_args_into_dataclasses(args=list(argv))


# ---------------------------------------------------------------------------------------------
# Flags, configs, launchers


def test_flags_and_defaults_are_the_originals():
    model, data, train = parse("--exp_name", "x", "--fps", "2.0", "--local_rank", "0", "--task", "sat")
    assert (model.model, model.stage, model.latent_size, model.compress_strategy) == (
        "Qwen/Qwen2.5-VL-7B-Instruct", "stage1", 4, "average")
    assert (model.ce_loss_weight, model.sim_loss_weight, model.cache_dir) == (0.1, 1.0, "./cache")
    assert (train.epochs, train.learning_rate, train.warmup_steps, train.weight_decay) == (10, 1e-5, 10, 0.01)
    assert (train.batch_size, train.gradient_accumulation_steps, train.logging_steps) == (1, 1, 20)
    assert (train.save_steps, train.save_total_limit, train.seed, train.output_dir) == (1000, 1, 42, "./outputs")
    assert train.checkpoint_dir == Path("outputs/x/checkpoints") and data.fps == 2.0 and "4dthinker" in TASKS
    assert train.report_to == "tensorboard"
    finalize_for_device(train)
    assert train.use_cpu and not train.bf16  # no GPU here: CPU, bf16 switched off
    with pytest.raises(SystemExit):
        parse("--latent_size", "4")  # --exp_name is required
    with pytest.raises(ValueError, match="--latent_size must be >= 1"):
        parse("--exp_name", "x", "--latent_size", "0")
    with pytest.raises(FileNotFoundError, match="--resume_from_checkpoint: no checkpoint folder"):
        parse("--exp_name", "x", "--resume_from_checkpoint", "/nonexistent/checkpoint-3")
    assert parse("--exp_name", "x", "--resume_from_checkpoint", "true")[2].resume is True
    with pytest.raises(ValueError, match=r"--max_skip_fraction must be in \[0, 1\], got 1.5"):
        parse("--exp_name", "x", "--max_skip_fraction", "1.5")


def test_resume_refuses_a_named_checkpoint_that_is_incomplete(tmp_path):
    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    args = parse("--exp_name", "x", "--resume_from_checkpoint", str(folder))[2]
    with pytest.raises(UsageError, match=r"checkpoint-4 is incomplete \(no checkpoint_complete.json"):
        resume_checkpoint(args)
    (folder / COMPLETE_MARKER).write_text("{}")
    assert resume_checkpoint(args) == str(folder)


def test_hf_flag_names_and_yaml_config_mean_the_originals(tmp_path):
    original = parse("--exp_name", "x", "--model", "m", "--epochs", "2", "--batch_size", "3",
                     "--deepspeed_config", str(CONFIGS[0]))
    hf = parse("--run_name", "x", "--model_name_or_path", "m", "--num_train_epochs", "2",
               "--per_device_train_batch_size", "3", "--deepspeed", str(CONFIGS[0]))
    assert hf == original
    config = tmp_path / "dift.yaml"
    config.write_text(f"exp_name: x\nmodel_name_or_path: m\nepochs: 2\nper_device_train_batch_size: 3\n"
                      f"deepspeed_config: {CONFIGS[0]}\n")
    assert parse_cli_args(make_parser(), ["--config", str(config)]) == original
    assert parse_cli_args(make_parser(), ["--config", str(config), "--epochs", "5"])[2].epochs == 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_deepspeed_configs_fill_auto_fields(path):
    raw = json.loads(path.read_text())
    train = DIFTTrainingArguments(exp_name="x", batch_size=2, gradient_accumulation_steps=3, use_cpu=True)
    config = resolve_deepspeed_config(path, train, num_processes=2)
    assert config["train_micro_batch_size_per_gpu"] == 2 and config["gradient_accumulation_steps"] == 3
    assert config["train_batch_size"] == 12 and config["gradient_clipping"] == 1.0
    assert config["bf16"]["enabled"] is False and config["fp16"]["enabled"] is False
    assert raw["bf16"]["enabled"] == "auto" and raw["train_batch_size"] == "auto"
    if path.name == "ds_zero2.json":
        zero = raw["zero_optimization"]
        assert zero["stage"] == 2 and zero["overlap_comm"] and zero["reduce_scatter"] and zero["contiguous_gradients"]
        assert zero["allgather_bucket_size"] == zero["reduce_bucket_size"] == 5e8


@pytest.mark.slow
def test_the_cli_accepts_each_config():
    """TrainingArguments (HF's DeepSpeed config checks, DeepSpeed's init) from each file; in a
    subprocess, because DeepSpeed sets process-wide state."""
    code = (
        "import sys\nfrom dift.train import make_parser\nfrom dift.recipe import build_training_arguments\n"
        "for cfg in sys.argv[1:]:\n"
        "    *_, args = make_parser().parse_args_into_dataclasses(args=['--exp_name', 'x', '--deepspeed_config', cfg,"
        " '--output_dir', '/tmp/unused', '--batch_size', '2'])\n"
        "    ta = build_training_arguments(args)\n"
        "    print(cfg, ta.hf_deepspeed_config.config['train_batch_size'], ta.hf_deepspeed_config.is_zero3())\n")
    out = run([sys.executable, "-c", code, *map(str, CONFIGS)]).stdout.splitlines()
    assert [line.split()[1:] for line in out[-3:]] == [["2", "False"], ["2", "True"], ["2", "True"]]


def launcher_command(script, env):
    out = run(["bash", str(ROOT / "dift" / script)], env={"DRY_RUN": "1", **env}).stdout
    return shlex.split(out.strip().splitlines()[-1])


def test_launchers_carry_the_original_values():
    cmd = launcher_command("train.sh", {"HAS_CUDA": "1"})
    assert cmd[1:6] == ["-m", "deepspeed.launcher.runner", "--num_gpus=8", "--module", "dift.train"]
    argv = cmd[6:]
    flags = dict(zip(argv[::2], argv[1::2]))
    assert flags["--model"] == "Qwen/Qwen2.5-VL-3B-Instruct" and flags["--exp_name"] == "4dthinker_stage1_3B_lr1e5_latent4"
    assert flags["--deepspeed_config"].endswith("configs/ds_zero2.json") and flags["--task"] == "4dthinker"
    assert (flags["--data_path"], flags["--output_dir"]) == ("./data/dift_data.jsonl", "./model/dift")
    expected = {"--learning_rate": "1e-5", "--epochs": "1", "--batch_size": "1", "--gradient_accumulation_steps": "1",
                "--latent_size": "4", "--ce_loss_weight": "0.1", "--sim_loss_weight": "1.0", "--logging_steps": "20",
                "--save_steps": "1000"}
    assert {k: flags[k] for k in expected} == expected
    parse(*argv)  # every flag the launcher passes is one the CLI takes

    single = launcher_command("train_single_gpu.sh", {})
    assert single[1:3] == ["-m", "dift.train"] and "--deepspeed_config" not in single
    flags = dict(zip(single[3::2], single[4::2]))
    assert flags["--model"] == "Qwen/Qwen2.5-VL-7B-Instruct" and flags["--exp_name"] == "4dthinker_stage1_7B_single_gpu"
    assert (flags["--gradient_accumulation_steps"], flags["--logging_steps"]) == ("8", "1")
    parse(*single[3:])

    cpu = launcher_command("train.sh", {"HAS_CUDA": "0", "MODEL": "m", "DATA": "d"})
    assert cpu[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] and "--use_cpu" in cpu


# ---------------------------------------------------------------------------------------------
# Pure helpers of the trainer


def test_non_finite_parameters_are_named():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    assert non_finite_parameters(net) == []
    with torch.no_grad():
        net[1].bias[0] = float("inf")
    assert non_finite_parameters(net) == ["1.bias"]


def test_decoded_sample_drops_latent_tokens(tiny_latent, demo_data):
    processor = load_processor(tiny_latent)
    ids = LatentTokenIds.from_tokenizer(processor.tokenizer)
    item = DIFTJsonlDataset(demo_data)[0]
    batch = DIFTCollator(processor, 4, ids)([item])
    sample = decode_sample(processor.tokenizer, batch["input_ids"][0], batch["labels"][0], batch["labels"][0],
                           ids.im_start)
    assert sample["question"] == item["question"]
    assert sample["ground_truth"] == item["text_output"].replace("<output_image>", "")
    assert sample["prediction"] == sample["ground_truth"]


def test_compute_loss_checks_parameters_early_and_logs_once_per_step(tiny_base, demo_data, tmp_path, caplog):
    model, processor, ids = load_model_and_processor(ModelArguments(model=str(tiny_base)), torch.float32)
    args = build_training_arguments(DIFTTrainingArguments(exp_name="unit", output_dir=str(tmp_path), logging_steps=2))
    dataset = DIFTJsonlDataset(demo_data)
    collator = DIFTCollator(processor, 4, ids)
    trainer = DIFTTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                          processing_class=processor)
    batch = collator([dataset[0]])
    model.train()
    for step in (0, 0, 1, 2):  # two micro-batches at step 0: logged once
        trainer.state.global_step = step
        loss = trainer.compute_loss(model, batch)
        assert loss.requires_grad
    logged_steps = [e["step"] for e in trainer.state.log_history if "total_loss" in e]
    assert logged_steps == [0, 2]
    entry = trainer.state.log_history[0]
    assert entry["num_output_images"] == 2 and entry["cos_similarity"] == pytest.approx(1 - entry["sim_loss"])

    with torch.no_grad():
        model.model.language_model.norm.weight[0] = float("nan")
    with caplog.at_level(logging.WARNING, logger="dift.trainer"):
        trainer.state.global_step = 6  # past the checked steps: no check
        trainer.compute_loss(model, batch)
        assert "NaN/Inf" not in caplog.text
        trainer.state.global_step = 5
        trainer.compute_loss(model, batch)
    assert "step 5: 1 parameter tensor(s) hold NaN/Inf" in caplog.text and "language_model.norm.weight" in caplog.text


# ---------------------------------------------------------------------------------------------
# Real training runs on the tiny checkpoint


def train_argv(model, data, out, exp, *extra):
    return ["--exp_name", exp, "--model", str(model), "--data_path", str(data), "--output_dir", str(out),
            "--warmup_steps", "0", "--logging_steps", "1", *extra]


def logged(state_file, key="total_loss"):
    history = json.loads(Path(state_file).read_text())["log_history"]
    return [(e["step"], e[key]) for e in history if key in e]


@pytest.mark.slow
def test_training_lowers_the_loss_and_writes_the_outputs(tiny_base, demo_data, tmp_path):
    """30 steps of `dift/train_single_gpu.sh` (here on CPU) on 4 samples."""
    env = {"MODEL": str(tiny_base), "DATA": str(demo_data), "OUTPUT_DIR": str(tmp_path), "EXP_NAME": "run",
           "LR": "3e-3", "WARMUP_STEPS": "0", "GRAD_ACCUM": "1", "SAVE_STEPS": "1000"}
    run(["bash", str(ROOT / "dift" / "train_single_gpu.sh"), "--max_steps", "30"], env=env)
    run_dir = tmp_path / "run"
    final = run_dir / "checkpoints"
    losses = [v for _, v in logged(final / "trainer_state.json")]
    assert len(losses) == 30 and all(map(torch.isfinite, torch.tensor(losses)))
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4  # one pass over the 4 samples each
    assert last < 0.75 * first, losses

    # Outputs: log.txt with a decoded sample, TensorBoard scalars from step 0, checkpoints that load.
    log_text = (run_dir / "log.txt").read_text()
    assert "step 0 sample" in log_text and "ground truth: <think>" in log_text and "<|latent" not in log_text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    for tag in ("total_loss", "ce_loss", "sim_loss", "cos_similarity", "num_output_images"):
        assert events.Scalars(f"train/{tag}")[0].step == 0
    cos = events.Scalars("train/cos_similarity")[0].value
    assert cos == pytest.approx(1 - events.Scalars("train/sim_loss")[0].value)
    for folder in (final, final / "checkpoint-30"):
        assert "image_processor" in json.loads((folder / "processor_config.json").read_text())
        loaded = load_latent_model(folder)
        assert loaded.latent.latent_size == 4 and loaded.token_ids.pad == 151_665

    # The vision tower (merger included) is frozen; the language model is trained.
    before, after = load_file(tiny_base / "model.safetensors"), load_file(final / "model.safetensors")
    visual = [k for k in before if k.startswith("visual.")]  # saved under the checkpoint-format names
    assert visual and all(torch.equal(before[k], after[k]) for k in visual)
    assert set(before) == set(after)
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])


def max_weight_difference(a: Path, b: Path) -> float:
    """Largest absolute difference between two safetensors files holding the same keys."""
    first, second = load_file(a), load_file(b)
    assert set(first) == set(second)
    return max(float((first[k].double() - second[k].double()).abs().max()) for k in first)


def test_resume_equals_an_uninterrupted_run(tiny_base, demo_data, tmp_path, one_torch_thread):
    """6 steps in one go against 2 steps, a stop, and 4 resumed steps: weights, Adam moments, the
    schedule, the RNG and the data position must all come back (4 samples: the resumed part
    finishes epoch 1 mid-way and crosses into epoch 2). A half-written newer checkpoint is skipped."""
    from dift.train import main

    def argv(exp, *extra):
        return train_argv(tiny_base, demo_data, tmp_path, exp, "--learning_rate", "1e-3", "--save_steps", "2",
                          "--save_total_limit", "3", "--no_gradient_checkpointing", "--max_steps", "6", *extra)

    whole = main(argv("whole"))
    whole_dir = tmp_path / "whole" / "checkpoints"
    assert sorted(p.name for p in whole_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert all(is_complete_checkpoint(p) for p in whole_dir.glob("checkpoint-*"))

    # The "stopped" run: its step-2 checkpoint, and a step-4 one cut short while being written.
    resumed_dir = tmp_path / "resumed" / "checkpoints"
    resumed_dir.mkdir(parents=True)
    shutil.copytree(whole_dir / "checkpoint-2", resumed_dir / "checkpoint-2")
    shutil.copytree(whole_dir / "checkpoint-4", resumed_dir / "checkpoint-4",
                    ignore=shutil.ignore_patterns(COMPLETE_MARKER, "optimizer.pt", "scheduler.pt", "trainer_state.json"))
    weights = resumed_dir / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    base = load_file(tiny_base / "model.safetensors")
    at_step_2 = load_file(resumed_dir / "checkpoint-2" / "model.safetensors")
    assert not torch.equal(base["model.layers.0.mlp.up_proj.weight"], at_step_2["model.layers.0.mlp.up_proj.weight"])

    resumed = main(argv("resumed", "--resume_from_checkpoint", "true"))
    assert resumed.state.global_step == 6
    log_text = (tmp_path / "resumed" / "log.txt").read_text()
    assert "checkpoint-4 is incomplete" in log_text and "resuming from" in log_text and "checkpoint-2" in log_text
    assert "missing keys" not in log_text and "unexpected keys" not in log_text

    difference = max_weight_difference(whole_dir / "model.safetensors", resumed_dir / "model.safetensors")
    print(f"max weight difference, uninterrupted vs resumed: {difference:.3g}")
    assert difference <= 1e-6
    # Losses of the resumed steps are the uninterrupted run's (data position and weights restored).
    whole_losses = dict(logged(whole_dir / "trainer_state.json"))
    resumed_losses = dict(logged(resumed_dir / "trainer_state.json"))
    assert sorted(resumed_losses) == list(range(6))  # steps 0-1 carried in the state, 2-5 trained again
    assert [resumed_losses[s] for s in range(2, 6)] == pytest.approx([whole_losses[s] for s in range(2, 6)],
                                                                      rel=1e-5)
    # Adam moments and the schedule continued, not restarted.
    assert resumed.lr_scheduler.get_last_lr() == whole.lr_scheduler.get_last_lr()
    whole_state, resumed_state = whole.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert whole_state.keys() == resumed_state.keys()
    for key, state in whole_state.items():
        assert int(state["step"]) == int(resumed_state[key]["step"]) == 6
        torch.testing.assert_close(resumed_state[key]["exp_avg_sq"], state["exp_avg_sq"], rtol=1e-5, atol=1e-12)


@pytest.mark.slow
def test_two_process_deepspeed_zero2_on_cpu(tiny_base, demo_data, tmp_path):
    """`dift/train_cpu.sh`: torchrun, 2 CPU processes, DeepSpeed ZeRO-2 over gloo."""
    env = {"MODEL": str(tiny_base), "DATA": str(demo_data), "OUTPUT_DIR": str(tmp_path), "EXP_NAME": "zero2",
           "SAVE_STEPS": "2"}
    run(["bash", str(ROOT / "dift" / "train_cpu.sh"), "--max_steps", "2", "--no_gradient_checkpointing"], env=env)
    final = tmp_path / "zero2" / "checkpoints"
    step = final / "checkpoint-2"
    assert "2 process(es)" in (tmp_path / "zero2" / "log.txt").read_text()
    # DeepSpeed's own checkpoint: the ZeRO-2 optimizer partitions of both ranks.
    assert len(list((step / "global_step2").glob("*zero_pp_rank_*_optim_states.pt"))) == 2
    assert [s for s, _ in logged(final / "trainer_state.json", "loss")] == [1, 2]
    for folder in (final, step):
        loaded = load_latent_model(folder)
        assert loaded.latent.latent_size == 4
    # The inference CLI answers from the DeepSpeed run's final checkpoint.
    frames = demo_data.parent / "frames" / "demo_00000"
    out = run([sys.executable, "-m", "dift.inference", "--model_path", str(final), "--image_dir", str(frames),
               "--question", "Which way?\n\nA. Left\nB. Right", "--greedy", "--max_new_tokens", "8"])
    assert out.stdout.rstrip("\n").split("\n")[-1].startswith("Answer: ")
