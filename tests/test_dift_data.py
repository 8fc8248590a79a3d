"""dift_data.jsonl reading (spec model_and_dift.md section 7) and the embedded demo data."""

import json
import logging
import pickle
import re

import pytest
from PIL import Image

from dift.collator import DIFTCollator
from dift.core.checkpoint import load_processor
from dift.core.conversation import OUTPUT_FORMAT_SUFFIX
from dift.core.tokens import LatentTokenIds
from dift.data import SKIPPED_RECORDS, DIFTDataError, DIFTJsonlDataset
from scripts.make_demo_dift_data import write_demo_data


@pytest.fixture
def images(tmp_path):
    """Six frames and two helper images under tmp_path/img/."""
    folder = tmp_path / "img"
    folder.mkdir()
    for i in range(6):
        Image.new("RGB", (64 + i, 48), (40 * i, 20, 200)).save(folder / f"frame_{i:04d}.jpg")
    for k in range(2):
        Image.new("RGB", (56, 56), (0, 200, 40 * k)).save(folder / f"helper_{k}.png")
    return folder


def good_record(i=0, **changes):
    record = dict(id=f"s{i}", image_input=[f"img/frame_{j:04d}.jpg" for j in range(6)],
                  image_output=["img/helper_0.png", "img/helper_1.png"], text_input="Which way?\n\nA. Left\nB. Right",
                  text_output="<think>From <output_image> to <output_image> it moves.</think><answer>A</answer>")
    record.update(changes)
    return record


def write_jsonl(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_items_are_what_the_collator_takes(tmp_path, images, tiny_latent):
    path = write_jsonl(tmp_path / "data.jsonl", [good_record(0), "", good_record(1, text_input="Q?" + OUTPUT_FORMAT_SUFFIX)])
    ds = DIFTJsonlDataset(path, max_frames=4)
    assert len(ds) == 2
    item = ds[0]
    assert item["id"] == "s0" and item["source"] == f"{path}:1"
    assert len(item["visual"]) == 4 and item["visual"][1].size == (65, 48)  # uniform subsample of 6: 0, 1, 3, 5
    assert [im.mode for im in item["helper_images"]] == ["RGB", "RGB"]
    assert ds[1]["source"] == f"{path}:3"  # blank lines are not records, line numbers stay true
    assert ds[1]["question"] == "Q?"  # a suffix already in the data is not added twice
    processor = load_processor(tiny_latent)
    batch = DIFTCollator(processor, 4, LatentTokenIds.from_tokenizer(processor.tokenizer))([ds[0], ds[1]])
    assert batch["image_grid_thw_latent"].shape[0] == 4 and int(batch["image_out_mask"].sum()) == 16


def test_single_paths_absolute_paths_and_image_root(tmp_path, images):
    data_dir = tmp_path / "elsewhere"
    data_dir.mkdir()
    record = good_record(image_input="img/frame_0000.jpg", image_output=str(images / "helper_0.png"),
                         text_output="<think><output_image></think><answer>B</answer>")
    path = write_jsonl(data_dir / "data.jsonl", [record])
    with pytest.raises(DIFTDataError, match="image not found"):
        DIFTJsonlDataset(path)  # relative to the JSONL's folder by default
    item = DIFTJsonlDataset(path, image_root=tmp_path)[0]
    assert isinstance(item["visual"], Image.Image) and len(item["helper_images"]) == 1


BAD = {
    "not JSON": '{"id": "x", "image_input": ',
    "missing field": json.dumps({k: v for k, v in good_record().items() if k != "text_output"}),
    "missing image": json.dumps(good_record(image_output=["img/helper_0.png", "img/nope.png"])),
    "output_image mismatch": json.dumps(good_record(image_output=["img/helper_0.png"])),
    "no helper images": json.dumps(good_record(image_output=[], text_output="<answer>A</answer>")),
}
MESSAGES = {"not JSON": "not valid JSON", "missing field": r"missing field\(s\) text_output",
            "missing image": r"image_output image not found: .*nope\.png",
            "output_image mismatch": "text_output has 2 <output_image> but image_output has 1",
            "no helper images": "image_output is empty"}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_each_bad_record_names_file_and_line(tmp_path, images, kind):
    path = write_jsonl(tmp_path / "data.jsonl", [good_record(0), good_record(1), BAD[kind]])
    with pytest.raises(DIFTDataError) as err:
        DIFTJsonlDataset(path)
    message = str(err.value)
    assert "\n" not in message
    assert re.match(rf"^{re.escape(str(path))}:3: {MESSAGES[kind]}", message), message


def test_skip_bad_records_counts_and_reports(tmp_path, images, caplog):
    lines = [good_record(0)] + [BAD[k] for k in sorted(BAD)] + [good_record(1), BAD["not JSON"]]
    path = write_jsonl(tmp_path / "data.jsonl", lines)
    with caplog.at_level(logging.WARNING, logger="dift.data"):
        ds = DIFTJsonlDataset(path, skip_bad_records=True)
    assert len(ds) == 2 and [ds.source(i) for i in range(2)] == [f"{path}:1", f"{path}:7"]
    assert ds.num_skipped == 6 and ds.skipped["not JSON"] == 2
    assert set(ds.skipped) == set(BAD)
    assert "skipped 6 bad record(s) of 8" in caplog.text and f"{path}:2:" in caplog.text


def failure_line(capsys, exit_info) -> str:
    """The one line a failed `python -m dift.train` ends with (exit 1)."""
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1].removeprefix("python -m dift.train: failed: ")


