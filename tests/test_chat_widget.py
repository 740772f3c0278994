"""Chapter 9's chat: the playground widget (lmbook.display.widgets.chat_playground) driven through its controls on a
tiny Llama, its context keeping, and the static view of a conversation (lmbook.display.chat_view.chat_html).

ipywidgets is one of the package's requirements: without it these tests fail (they never skip)."""

from __future__ import annotations

import html
import re

import ipywidgets
import pytest
import torch

from lmbook.decoding.chat import replies
from lmbook.display.chat_view import bubbles_html, chat_html, template_html
from lmbook.display.widgets import chat_playground, keep_within_context
from lmbook.models.llama import Llama, LlamaConfig
from lmbook.models.vocab import grow_embeddings
from lmbook.text.chat import ASSISTANT, END, SPECIAL_TOKENS, SYSTEM, USER, encode_conversation, render, special_ids
from lmbook.text.tokenizers import CharTokenizer

TEXT = ("ROMEO: What light through yonder window breaks?\nJULIET: Ay me! Who speaks? Answer. Be brief. "
        "Count: a b c, three.\n")
SYSTEM_TEXT = "Be brief."


@pytest.fixture(scope="module")
def tokenizer() -> CharTokenizer:
    return CharTokenizer.train(TEXT + "".join(turn["content"] for turn in CONVERSATION))


def tiny_llama(tokenizer, block_size: int) -> Llama:
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=2, n_head=4,
                              n_kv_head=2, n_embd=32, intermediate_size=48))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return grow_embeddings(model, tokenizer.vocab_size + len(SPECIAL_TOKENS))


@pytest.fixture(scope="module")
def model(tokenizer) -> Llama:
    return tiny_llama(tokenizer, 96)


def parts(box) -> dict:
    """The playground's controls by name, found in its layout."""
    chat, (message, send, clear), (temperature, new, seed), status, heading, template = (
        box.children[0], box.children[1].children, box.children[2].children, *box.children[3:])
    return dict(chat=chat, message=message, send=send, clear=clear, temperature=temperature, new=new, seed=seed,
                status=status, heading=heading, template=template)


def template_text(value: str) -> str:
    """The template panel's text as a reader sees it (without tags, newline marks and the caption)."""
    return html.unescape(re.sub(r"<[^>]+>", "", value.split("</pre>")[0])).replace("↵", "")


