"""The copy drafter: it follows the source, completes markup, and guesses the mentions a model marks.

Drafts never change what the decoder outputs (tests/test_decoding.py), only how many tokens a pass
commits. `passes` replays decoding against a known output (an oracle model) to count the passes a
drafter needs: the number `copy_decode` would run for a model that writes that output.
"""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import tiny_model, tiny_tokenizer

from onegen.drafting import CLOSE_RUN, CopyDrafter, _strip_markers, mark_names, mention_end, names
from onegen.model import add_onegen_tokens
from onegen.tokens import MENTION_OPEN, mark

K = 16
TEXT = ("Albert Einstein was born in Ulm and later worked in the United States. "
        "On Friday Leonardo da Vinci met C. Lewis of the U.S. Army in Paris, near the Eiffel Tower.")


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = tiny_tokenizer()
    add_onegen_tokens(tiny_model(len(tokenizer)), tokenizer)
    return tokenizer


def _marked(text, spans):
    """`text` with `mark(...)` around each (start, length) span."""
    out, at = [], 0
    for start, n in spans:
        out += [text[at:start], mark(text[start : start + n])]
        at = start + n
    return "".join(out + [text[at:]])


def passes(drafter, target, k=K):
    """Verify passes to write `target` (token ids) when the model's greedy choice is always the target's."""
    done = count = 0
    while done < len(target):
        draft = drafter.draft(0, target[:done], k)
        accepted = next((i for i, (d, t) in enumerate(zip(draft, target[done:])) if d != t), min(len(draft), len(target) - done))
        done += accepted + 1
        count += 1
    return count


def test_names_are_capitalised_runs_with_particles_and_initials():
    found = [TEXT[i : i + n] for i, n in names(TEXT)]
    assert found == ["Albert Einstein", "Ulm", "United States", "Leonardo da Vinci", "C. Lewis", "U.S. Army", "Paris",
                     "Eiffel Tower"]  # not `On`, `Friday`, nor `The` of a sentence start


def test_copy_drafter_completes_markup_and_follows_the_source(tokenizer):
    source = "Germany beat France in Paris on Sunday."
    drafter = CopyDrafter(tokenizer, [source] * 3, guess_names=False)

    def draft_text(row, output, k=12):
        return tokenizer.decode(drafter.draft(row, tokenizer(output, add_special_tokens=False).input_ids, k))

    assert draft_text(0, "Germany beat <MENTION>France</").startswith(CLOSE_RUN[2:] + " in Paris")
    assert draft_text(1, "Germany beat <").startswith("MENTION>France in")
    assert draft_text(2, "Germany beats France in").startswith(" Paris on Sunday")  # a changed word: re-found


def test_copy_drafter_falls_back_to_prompt_lookup_off_the_source(tokenizer):
    drafter = CopyDrafter(tokenizer, ["Germany beat France."], [tokenizer("Here is the text:").input_ids])
    preamble = tokenizer("Here is the annotation. Here is the", add_special_tokens=False).input_ids
    assert tokenizer.decode(drafter.draft(0, preamble, 3)).startswith(" annotation.")


def test_guessed_mentions_cost_no_pass_when_the_model_marks_the_names(tokenizer):
    target = tokenizer(_marked(TEXT, list(names(TEXT))) + tokenizer.eos_token, add_special_tokens=False).input_ids
    guessing = passes(CopyDrafter(tokenizer, [TEXT]), target)
    copying = passes(CopyDrafter(tokenizer, [TEXT], guess_names=False, end=""), target)
    assert guessing <= len(target) // (K + 1) + 2  # nearly every pass commits a full draft
    assert copying >= 2 * 8  # without guesses, each of the 8 mentions ends a pass at its start and its end


def test_a_wrong_end_guess_costs_the_pass_the_right_start_guess_saved(tokenizer):
    text = "The Bank of England raised rates."
    start = text.index("Bank")
    target = tokenizer(_marked(text, [(start, len("Bank of England"))]) + tokenizer.eos_token, add_special_tokens=False).input_ids
    guessing = passes(CopyDrafter(tokenizer, [text]), target)
    copying = passes(CopyDrafter(tokenizer, [text], guess_names=False), target)
    # the start guess saves the pass that copying loses at `<MENTION>`; the end guess (`Bank`) costs one
    assert guessing == copying == 3


