"""Prompt texts: the official instruction in the chat template, and the entity sequence."""
import copy

from tiny import tiny_tokenizer

from onegen.prompts import ENTITY_PREFIX, INSTRUCTION, entity_input_ids, entity_sequence, mention_prompt
from onegen.tokens import ENTITY, MENTION_CLOSE, MENTION_OPEN, SPECIAL_TOKENS


def test_instruction_is_the_official_text():
    assert INSTRUCTION.startswith("You are good at mention detection. Identify and extract mentions of entities")
    assert f"`{MENTION_OPEN}{{mention in text}}{MENTION_CLOSE}` when displayed. \n\nTEST TEXT:\n{{input}}" in INSTRUCTION


def test_mention_prompt_is_one_user_turn_of_the_chat_template():
    tokenizer = tiny_tokenizer()
    text = "Germany beat {input} Brazil 7-1 in Belo Horizonte."  # braces in the text stay verbatim
    prompt = mention_prompt(tokenizer, text)
    assert prompt.count("<|im_start|>user\n") == 1
    assert "\n\nTEST TEXT:\n" + text + "<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")  # generation prompt
    assert "{input}" not in prompt.replace(text, "")


def test_mention_prompt_without_chat_template_uses_llama2_form():
    tokenizer = copy.deepcopy(tiny_tokenizer())
    tokenizer.chat_template = None
    prompt = mention_prompt(tokenizer, "Paris is nice.")
    assert prompt == f"{tokenizer.bos_token}[INST] {INSTRUCTION.replace('{input}', 'Paris is nice.')} [/INST]"


def test_entity_sequence_form():
    seq = entity_sequence("Paris", "Capital of France")
    assert seq == (
        f"Represent the entity based on its description and output it after the '{ENTITY}' token.\n"
        f"The description of Paris is as follows:\nCapital of France{ENTITY}"
    )
    assert seq.startswith(ENTITY_PREFIX)
    assert entity_sequence("Paris", "  ").endswith("as follows:\nParis" + ENTITY)  # empty description -> title


def test_entity_ids_contain_two_entity_tokens_and_end_with_one():
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens(list(SPECIAL_TOKENS), special_tokens=True)
    se = tokenizer.convert_tokens_to_ids(ENTITY)
    ids = entity_input_ids(tokenizer, "Paris", "Capital of France")
    assert ids.count(se) == 2  # the literal '[SE]' of the instruction is the special token too
    assert ids[-1] == se
    long = entity_input_ids(tokenizer, "Paris", "word " * 300)
    short = entity_input_ids(tokenizer, "Paris", "word " * 300, max_length=40)
    assert len(long) > 40 and short == long[:39] + [se]
