"""The DIFT collator (spec model_and_dift.md section 3): labels, masks, latent blocks, pixels, and
equality with the original's three-pass, per-token algorithm."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dift.collator import DIFTCollator, assistant_token_id, build_labels, check_latent_blocks
from dift.core.checkpoint import load_processor
from dift.core.latent_ops import IGNORE_INDEX, build_image_out_mask
from dift.core.tokens import LatentTokenIds
from scripts.bench_collator import baseline_collate
from scripts.synthetic_media import moving_square_frames

LATENT = 4


@pytest.fixture(scope="module")
def proc(tiny_latent):
    processor = load_processor(tiny_latent)
    return processor, LatentTokenIds.from_tokenizer(processor.tokenizer)


def _samples():
    frames = moving_square_frames(4, direction="left")
    return [
        dict(visual=frames, question="Where does the square go?\n\nA. Left\nB. Right", source="a.jsonl:1",
             text_output="<think>From <output_image> to <output_image> it moves left.</think><answer>A</answer>",
             helper_images=[frames[0], frames[3].resize((84, 56))]),
        dict(visual=frames[1], question="What is it?", source="a.jsonl:2",
             text_output="<think><output_image></think><answer>B</answer>",
             helper_images=[frames[2].resize((56, 56))]),
    ]


def test_batch_follows_the_spec_rules(proc):
    processor, ids = proc
    tok = processor.tokenizer
    newline = tok.encode("\n", add_special_tokens=False)[0]
    assistant = assistant_token_id(tok)
    batch = DIFTCollator(processor, LATENT, ids)(_samples())
    input_ids, labels, mask = batch["input_ids"], batch["labels"], batch["image_out_mask"]
    n_helpers = [2, 1]
    for row in range(2):
        r, lab = input_ids[row].tolist(), labels[row].tolist()
        length = int(batch["attention_mask"][row].sum())
        assert batch["attention_mask"][row, :length].all() and not batch["attention_mask"][row, length:].any()
        assert all(t == ids.text_pad for t in r[length:]) and all(x == IGNORE_INDEX for x in lab[length:])
        a = next(i for i in range(len(r) - 1) if r[i] == ids.im_start and r[i + 1] == assistant)
        assert all(x == IGNORE_INDEX for x in lab[: a + 2])  # up to and including `<|im_start|>assistant`
        assert r[a + 2] == newline and lab[a + 2] == newline  # the newline after `assistant` is supervised
        assert r[length - 2:length] == [ids.im_end, newline] and lab[length - 2:length] == [ids.im_end, newline]
        for j in range(a + 2, length):  # every assistant token but the latent pads is supervised
            assert lab[j] == (IGNORE_INDEX if r[j] == ids.pad else r[j])
        starts = [j for j in range(length) if r[j] == ids.start]
        assert len(starts) == n_helpers[row] and all(lab[j] == ids.start for j in starts)
        for j in starts:  # exactly latent_size pads, then the end token
            assert r[j + 1:j + 1 + LATENT] == [ids.pad] * LATENT and r[j + 1 + LATENT] == ids.end
            assert lab[j + 1 + LATENT] == ids.end
        assert mask[row].tolist() == [int(t == ids.pad) for t in r]
        assert int(mask[row].sum()) == LATENT * n_helpers[row]
    assert batch["second_per_grid_ts"].tolist() == [2.0]  # 1 fps frames, one video in the batch
    assert batch["video_grid_thw"].shape == (1, 3) and batch["image_grid_thw"].shape == (1, 3)
    assert (batch["mm_token_type_ids"][0] == 2).sum() == batch["video_grid_thw"][0].prod() // 4
    assert (batch["mm_token_type_ids"][1] == 1).sum() == batch["image_grid_thw"][0].prod() // 4
    grids = batch["image_grid_thw_latent"]
    assert grids.shape == (3, 3) and batch["pixel_values_latent"].shape[0] == int(grids.prod(dim=1).sum())
    assert grids[2].tolist() == [1, 4, 4]  # the third helper image is 56x56


def test_matches_the_original_three_pass_algorithm(proc):
    """Same tensors as the original's three processor passes + per-token loops (the benchmark's baseline)."""
    processor, ids = proc
    frames = moving_square_frames(2)
    samples = [dict(s, visual=frames) for s in _samples()]  # the baseline handles videos only
    ours = DIFTCollator(processor, LATENT, ids)(samples)
    theirs = baseline_collate(processor, samples, LATENT, ids, assistant_token_id(processor.tokenizer))
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)


def test_special_tokens_in_the_text_are_a_clear_error(proc):
    processor, ids = proc
    sample = _samples()[1]
    sample["question"] = "What is <|latent_start|> this?"
    with pytest.raises(ValueError, match=r"^a\.jsonl:2: expected 1 latent block"):
        DIFTCollator(processor, LATENT, ids)([sample])


# ---------------------------------------------------------------------------------------------
# The vectorised builders against straightforward loops, on random id tensors.

IM_START, ASSISTANT, TEXT_PAD, PAD, START, END, OTHER = 1, 2, 3, 4, 5, 6, 7
IDS = LatentTokenIds(pad=PAD, start=START, end=END, im_start=IM_START, im_end=8, text_pad=TEXT_PAD, image_pad=9,
                     video_pad=10, vision_start=11, vision_end=12)


def loop_labels(ids: list[list[int]]) -> list[list[int]]:
    out = []
    for row in ids:
        first = None
        for j in range(len(row) - 1):
            if row[j] == IM_START and row[j + 1] == ASSISTANT:
                first = j + 1
                break
        out.append([IGNORE_INDEX if first is None or j <= first or t in (TEXT_PAD, PAD) else t
                    for j, t in enumerate(row)])
    return out


def loop_image_out_mask(ids: list[list[int]]) -> list[list[int]]:
    out = []
    for row in ids:
        seen, m = False, []
        for t in row:
            seen = seen or t == START
            m.append(int(seen and t == PAD))
        out.append(m)
    return out


def loop_blocks_ok(row: list[int], n_blocks: int, latent: int) -> bool:
    starts = [j for j, t in enumerate(row) if t == START]
    well_formed = all(row[j + 1:j + 1 + latent] == [PAD] * latent and j + 1 + latent < len(row)
                      and row[j + 1 + latent] == END for j in starts)
    return (well_formed and len(starts) == n_blocks and row.count(END) == n_blocks
            and row.count(PAD) == n_blocks * latent)


id_rows = st.integers(1, 4).flatmap(lambda b: st.integers(1, 24).flatmap(
    lambda t: st.lists(st.lists(st.sampled_from([IM_START, ASSISTANT, TEXT_PAD, PAD, START, END, OTHER]),
                                min_size=t, max_size=t), min_size=b, max_size=b)))


@settings(max_examples=300, deadline=None)
@given(id_rows)
def test_label_and_mask_builders_equal_loops(rows):
    ids = torch.tensor(rows)
    assert build_labels(ids, IM_START, ASSISTANT, (TEXT_PAD, PAD)).tolist() == loop_labels(rows)
    assert build_image_out_mask(ids, PAD, START).tolist() == loop_image_out_mask(rows)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 3), st.lists(st.tuples(st.integers(0, 3), st.lists(st.sampled_from([OTHER, PAD, START, END]),
                                                                          max_size=4)), min_size=1, max_size=3),
       st.integers(0, 2))
def test_latent_block_check_equals_loop(latent, specs, noise_at):
    """Rows built from blocks (sometimes corrupted by stray latent tokens) against the loop check."""
    rows, counts = [], []
    for n_blocks, noise in specs:
        row = [OTHER, IM_START, ASSISTANT]
        for _ in range(n_blocks):
            row += [START] + [PAD] * latent + [END, OTHER]
        row[noise_at:noise_at] = noise
        rows.append(row)
        counts.append(n_blocks)
    width = max(len(r) for r in rows)
    rows = [r + [TEXT_PAD] * (width - len(r)) for r in rows]
    expected = all(loop_blocks_ok(r, n, latent) for r, n in zip(rows, counts))
    try:
        check_latent_blocks(torch.tensor(rows), IDS, latent, torch.tensor(counts), [f"s{i}" for i in range(len(rows))])
        ok = True
    except ValueError:
        ok = False
    assert ok == expected
