"""The conversation format of 4DThinker: the output-format suffix, question text, and the chat
messages and prompt text for training, RL, evaluation and inference. One copy of each rule.

A sample is a two-turn chat (spec model_and_dift.md section 2). User: the video (its frames as
one `video` item) or a single image, then question + suffix. Assistant: the chain of thought, in
which every `<output_image>` is a latent block `<|latent_start|>` K x `<|latent_pad|>` `<|latent_end|>`.
"""

from __future__ import annotations

from collections.abc import Sequence

from .tokens import IM_START, LATENT_END, LATENT_PAD, LATENT_START, OUTPUT_IMAGE_PLACEHOLDER

# The original has two diverging copies (SFT and RL, the RL one with a `</think>...</think>` typo);
# this is the SFT copy, used everywhere.
OUTPUT_FORMAT_SUFFIX = (
    "\nFirst, think about the reasoning process with mental imagery of the relevant object or region, "
    "then provide the user with the answer. Put the reasoning in <think>...</think> and only the final "
    "answer in <answer>...</answer>, e.g. <think> reasoning process (with mental imagery as needed) "
    "</think><answer> answer here </answer>."
)
# Generation prompts end with a bare `<|im_start|>assistant` (no newline), as the original's
# evaluation and inference do; the newline after `assistant` is a supervised token in training.
GENERATION_PROMPT = f"{IM_START}assistant"


def question_with_options(question: str, options: Sequence[str] | None = None) -> str:
    """Question, a blank line, then one option per line (only if there are options). Nothing is
    stripped: the original concatenated the raw strings, so the model sees the text as the file has it."""
    options = [str(o) for o in (options or [])]
    return f"{question}\n\n" + "\n".join(options) if options else str(question)


def user_message(visual, question: str, add_suffix: bool = True) -> dict:
    """The user turn: a video (a list of frames) or a single image, then the question (+ suffix)."""
    if isinstance(visual, (list, tuple)):
        item = {"type": "video", "video": list(visual)}
    else:
        item = {"type": "image", "image": visual}
    text = question + OUTPUT_FORMAT_SUFFIX if add_suffix else question
    return {"role": "user", "content": [item, {"type": "text", "text": text}]}


def latent_block(latent_size: int) -> str:
    return LATENT_START + LATENT_PAD * latent_size + LATENT_END


def count_output_images(text_output: str) -> int:
    return text_output.count(OUTPUT_IMAGE_PLACEHOLDER)


def assistant_text_with_latents(text_output: str, latent_size: int) -> str:
    """The chain of thought with every `<output_image>` replaced by a latent block."""
    return text_output.replace(OUTPUT_IMAGE_PLACEHOLDER, latent_block(latent_size))


def render_user_turn(processor, visual, question: str) -> str:
    """System + user turns as the chat template renders them (no generation prompt)."""
    return processor.apply_chat_template([user_message(visual, question)], tokenize=False,
                                         add_generation_prompt=False)


def render_generation_prompt(processor, visual, question: str) -> str:
    """The prompt text a model generates from: user turn, then a bare `<|im_start|>assistant`."""
    return render_user_turn(processor, visual, question) + GENERATION_PROMPT


def render_training_text(processor, visual, question: str, text_output: str, latent_size: int) -> str:
    """The full DIFT training text: user turn + assistant turn whose helper images are latent blocks."""
    messages = [user_message(visual, question),
                {"role": "assistant", "content": assistant_text_with_latents(text_output, latent_size)}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