def caption(value: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", value.split("</pre>")[1]))


def bubble_texts(value: str) -> list[tuple[str, str]]:
    """(role, text) of each bubble, in order."""
    label = r'<div style="font-size:11px;opacity:0.6">(\w+)</div>'
    found = re.findall(label + r"(.*?)(?:<span[^>]*>▌</span>)?</div></div>", value, flags=re.S)
    return [(role, html.unescape(text)) for role, text in found]


def test_sending_streams_a_reply_and_shows_the_template(model, tokenizer):
    box = chat_playground(model, tokenizer, system=SYSTEM_TEXT, max_new_tokens=12)
    w = parts(box)
    assert isinstance(box, ipywidgets.VBox) and isinstance(w["send"], ipywidgets.Button)
    assert bubble_texts(w["chat"].value) == [("system", SYSTEM_TEXT)]
    assert template_text(w["template"].value) == SYSTEM + SYSTEM_TEXT + END
    assert f"{len(SYSTEM_TEXT) + 2} tokens of the context's 96" in caption(w["template"].value)  # a token a character

    conversation = [{"role": "system", "content": SYSTEM_TEXT}]
    for message in ("Who speaks?", "Count: a b c"):
        w["message"].value = message
        w["send"].click()
        conversation.append({"role": "user", "content": message})
        reply = replies(model, tokenizer, [conversation], max_new_tokens=12)[0]  # greedy: temperature 0
        assert reply
        conversation.append({"role": "assistant", "content": reply})
        assert bubble_texts(w["chat"].value) == [(t["role"], t["content"]) for t in conversation]
        assert template_text(w["template"].value) == render(conversation)
        n = len(encode_conversation(conversation, tokenizer)[0])
        assert f"{n} tokens of the context's 96" in caption(w["template"].value)
        assert w["message"].value == "" and "tokens in" in w["status"].value and not w["send"].disabled
    assert w["template"].value.count("background:#f5c08c") == 5  # each turn's <|end|>, highlighted
    assert model.training  # the widget leaves the model's mode as it was

    w["clear"].click()
    assert bubble_texts(w["chat"].value) == [("system", SYSTEM_TEXT)]
    assert template_text(w["template"].value) == SYSTEM + SYSTEM_TEXT + END
    w["message"].value = "Who speaks?"  # the same first message after Clear: the same first reply
    w["send"].click()
    assert bubble_texts(w["chat"].value)[1:] == [(t["role"], t["content"]) for t in conversation[1:3]]


def test_the_reply_is_shown_as_each_token_arrives_and_the_panel_shows_the_prompt(model, tokenizer, monkeypatch):
    import lmbook.display.widgets
    from lmbook.decoding.chat import stream_reply

    seen = []  # the chat and the panel as they stand each time the widget asks for the next piece

    def watched(*args, **kwargs):
        for piece in stream_reply(*args, **kwargs):
            seen.append((w["chat"].value, w["template"].value))
            yield piece
        seen.append((w["chat"].value, w["template"].value))

    monkeypatch.setattr(lmbook.display.widgets, "stream_reply", watched)
    w = parts(chat_playground(model, tokenizer, max_new_tokens=12))
    w["message"].value = "Who speaks?"
    w["send"].click()
    question = [{"role": "user", "content": "Who speaks?"}]
    reply = replies(model, tokenizer, [question], max_new_tokens=12)[0]
    assert len(seen) == len(reply) + 1  # one piece a token (a character), and the end
    for k, (chat, template) in enumerate(seen[:-1]):
        assert bubble_texts(chat) == [("user", "Who speaks?"), ("assistant", reply[:k])] and "▌" in chat
        assert template_text(template) == render(question, add_generation_prompt=True)  # what the model reads
    assert bubble_texts(w["chat"].value)[-1] == ("assistant", reply) and "▌" not in w["chat"].value


def test_temperature_and_seed_draw_the_reply_replies_draws(model, tokenizer):
    box = chat_playground(model, tokenizer, max_new_tokens=15, temperature=1.5, seed=4, message="Ay me!")
    w = parts(box)
    question = [{"role": "user", "content": "Ay me!"}]
    want = replies(model, tokenizer, [question], max_new_tokens=15, temperature=1.5, seed=4)[0]
    assert want != replies(model, tokenizer, [question], max_new_tokens=15)[0]  # not the greedy reply
    assert bubble_texts(w["chat"].value) == [("user", "Ay me!"), ("assistant", want)]
    w["clear"].click()
    assert bubble_texts(w["chat"].value) == [] and "starts with your message" in w["template"].value
    w["temperature"].value, w["message"].value = 0.0, "Ay me!"
    w["send"].click()
    assert bubble_texts(w["chat"].value)[1] == ("assistant", replies(model, tokenizer, [question], 15)[0])


def test_the_oldest_exchange_is_dropped_when_the_next_reply_would_not_fit(tokenizer):
    model = tiny_llama(tokenizer, 48)
    box = chat_playground(model, tokenizer, system="Be brief.", max_new_tokens=10)
    w = parts(box)
    notes = [None, "The oldest exchange was dropped", "The 2 oldest exchanges were dropped"]
    previous: list[dict] = []
    for message, note in zip(["Who speaks?", "Answer.", "Count: a b c"], notes):
        w["message"].value = message
        w["send"].click()
        shown = bubble_texts(w["chat"].value)
        conversation = [{"role": r, "content": t} for r, t in shown]
        asked = (previous or [{"role": "system", "content": "Be brief."}]) + [{"role": "user", "content": message}]
        assert conversation[:-1] == keep_within_context(asked, tokenizer, 48, 10)[0]  # what the model read
        assert shown[0] == ("system", "Be brief.") and shown[-2] == ("user", message)  # the system turn stays
        assert template_text(w["template"].value) == render(conversation)
        assert (note is None and "dropped" not in caption(w["template"].value)) or note in caption(
            w["template"].value)
        previous = conversation
    assert len(shown) == 3  # the older exchanges left the context
    before = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Answer."},
              {"role": "assistant", "content": "Ay"}, {"role": "user", "content": "Count: a b c"}]
    with_prompt = len(encode_conversation(before, tokenizer, add_generation_prompt=True)[0])
    kept, dropped = keep_within_context(before, tokenizer, with_prompt + 10, 10)
    assert (kept, dropped) == (before, 0)  # it fits exactly: nothing dropped
    kept, dropped = keep_within_context(before, tokenizer, with_prompt + 9, 10)
    assert (kept, dropped) == ([before[0], before[3]], 1)
    with pytest.raises(ValueError, match="past the model's context of 20: write a shorter message"):
        keep_within_context(before, tokenizer, 20, 10)
    assert keep_within_context(before, tokenizer, None, 10) == (before, 0)  # no context: nothing to keep within
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        keep_within_context(before, tokenizer, 48, 0)


