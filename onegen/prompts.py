"""Prompt texts of OneGen entity linking (DESIGN section 2): the mention-detection prompt and the entity sequence.

Tokenisation contract shared by training and inference:
- `mention_prompt` returns the complete prompt string, BOS included where the chat template (or the
  Llama-2 form) has one: tokenise it with `add_special_tokens=False`.
- `entity_input_ids` tokenises an entity sequence with the tokenizer's own special tokens
  (`tokenizer(seq).input_ids`, BOS for Llama tokenizers, none for SmolLM2); the embedding is read at
  its last token, the final `[SE]`.

System prompt choice: `mention_prompt` passes no system message, so a template with a default system
prompt (SmolLM2, Qwen2) uses it. That is the context each instruct model was tuned with, the official
Llama-2 prompt has no system message either, and the instruction itself stays in the user turn.
"""
from __future__ import annotations

from onegen.tokens import ENTITY, MENTION_CLOSE, MENTION_OPEN

INPUT_SLOT = "{input}"  # where the text goes in INSTRUCTION (plain replace: the instruction has other braces)

# The official instruction, verbatim (zjunlp/OneGen entity linking), with the text slot.
INSTRUCTION = (
    "You are good at mention detection. Identify and extract mentions of entities from the text. "
    "Please output the original text with annotations. Here, the annotation for each mention should be "
    f"formatted as `{MENTION_OPEN}{{mention in text}}{MENTION_CLOSE}` when displayed. \n\nTEST TEXT:\n{INPUT_SLOT}"
)

# Every entity sequence starts with this text; the entity title follows it directly.
ENTITY_PREFIX = (
    f"Represent the entity based on its description and output it after the '{ENTITY}' token.\n"
    "The description of "
)


def instruction(text: str) -> str:
    """The official instruction with `text` in its slot."""
    return INSTRUCTION.replace(INPUT_SLOT, text)


def mention_prompt(tokenizer, text: str) -> str:
    """The mention-detection prompt for `text`: one user turn in the tokenizer's chat template plus the
    generation prompt; `[INST] ... [/INST]` (Llama-2 chat, as the official code) when it has no template."""
    user = instruction(text)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    return f"{tokenizer.bos_token or ''}[INST] {user} [/INST]"


def entity_sequence(title: str, description: str) -> str:
    """The document-side sequence of one entity, ending in `[SE]`; an empty description is replaced by the title."""
    description = description.strip() or title
    return f"{ENTITY_PREFIX}{title} is as follows:\n{description}{ENTITY}"


def entity_input_ids(tokenizer, title: str, description: str, max_length: int | None = None) -> list[int]:
    """Token ids of `entity_sequence(title, description)` as training and `OneGen.embed_entities` read them;
    beyond `max_length` tokens the head is kept and the last token (the final `[SE]`) re-attached."""
    ids = tokenizer(entity_sequence(title, description)).input_ids
    if max_length is not None and len(ids) > max_length:
        ids = ids[: max_length - 1] + ids[-1:]
    return ids
