"""The copy rule: an output is its source, byte for byte, with mention markup; both decoders follow it alike."""
import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from onegen.constrain import CopyRule, token_bytes
from onegen.decoding import DecodeStats, copy_decode, greedy_decode
from onegen.drafting import CopyDrafter
from onegen.model import add_onegen_tokens
from onegen.prompts import mention_prompt
from onegen.tokens import ENTITY, MENTION_CLOSE, MENTION_OPEN, mark

SOURCE = "Björn Borg beat Payne Stewart in Zürich ( Switzerland ) .\n"
MENTIONS = ["Björn Borg", "Payne Stewart", "Zürich", "Switzerland"]
MAX_NEW = 120
TEXTS = ["Germany beat France 2-1 in Paris.", "Peter Blackburn reports from Brussels on Thursday.", "Zürich , 1996-08-30"]


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = tiny_tokenizer()
    add_onegen_tokens(tiny_model(len(tokenizer)), tokenizer)
    return tokenizer


@pytest.fixture(scope="module")
def rule(tokenizer):
    return CopyRule(token_bytes(tokenizer), [SOURCE], _id(tokenizer, "[LK]"), _id(tokenizer, "[_CONTINUE_]"),
                    {tokenizer.eos_token_id})


def _id(tokenizer, token):
    return tokenizer.convert_tokens_to_ids(token)


def _marked(text=SOURCE, mentions=MENTIONS):
    for m in mentions:
        text = text.replace(m, mark(m), 1)
    return text


def _walk(rule, tokens):
    """The rule's state after `tokens`, or None once one is refused."""
    state = rule.start(0)
    for token in tokens:
        state = rule.advance(state, token)
        if state is None:
            return None
    return state


def test_token_bytes_spell_any_text_and_added_tokens_none(tokenizer):
    table = token_bytes(tokenizer)
    text = "Ça va , Björn ?\n\t東京 1996-08-30 <b>"
    assert b"".join(table[i] for i in tokenizer(text, add_special_tokens=False).input_ids) == text.encode()
    for token in ("[LK]", "[SE]", "[_CONTINUE_]", tokenizer.eos_token):
        assert table[_id(tokenizer, token)] is None


def _sentencepiece_tokenizer():
    """A Llama-2-style vocabulary: `▁` for a space, `<0xNN>` byte fallback, special tokens 0-2."""
    import string

    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{i:02X}>": 3 + i for i in range(256)}}
    for piece in ["\u2581", "\u2581B", "ü"] + list(string.ascii_letters + string.digits):
        vocab[piece] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("\u2581", "B")], byte_fallback=True, unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_token_bytes_read_a_sentencepiece_vocabulary_and_refuse_others(caplog):
    tokenizer = _sentencepiece_tokenizer()
    table = token_bytes(tokenizer)
    text = "Björn Borg , 東京\n"
    assert b"".join(table[i] for i in tokenizer(text, add_special_tokens=False).input_ids) == b" " + text.encode()
    assert table[tokenizer.convert_tokens_to_ids("\u2581B")] == b" B" and table[tokenizer.eos_token_id] is None

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "b": 1, "##orn": 2}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    other = PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]")
    with pytest.raises(ValueError, match="cannot map the tokens"):
        token_bytes(other)
    assert CopyRule.for_tokenizer(other, ["born"], 1, 2, {0}) is None  # the decoders then run without it
    assert "cannot map the tokens" in caplog.text


def test_the_training_target_is_allowed_and_leaving_the_source_is_not(tokenizer, rule):
    eos = tokenizer.eos_token_id

    def allowed(text, end=(eos,)):
        return _walk(rule, tokenizer(text, add_special_tokens=False).input_ids + list(end)) is not None

    assert allowed(_marked())  # the target the model is trained on (onegen.data)
    assert allowed(SOURCE) and allowed(SOURCE.rstrip())  # nothing marked; the trailing newline may be left out
    assert allowed(_marked(SOURCE[:20]), end=())  # any prefix, until EOS
    assert not allowed(_marked().replace("Borg", "Berg"))  # a changed word
    assert not allowed(_marked(SOURCE[:20]))  # EOS before the end
    assert not allowed(_marked().replace(" beat", f"{ENTITY} beat"))  # [SE] is never output
    assert not allowed(SOURCE.replace("Björn Borg", f"{MENTION_OPEN}Björn Borg{MENTION_CLOSE}"))  # no [LK]
    assert not allowed(_marked().replace("[_CONTINUE_]", "", 1))  # no [_CONTINUE_] after [LK]
    assert not allowed(_marked(mentions=["Pay"]))  # a mention ends inside a word ...
    assert not allowed(_marked(mentions=["ayne Stewart"]))  # ... or starts inside one
    assert not allowed(SOURCE.replace("Payne", f"{MENTION_OPEN}{MENTION_CLOSE}[LK][_CONTINUE_]Payne"))  # empty
    assert not allowed(SOURCE.replace("Björn Borg", f"{MENTION_OPEN}Björn {MENTION_OPEN}Borg"))  # nested
    assert not allowed(_marked(mentions=[" beat"])) and not allowed(_marked(mentions=["beat "]))  # whitespace at an end
    assert allowed(_marked(mentions=["Björn Borg beat"]))  # the model decides what a mention covers