def test_the_cli_stops_on_a_bad_record_with_one_line(tmp_path, images, tiny_base, capsys):
    from dift.train import cli

    path = write_jsonl(tmp_path / "data.jsonl", [good_record(0), BAD["output_image mismatch"]])
    with pytest.raises(SystemExit) as exit_info:
        cli(["--exp_name", "bad", "--model", str(tiny_base), "--data_path", str(path),
             "--output_dir", str(tmp_path / "out")])
    assert failure_line(capsys, exit_info).startswith(f"{path}:2: text_output has 2 <output_image>")


def test_records_are_not_held_in_memory_and_images_load_lazily(tmp_path, images):
    long_cot = "<think>" + "the square moves. " * 200 + "<output_image> <output_image></think><answer>A</answer>"
    path = write_jsonl(tmp_path / "data.jsonl", [good_record(i, text_output=long_cot) for i in range(3000)])
    ds = DIFTJsonlDataset(path, progress=False)
    assert len(ds) == 3000
    # ~11 MB of JSON; the dataset keeps two integers per record.
    assert len(pickle.dumps(ds)) < 60_000 < path.stat().st_size // 100
    assert ds[2999]["text_output"] == long_cot
    (images / "helper_1.png").unlink()  # removed after indexing: the item names its line
    with pytest.raises(DIFTDataError, match=rf"^{re.escape(str(path))}:5: image not found"):
        ds[4]


def test_demo_data_is_valid_and_its_answers_are_right(tmp_path):
    path = write_demo_data(tmp_path / "demo", num_samples=6, seed=3, num_frames=3, size=84)
    ds = DIFTJsonlDataset(path)
    assert len(ds) == 6
    for i in range(len(ds)):
        record = ds.record(i)
        letter = re.search(r"<answer>([A-D])</answer>$", record["text_output"]).group(1)
        direction = re.search(r"so it moves (\w+)\.</think>", record["text_output"]).group(1)
        option = re.search(rf"^{letter}\. (\w+)$", record["text_input"], re.M).group(1)
        assert option.lower() == direction
        assert record["text_output"].count("<output_image>") == len(record["image_output"]) == 2
    item = ds[0]
    assert len(item["visual"]) == 3 and item["visual"][0].size == (84, 84)
    again = write_demo_data(tmp_path / "again", num_samples=6, seed=3, num_frames=3, size=84)
    assert again.read_text() == path.read_text()  # deterministic for a seed


# ---------------------------------------------------------------------------------------------
# Images that exist but cannot be decoded (indexing only checks that the files are there)


def truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def test_a_corrupt_image_stops_at_its_line_or_is_replaced_and_counted(tmp_path, images, tiny_latent):
    Image.effect_noise((64, 48), 60).convert("RGB").save(images / "noisy.jpg")
    path = write_jsonl(tmp_path / "data.jsonl", [good_record(0), good_record(1, image_input=["img/noisy.jpg"]),
                                                 good_record(2)])
    truncate(images / "noisy.jpg")
    with pytest.raises(DIFTDataError, match=rf"^{re.escape(str(path))}:2: cannot read image .*noisy\.jpg"):
        DIFTJsonlDataset(path)[1]

    ds = DIFTJsonlDataset(path, skip_bad_records=True)
    item = ds[1]
    assert item["id"] == "s2"  # the next loadable record takes its place
    [(source, message)] = item[SKIPPED_RECORDS]
    assert source == f"{path}:2" and message.startswith(f"{path}:2: cannot read image")
    assert SKIPPED_RECORDS not in ds[1]  # known now: passed over without a second report
    processor = load_processor(tiny_latent)
    batch = DIFTCollator(processor, 4, LatentTokenIds.from_tokenizer(processor.tokenizer))([ds[0], item])
    assert batch[SKIPPED_RECORDS] == [(source, message)]
    ds.note_unreadable(batch[SKIPPED_RECORDS])
    ds.note_unreadable(batch[SKIPPED_RECORDS])  # counted once per record
    assert ds.num_skipped == 1 and ds.num_records == 3
    assert ds.skip_summary().startswith(f"{path}: skipped 1 bad record(s) of 3 (1 unreadable image); first: {path}:2:")


def test_max_skip_fraction_decides_when_skipping_fails(tmp_path, images):
    path = write_jsonl(tmp_path / "data.jsonl", [good_record(0), BAD["not JSON"], good_record(2), good_record(3)])
    with pytest.raises(DIFTDataError, match=r"1 of 4 records skipped, more than --max_skip_fraction 0.2 allows"):
        DIFTJsonlDataset(path, skip_bad_records=True, max_skip_fraction=0.2)
    DIFTJsonlDataset(path, skip_bad_records=True, max_skip_fraction=0.25)  # 1 of 4: within
    ds = DIFTJsonlDataset(path, skip_bad_records=True, max_skip_fraction=0.5)
    ds.note_unreadable([(ds.source(0), f"{ds.source(0)}: cannot read image")])  # 2 of 4: within
    with pytest.raises(DIFTDataError, match=rf"^{re.escape(str(path))}: 3 of 4 records skipped, more than "
                                            r"--max_skip_fraction 0.5 allows \(first: .*:2: not valid JSON"):
        ds.note_unreadable([(ds.source(1), f"{ds.source(1)}: cannot read image")])
    # The default fails only when every record was skipped.
    for i in range(3):
        truncate(images / f"frame_{i:04d}.jpg")
    everything = DIFTJsonlDataset(path, skip_bad_records=True)
    with pytest.raises(DIFTDataError, match="the images of none of the 3 records could be loaded"):
        everything[0]
    with pytest.raises(ValueError, match="max_skip_fraction"):
        DIFTJsonlDataset(path, max_skip_fraction=1.5)


def test_training_skips_a_corrupt_image_and_says_how_many(tmp_path, tiny_base, one_torch_thread, capsys):
    from dift.train import cli, main

    data = write_demo_data(tmp_path / "data", num_samples=4, seed=0, num_frames=2, size=56)
    truncate(data.parent / "helpers" / "demo_00001_1.jpg")

    def argv(exp, *extra):
        return ["--exp_name", exp, "--model", str(tiny_base), "--data_path", str(data), "--output_dir",
                str(tmp_path / "out"), "--max_steps", "4", "--save_steps", "100", "--no_gradient_checkpointing", *extra]

    with pytest.raises(SystemExit) as stopped:
        cli(argv("strict"))
    assert failure_line(capsys, stopped).startswith(f"{data}:2: cannot read image")

    trainer = main(argv("skipping", "--skip_bad_records"))
    assert trainer.state.global_step == 4 and trainer.train_dataset.num_skipped == 1
    log_text = (tmp_path / "out" / "skipping" / "log.txt").read_text()
    assert f"{data}: skipped 1 bad record(s) of 4 (1 unreadable image); first: {data}:2: cannot read" in log_text

    with pytest.raises(SystemExit) as over_budget:
        cli(argv("budget", "--skip_bad_records", "--max_skip_fraction", "0.2"))
    assert failure_line(capsys, over_budget).startswith(
        f"{data}: 1 of 4 records skipped, more than --max_skip_fraction 0.2")
