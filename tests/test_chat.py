"""lmbook.text.chat and lmbook.models.vocab: the chat template written out against transformers' apply_chat_template,
the book's tokenizers wrapped for transformers (same ids, saved and reloaded), embeddings grown as transformers'
resize_token_embeddings grows them, and generation that stops at the end-of-turn token."""

from __future__ import annotations

import pytest
import torch

from lmbook.decoding.generate import generate
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.models.hf import to_hf_llama
from lmbook.models.llama import Llama, LlamaConfig
from lmbook.models.vocab import grow_embeddings
from lmbook.text.chat import (ASSISTANT, CHAT_TEMPLATE, END, SPECIAL_TOKENS, USER, chat_tokenizer, check_conversation,
                              decode_reply, encode_conversation, end_id, render, special_ids)
from lmbook.text.tokenizers import BPETokenizer, CharTokenizer, FastBPETokenizer

transformers = pytest.importorskip("transformers")

CONVERSATIONS = [
    [{"role": "user", "content": "Who speaks this line?\nNow, my lord"}, {"role": "assistant", "content": "ROMEO"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Count: a b c"},
     {"role": "assistant", "content": "three"}, {"role": "user", "content": "And now?\n  a b"},
     {"role": "assistant", "content": "two\n"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say it in capitals:\nfair Verona"}],
]


@pytest.fixture(scope="module")
def tokenizers(shakespeare):
    """The book's three kinds of tokenizer, the BPEs trained small on a slice of the corpus."""
    return {"char": CharTokenizer.train(shakespeare), "bpe": BPETokenizer.train(shakespeare[:100_000], 320),
            "fast-bpe": FastBPETokenizer.train(shakespeare[:100_000], 320)}


@pytest.fixture(scope="module")
def wrapped(tokenizers):
    return {name: chat_tokenizer(t) for name, t in tokenizers.items()}


@pytest.mark.parametrize("kind", ["char", "bpe", "fast-bpe"])
def test_ordinary_text_gets_the_book_tokenizers_ids(shakespeare, tokenizers, wrapped, kind):
    book, theirs = tokenizers[kind], wrapped[kind]
    text = shakespeare if kind == "char" else shakespeare[-60_000:]  # the BPEs on text they were not trained on
    ids = theirs(text)["input_ids"]
    assert ids == book.encode(text) and theirs.decode(ids) == text
    if kind != "char":  # byte-level: any text, seen or not
        odd = "héllo wörld 😀\n\n\t  end"
        assert theirs(odd)["input_ids"] == book.encode(odd) and theirs.decode(book.encode(odd)) == odd


def test_a_character_vocabulary_beyond_ascii_round_trips():
    book = CharTokenizer.train("héllo\n\twörld  ")
    theirs = chat_tokenizer(book)
    for text in ("wörld héllo", "\n\n  \t", "h\nw"):
        assert theirs(text)["input_ids"] == book.encode(text) and theirs.decode(book.encode(text)) == text


def test_special_tokens_follow_the_vocabulary(tokenizers, wrapped):
    book, theirs = tokenizers["char"], wrapped["char"]
    V = book.vocab_size
    assert special_ids(book) == {token: V + k for k, token in enumerate(SPECIAL_TOKENS)} and end_id(book) == V + 3
    assert [theirs.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [V, V + 1, V + 2, V + 3]
    assert len(theirs) == V + 4
    assert theirs.eos_token == theirs.pad_token == END and theirs.eos_token_id == V + 3
    ids = theirs.apply_chat_template(CONVERSATIONS[0], return_dict=False)
    assert theirs.decode(ids, skip_special_tokens=True) == "Who speaks this line?\nNow, my lordROMEO"
    assert theirs.decode(ids) == render(CONVERSATIONS[0])


def written_out(conversation, tokenizer):
    """The ids and assistant mask of a conversation, turn by turn, as the module docstring describes them."""
    ids_of, ids, mask = special_ids(tokenizer), [], []
    for turn in conversation:
        content = tokenizer.encode(turn["content"])
        ids += [ids_of[f"<|{turn['role']}|>"]] + content + [ids_of[END]]
        mask += [0] + [int(turn["role"] == "assistant")] * (len(content) + 1)
    return ids, mask


@pytest.mark.parametrize("kind", ["char", "bpe", "fast-bpe"])
def test_render_and_encode_equal_apply_chat_template(tokenizers, wrapped, kind):
    book, theirs = tokenizers[kind], wrapped[kind]
    for conversation in CONVERSATIONS:
        prompt = conversation[-1]["role"] == "user"
        text = theirs.apply_chat_template(conversation, tokenize=False, add_generation_prompt=prompt)
        assert render(conversation, add_generation_prompt=prompt) == text
        out = theirs.apply_chat_template(conversation, add_generation_prompt=prompt, return_assistant_tokens_mask=True,
                                         return_dict=True)
        ids, mask = encode_conversation(conversation, book, add_generation_prompt=prompt)
        assert (ids, mask) == (out["input_ids"], out["assistant_masks"])
        want_ids, want_mask = written_out(conversation, book)
        assert ids == want_ids + ([special_ids(book)[ASSISTANT]] if prompt else [])
        assert mask == want_mask + ([0] if prompt else [])
    short = [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "c"}]
    if kind == "char":
        a, b, c = book.encode("abc")
        U, A, E = (special_ids(book)[t] for t in (USER, ASSISTANT, END))
        assert encode_conversation(short, book) == ([U, a, b, E, A, c, E], [0, 0, 0, 0, 0, 1, 1])


def test_the_generation_prompt_opens_the_assistants_turn(tokenizers, wrapped):
    book, theirs = tokenizers["char"], wrapped["char"]
    question = CONVERSATIONS[0][:1]
    prompt = render(question, add_generation_prompt=True)
    assert prompt == USER + question[0]["content"] + END + ASSISTANT
    assert render(CONVERSATIONS[0]).startswith(prompt)  # the answer continues the prompt: what training relies on
    ids, mask = encode_conversation(question, book, add_generation_prompt=True)
    assert ids[-1] == special_ids(book)[ASSISTANT] and not any(mask)
    assert theirs.apply_chat_template(question, add_generation_prompt=True, return_dict=False) == ids


BAD = [
    ([{"role": "assistant", "content": "ROMEO"}], "turn 0 \\(assistant\\) is out of order: the turns go"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "turn 1 \\(user\\) is out of order"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "turn 1 \\(system\\) is out of order"),
    ([{"role": "system", "content": "a"}, {"role": "assistant", "content": "b"}], "turn 1 \\(assistant\\) is out of"),
    ([{"role": "narrator", "content": "a"}], "unknown role"),
    ([{"role": "user", "content": ""}], "turn 0 has no content"),
]


@pytest.mark.parametrize("conversation, message", BAD)
def test_the_template_and_the_python_refuse_the_same_conversations(wrapped, tokenizers, conversation, message):
    with pytest.raises(ValueError, match=message):
        render(conversation)
    with pytest.raises(ValueError, match=message):
        encode_conversation(conversation, tokenizers["char"])
    with pytest.raises(Exception, match=message):  # jinja2's TemplateError
        wrapped["char"].apply_chat_template(conversation, tokenize=False)


def test_conversations_the_template_cannot_judge_are_refused_in_python(tokenizers):
    book = tokenizers["char"]
    with pytest.raises(ValueError, match="non-empty list"):
        check_conversation([])
    with pytest.raises(ValueError, match="'role' and 'content'"):
        check_conversation([{"role": "user", "text": "hi"}])
    with pytest.raises(ValueError, match="must follow a user turn; the last turn is assistant"):
        render(CONVERSATIONS[0], add_generation_prompt=True)
    with pytest.raises(ValueError, match=r"turn 1 holds the special token\(s\) \['<\|end\|>'\]"):
        render([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b<|end|>c"}])
    with pytest.raises(ValueError, match="turn 1 \\(assistant\\): not in the vocabulary: '7', 'é'"):
        encode_conversation([{"role": "user", "content": "a"}, {"role": "assistant", "content": "é 7"}], book)
    ids, _ = encode_conversation(CONVERSATIONS[0], book, max_length=50)
    with pytest.raises(ValueError, match=f"{len(ids)} tokens long but the context holds {len(ids) - 1}"):
        encode_conversation(CONVERSATIONS[0], book, max_length=len(ids) - 1)
    with pytest.raises(TypeError, match="one of the book's tokenizers"):
        chat_tokenizer("abc")


def test_save_pretrained_and_from_pretrained_round_trip(tmp_path, shakespeare, tokenizers, wrapped):
    book, theirs = tokenizers["char"], wrapped["char"]
    theirs.save_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    back = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert back.chat_template == CHAT_TEMPLATE and (back.eos_token_id, back.pad_token_id) == (end_id(book),) * 2
    text = shakespeare[:5000]
    assert back(text)["input_ids"] == book.encode(text) and back.decode(book.encode(text)) == text
    for conversation in CONVERSATIONS[:2]:
        out = back.apply_chat_template(conversation, return_assistant_tokens_mask=True, return_dict=True)
        assert (out["input_ids"], out["assistant_masks"]) == encode_conversation(conversation, book)


def test_decode_reply_stops_at_the_end_token(tokenizers):
    book = tokenizers["char"]
    E, U = end_id(book), special_ids(book)[USER]
    assert decode_reply(book, book.encode("ROMEO") + [E] + book.encode("more")) == "ROMEO"
    assert decode_reply(book, torch.tensor(book.encode("cut of"))) == "cut of"
    with pytest.raises(ValueError, match="special token ids"):
        decode_reply(book, book.encode("a") + [U] + [E])
    with pytest.raises(TypeError, match="token ids, not text"):
        decode_reply(book, "ROMEO")


# --- Growing the embedding -------------------------------------------------------------------------------------
def llama(vocab_size: int, tie: bool, std: float = 0.3) -> Llama:
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=vocab_size, block_size=24, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                              intermediate_size=48, tie_embeddings=tie)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model


def test_grown_gpt_keeps_old_rows_ties_and_logits():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=65)).eval()
    old = model.wte.weight.detach().clone()
    x = torch.randint(0, 65, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)[0]
        grow_embeddings(model, 69, seed=0)
        after = model(x)[0]
    assert model.lm_head.weight is model.wte.weight and model.wte.weight.shape == (69, 32)
    assert torch.equal(model.wte.weight[:65], old) and model.config.vocab_size == model.vocab_size == 69
    torch.testing.assert_close(after[..., :65], before, atol=1e-6, rtol=0)
    # a new row is the old rows' mean (plus noise of 1e-9 times their covariance): its logit is the mean logit
    torch.testing.assert_close(model.wte.weight[65:], old.mean(0).expand(4, -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(after[..., 65:], before.mean(-1, keepdim=True).expand(-1, -1, 4), atol=1e-4, rtol=0)
    new_targets = torch.full_like(x, 67)
    model(x, new_targets)[1].backward()
    assert model.wte.weight.grad[65:].abs().sum() > 0  # the new rows learn


@pytest.mark.parametrize("tie", [True, False])
def test_grown_llama_behaves_as_transformers_resize_token_embeddings(tie):
    model = llama(61, tie)
    theirs = to_hf_llama(model).eval()
    theirs.resize_token_embeddings(65)
    grow_embeddings(model, 65, seed=3)
    ours = to_hf_llama(model).eval()
    assert (model.lm_head.weight is model.embed_tokens.weight) == tie
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tie
    for a, b in ((ours.model.embed_tokens.weight, theirs.model.embed_tokens.weight),
                 (ours.lm_head.weight, theirs.lm_head.weight)):
        assert a.shape == b.shape == (65, 32) and torch.equal(a[:61], b[:61])  # old rows: bit for bit
        torch.testing.assert_close(a[61:], b[61:], atol=2e-4, rtol=0)  # both the mean plus noise of ~1e-5
        assert not torch.equal(a[61:], b[61:])  # two different draws
    x = torch.randint(0, 65, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x).logits, atol=2e-3, rtol=0)


def test_with_fewer_rows_than_dimensions_both_add_the_mean_exactly():
    model = llama(20, tie=False)  # 20 rows in 32 dimensions: the covariance is singular, so no noise is drawn
    theirs = to_hf_llama(model).eval()
    theirs.resize_token_embeddings(24)
    grow_embeddings(model, 24)
    assert torch.equal(model.embed_tokens.weight, theirs.model.embed_tokens.weight)
    assert torch.equal(model.lm_head.weight, theirs.lm_head.weight)


def test_new_rows_are_drawn_with_a_billionth_of_the_old_rows_covariance():
    model = llama(61, tie=True)
    old = model.embed_tokens.weight.detach().double()
    grow_embeddings(model, 61 + 4000)
    new = model.embed_tokens.weight.detach()[61:].double()
    centered = old - old.mean(0)
    want = 1e-9 * centered.T @ centered / 61  # transformers divides by the number of rows
    drawn = (new - old.mean(0)).T @ (new - old.mean(0)) / len(new)
    assert (new.mean(0) - old.mean(0)).abs().max() < 1e-6
    assert torch.linalg.matrix_norm(drawn - want) / torch.linalg.matrix_norm(want) < 0.2


def test_growing_is_seeded_and_refuses_what_it_cannot_do():
    a, b, c = (grow_embeddings(llama(61, tie=True), 64, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.embed_tokens.weight, b.embed_tokens.weight)
    assert not torch.equal(a.embed_tokens.weight[61:], c.embed_tokens.weight[61:])
    assert grow_embeddings(a, 64) is a and a.embed_tokens.weight.shape[0] == 64  # already that size: unchanged
    with pytest.raises(ValueError, match="never removes"):
        grow_embeddings(a, 60)
    with pytest.raises(TypeError, match="new_vocab_size must be an integer"):
        grow_embeddings(a, 64.0)
    with pytest.raises(TypeError, match="grow_embeddings takes the book's GPT or Llama"):
        grow_embeddings(torch.nn.Linear(3, 3), 5)


# --- Generation stops at the end of the turn -------------------------------------------------------------------
def successor_model(tokenizer, successor: dict[int, int]) -> Llama:
    """A Llama whose next token depends only on the current one: ``successor[i]`` after token ``i``. Its blocks add
    nothing (zero output projections), its embedding is one-hot, and its output layer maps each token to its
    successor."""
    V = tokenizer.vocab_size + len(SPECIAL_TOKENS)
    model = Llama(LlamaConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=V + 1,
                              tie_embeddings=False))
    grow_embeddings(model, V)
    with torch.no_grad():
        for layer in model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.embed_tokens.weight.copy_(torch.eye(V, V + 1))
        model.lm_head.weight.zero_()
        for i, j in successor.items():
            model.lm_head.weight[j, i] = 5.0
    return model.eval()


def test_generation_stops_at_the_end_of_turn_token():
    book = CharTokenizer(list("abc"))
    a, b, c = book.encode("abc")
    ids = special_ids(book)
    A, E = ids[ASSISTANT], ids[END]
    model = successor_model(book, {A: a, a: b, b: E, E: c, c: c, ids[USER]: c})
    prompt, _ = encode_conversation([{"role": "user", "content": "cab"}], book, add_generation_prompt=True)
    out = generate(model, prompt, max_new_tokens=10, temperature=0, eos_token_id=end_id(book))[0].tolist()
    assert out == prompt + [a, b, E]
    assert decode_reply(book, out[len(prompt):]) == "ab"
    unstopped = generate(model, prompt, max_new_tokens=10, temperature=0)[0].tolist()
    assert unstopped == prompt + [a, b, E] + [c] * 7  # without the end token it runs on
    theirs = to_hf_llama(model).eval().generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False,
                                                eos_token_id=E, pad_token_id=E)
    assert theirs[0].tolist() == out  # transformers' generate stops at the same token