def test_names_the_model_leaves_unmarked_are_not_guessed_again(tokenizer):
    text = "Paris is big. Paris is old. London is far."
    drafter = CopyDrafter(tokenizer, [text])
    output = tokenizer("Paris is big.", add_special_tokens=False).input_ids
    draft = tokenizer.decode(drafter.draft(0, output, 30))
    assert draft.startswith(" Paris is old. " + MENTION_OPEN + "London")


def test_a_model_that_marks_nothing_stops_the_guesses(tokenizer):
    text = " ".join(f"{name} met Tom." for name in ("Anna", "Bert", "Carl", "Dora", "Emil", "Fritz", "Gina"))
    target = tokenizer(text + tokenizer.eos_token, add_special_tokens=False).input_ids
    guessing = passes(CopyDrafter(tokenizer, [text]), target)
    copying = passes(CopyDrafter(tokenizer, [text], guess_names=False), target)
    assert guessing <= copying + 3  # a few wrong guesses, then plain copies


def _draft_after(tokenizer, drafter, output, k=24):
    """The drafter's text after each prefix of `output` was the output (the drafter follows every step)."""
    ids = tokenizer(output, add_special_tokens=False).input_ids
    for n in range(1, len(ids)):
        drafter.draft(0, ids[:n], k)
    return tokenizer.decode(drafter.draft(0, ids, k))


def test_a_mention_starting_on_a_function_word_is_guessed_to_end_after_its_name():
    text = "London ( The Oval ) : Warwickshire 195"
    assert text[text.index("The") : mention_end(text, text.index("The"))] == "The Oval"
    assert text[text.index("War") : mention_end(text, text.index("War"))] == "Warwickshire"
    assert text[text.index("195") : mention_end(text, text.index("195"))] == "195"  # no name: the word


def test_after_a_name_the_model_wrote_in_place_of_the_source_s_the_copy_goes_on(tokenizer):
    source = "The 26-year-old , who joined Newcastle for 15 million pounds , scored twice ."
    drafter = CopyDrafter(tokenizer, [source])
    head = "The 26-year-old , who joined <MENTION>Nova Scotia"
    # inside the mention: a name of the model's own, so the guess is that it closes, then the source goes on
    assert _draft_after(tokenizer, drafter, head).startswith(CLOSE_RUN + " for 15 million")
    drafter = CopyDrafter(tokenizer, [source])
    assert _draft_after(tokenizer, drafter, head + CLOSE_RUN).startswith(" for 15 million pounds")


def test_a_name_copied_from_elsewhere_in_the_source_is_followed_there(tokenizer):
    source = "Hove : Sussex 363 , Lancashire 197-8\nPortsmouth : Middlesex 199 , Hampshire 232"
    drafter = CopyDrafter(tokenizer, [source])
    draft = _draft_after(tokenizer, drafter, "Hove : <MENTION>Sussex</MENTION>[LK][_CONTINUE_] 363 , <MENTION>Hamp")
    assert draft.startswith("shire" + CLOSE_RUN + " 232")


def test_a_changed_number_does_not_lose_the_copy(tokenizer):
    source = "Surrey 429-7 ( C. Lewis 80 not out , M. Butcher 70 )"
    drafter = CopyDrafter(tokenizer, [source], guess_names=False)
    assert _draft_after(tokenizer, drafter, "Surrey 439").startswith("-7 ( C. Lewis 80")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="Ab .,'<>\nöÉ-", max_size=60), st.text(alphabet="Ab .,'\nÉ-", max_size=60), st.data())
def test_guesses_only_add_markup(output, source, data):
    offset = data.draw(st.integers(0, len(source)))
    rest = source[offset:]
    assert _strip_markers(mark_names(output, source, offset, rest)) == rest