def test_messages_the_model_cannot_take_are_not_sent(model, tokenizer):
    box = chat_playground(model, tokenizer, max_new_tokens=12, message="Who speaks?")
    w = parts(box)
    before = (w["chat"].value, w["template"].value)
    for message, said in (("Who are you? Z", "not in the vocabulary: 'Z'"), ("   ", "type a message first"),
                          ("a <|end|> b", "special token"), ("Answer. " * 12, "write a shorter message")):
        w["message"].value = message
        w["send"].click()
        assert said in w["status"].value and (w["chat"].value, w["template"].value) == before
        assert w["message"].value == message  # the text stays, to be mended
    with pytest.raises(ValueError, match="leaves no room in the model's context of 96"):
        chat_playground(model, tokenizer, max_new_tokens=96)
    assert parts(chat_playground(model, tokenizer))["new"].value == 48  # by default, half the context, at most 100
    with pytest.raises(ValueError, match="temperature must be between 0"):
        chat_playground(model, tokenizer, temperature=-1.0)
    with pytest.raises(ValueError, match="turn 0 \\(system\\): not in the vocabulary: 'Z'"):
        chat_playground(model, tokenizer, system="Zounds")


def test_a_reply_without_a_word_gives_the_message_back(tokenizer):
    model = Llama(LlamaConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=8,
                              tie_embeddings=False))
    grow_embeddings(model, tokenizer.vocab_size + 4)
    with torch.no_grad():  # wired to end its turn at once: every token reads as the same vector, which says <|end|>
        model.layers[0].self_attn.o_proj.weight.zero_()
        model.layers[0].mlp.down_proj.weight.zero_()
        model.embed_tokens.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[special_ids(tokenizer)[END]] = 1.0
    box = chat_playground(model, tokenizer, max_new_tokens=5, message="Who speaks?")
    w = parts(box)
    assert bubble_texts(w["chat"].value) == [] and w["message"].value == "Who speaks?"
    assert "without a word" in w["status"].value


# --- The static view ----------------------------------------------------------------------------------------------
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Is <b>this</b> bold?\nSay it."},
    {"role": "assistant", "content": "No & <script>alert(1)</script>"},
    {"role": "user", "content": "Count: a b c"},
]


def test_chat_html_escapes_orders_and_marks_the_special_tokens(tokenizer):
    page = chat_html(CONVERSATION)
    assert "<b>" not in page and "&lt;b&gt;this&lt;/b&gt;" in page and "<script" not in page
    assert bubble_texts(page) == [(t["role"], t["content"]) for t in CONVERSATION]
    sides = re.findall(r"justify-content:([\w-]+)", page)
    assert sides == ["center", "flex-end", "flex-start", "flex-end"]  # system on top, user right, assistant left
    template = page.split("What the model reads")[1]
    assert template_text(template) == render(CONVERSATION)
    marked = re.findall(r'<span style="background:(#\w+);[^"]*">([^<]+)</span>', template)
    assert [html.unescape(token) for _, token in marked] == [SYSTEM, END, USER, END, ASSISTANT, END, USER, END]
    assert len({colour for _, colour in marked}) == 4  # one colour a special token
    assert "↵" in template and "tokens" not in caption(template)  # newlines marked; no count without a tokenizer

    counted = chat_html(CONVERSATION, tokenizer, add_generation_prompt=True, context=200)
    n = len(encode_conversation(CONVERSATION, tokenizer, add_generation_prompt=True)[0])
    assert template_text(counted.split("What the model reads")[1]) == render(CONVERSATION, True)
    assert f"{n} tokens of the context's 200 ({n / 200:.0%})" in caption(counted)
    assert f"{n} tokens<" in template_html(CONVERSATION, tokenizer, True)  # no context: the count alone


def test_the_views_refuse_what_they_cannot_show(tokenizer):
    with pytest.raises(ValueError, match="non-empty list of turns"):
        chat_html([])
    with pytest.raises(ValueError, match="must follow a user turn"):
        chat_html(CONVERSATION[:3], add_generation_prompt=True)
    with pytest.raises(ValueError, match="turn 1 \\(user\\) is out of order"):
        chat_html([CONVERSATION[1], CONVERSATION[3]])
    with pytest.raises(ValueError, match="context must be >= 1"):
        chat_html(CONVERSATION, tokenizer, context=0)
    with pytest.raises(TypeError, match="one of the book's tokenizers"):
        chat_html(CONVERSATION, tokenizer="chars")
    with pytest.raises(ValueError, match="needs a conversation that ends with a user turn"):
        bubbles_html([], pending="")
    assert bubble_texts(bubbles_html(CONVERSATION, pending="Thr")) == [
        *[(t["role"], t["content"]) for t in CONVERSATION], ("assistant", "Thr")]