def test_pick_takes_the_models_best_allowed_token(tokenizer, rule):
    state = _walk(rule, tokenizer("Björn", add_special_tokens=False).input_ids)
    space_borg = tokenizer(" Borg", add_special_tokens=False).input_ids[0]
    wrong = [_id(tokenizer, "[SE]"), tokenizer(" Berg", add_special_tokens=False).input_ids[0]]
    assert rule.pick(state, wrong + [space_borg], lambda: pytest.fail("the ranked ids hold an allowed one")) == space_borg
    logits = torch.zeros(len(tokenizer))
    logits[wrong] = 5.0  # the model's favourites are refused ...
    logits[space_borg] = 1.0  # ... so its best allowed token is taken from all the logits
    assert rule.pick(state, wrong, lambda: logits) == space_borg


def test_a_mention_bias_opens_a_mention_the_model_nearly_chose(tokenizer):
    def rule_with(bias):
        return CopyRule(token_bytes(tokenizer), [SOURCE], _id(tokenizer, "[LK]"), _id(tokenizer, "[_CONTINUE_]"),
                        {tokenizer.eos_token_id}, mention_bias=bias)

    [space_lt] = tokenizer(" <", add_special_tokens=False).input_ids
    copy = tokenizer(" Payne", add_special_tokens=False).input_ids[0]
    logits = torch.zeros(len(tokenizer))
    logits[copy], logits[space_lt] = 3.0, 1.5  # the model would rather copy " Payne" than open a mention
    before_payne = _walk(rule_with(0.0), tokenizer("Björn Borg beat", add_special_tokens=False).input_ids)
    assert rule_with(0.0).pick(before_payne, [copy, space_lt], lambda: logits) == copy
    assert rule_with(1.0).pick(before_payne, [copy, space_lt], lambda: logits) == copy  # 1.5 + 1 < 3
    assert rule_with(2.0).pick(before_payne, [copy, space_lt], lambda: logits) == space_lt  # 1.5 + 2 >= 3
    # the bias never opens where the rule forbids it (inside a word) nor boosts a token that only copies
    lt = tokenizer("<", add_special_tokens=False).input_ids[0]
    inside_payne = _walk(rule_with(0.0), tokenizer("Björn Borg beat Pay", add_special_tokens=False).input_ids)
    ne = tokenizer("ne", add_special_tokens=False).input_ids[0]
    logits[ne], logits[lt] = 1.0, 0.9
    assert rule_with(10.0).pick(inside_payne, [lt, ne], lambda: logits) == ne


def _markup_model(tokenizer, seed):
    """A float64 random model that often wants to write "<" (so it opens and closes mentions)."""
    model = tiny_model(len(tokenizer), tie=False, seed=seed)
    model = model.double()
    with torch.no_grad():
        head = model.get_output_embeddings().weight  # (V, D)
        for lt in {tokenizer(" <", add_special_tokens=False).input_ids[0], tokenizer("<").input_ids[0]}:
            head[lt] = head[lt] * 1.0 + head.mean(0) * 40.0
    return model


@pytest.mark.parametrize("seed", [0, 1])
def test_both_decoders_follow_the_rule_and_agree(tokenizer, seed):
    link, cont, eos = _id(tokenizer, "[LK]"), _id(tokenizer, "[_CONTINUE_]"), tokenizer.eos_token_id
    ids = type("Ids", (), {"link": link, "cont": cont})
    model = _markup_model(tokenizer, seed)
    prompts = [tokenizer(mention_prompt(tokenizer, t), add_special_tokens=False).input_ids for t in TEXTS]
    rule = CopyRule(token_bytes(tokenizer), TEXTS, link, cont, {eos})
    plain = greedy_decode(model, ids, prompts, max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_ids=[eos], rule=rule)
    stats = DecodeStats()
    fast = copy_decode(model, ids, prompts, CopyDrafter(tokenizer, TEXTS, prompts), max_new_tokens=MAX_NEW, pad_token_id=0,
                       eos_token_ids=[eos], batch_size=2, rule=rule, stats=stats)
    for f, p, text in zip(fast, plain, TEXTS, strict=True):
        assert f.tokens == p.tokens and f.link_positions == p.link_positions
        torch.testing.assert_close(f.link_states, p.link_states, atol=1e-8, rtol=1e-6)
        assert f.tokens[-1] == eos  # every output ends, and what it wrote is its text with markup
        written = tokenizer.decode(f.tokens[:-1]).replace("[LK][_CONTINUE_]", "")
        assert written.replace(MENTION_OPEN, "").replace(MENTION_CLOSE, "") == text
    marked = [tokenizer.decode(f.tokens) for f in fast]
    assert sum(m.count(MENTION_OPEN) for m in marked) > 0, f"the test model should mark mentions: {marked}"
    assert stats.accepted > 0
    free = greedy_decode(model, ids, prompts, max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_ids=[eos])
    assert [f.tokens for f in free] != [p.tokens for p in plain]  # without the rule it writes something else
