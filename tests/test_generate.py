"""lmbook.decoding.generate: the one generation entry point, its settings, its cache and its errors.

Agreement with transformers' generate on the same weights is in test_generate_parity.py.
"""

import dataclasses

import pytest
import torch

from lmbook.decoding.shared import GenerationConfig, Reader
from lmbook.decoding.generate import complete, generate, sample_next, stream
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.models.rnn import RNNLM, RNNConfig
from lmbook.text.tokenizers import CharTokenizer


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Decoding tiny models: one thread for the whole module (tests/conftest.py)."""


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny")).eval()  # context 32, vocabulary 65


@pytest.fixture(scope="module")
def lstm():
    torch.manual_seed(0)
    return RNNLM(RNNConfig(vocab_size=65, cell="lstm", n_layer=2, n_embd=16, n_hidden=32)).eval()


@pytest.fixture(scope="module")
def tokenizer(shakespeare):
    return CharTokenizer.train(shakespeare)


def legacy_sampling(model, idx, steps, temperature, top_k, generator):
    """Chapters 2 to 4's sampling, written out: softmax(logits / T) after top-k, one multinomial draw a step."""
    cache = model.make_cache()
    window = idx
    for _ in range(steps):
        logits = model(window, cache=cache)[0][:, -1].float() / temperature
        if top_k is not None:
            logits = logits.masked_fill(logits < torch.topk(logits, top_k).values[:, -1:], float("-inf"))
        window = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
        idx = torch.cat([idx, window], dim=1)
    return idx


@pytest.mark.parametrize("which", ["model", "lstm"])
def test_chapters_2_to_4_draw_exactly_as_the_written_out_sampler(which, request):
    net = request.getfixturevalue(which)
    prompt = torch.randint(0, 65, (2, 4), generator=torch.Generator().manual_seed(1))
    for temperature, top_k in ((1.0, None), (0.8, None), (1.3, 5)):
        ours = generate(net, prompt, 25, temperature, top_k, torch.Generator().manual_seed(7))
        with torch.no_grad():
            assert torch.equal(ours, legacy_sampling(net, prompt, 25, temperature, top_k,
                                                     torch.Generator().manual_seed(7)))


def test_complete_is_seeded_text_to_text(model, tokenizer):
    a = complete(model, tokenizer, "ROMEO:", max_new_tokens=20, temperature=0.8, seed=0)
    assert a.startswith("ROMEO:") and len(a) == 26
    assert a == complete(model, tokenizer, "ROMEO:", max_new_tokens=20, temperature=0.8, seed=0)
    assert a != complete(model, tokenizer, "ROMEO:", max_new_tokens=20, temperature=0.8, seed=1)
    greedy = generate(model, torch.tensor(tokenizer.encode("ROMEO:")), 20, temperature=0)
    assert complete(model, tokenizer, "ROMEO:", 20, temperature=0) == tokenizer.decode(greedy[0].tolist())


@pytest.mark.parametrize("which", ["model", "lstm"])
@pytest.mark.parametrize("settings", [dict(temperature=0), dict(temperature=1.3, top_k=10, seed=4),
                                      dict(do_sample=True, top_p=0.7, repetition_penalty=1.3, seed=2),
                                      dict(num_beams=3, num_return_sequences=2, no_repeat_ngram_size=3)],
                         ids=["greedy", "sampled", "top-p", "beams"])
def test_cached_decoding_equals_rereading_within_the_context(which, settings, request):
    net = request.getfixturevalue(which)
    prompt = torch.randint(0, 65, (2, 5), generator=torch.Generator().manual_seed(3))
    fast = generate(net, prompt, 26, **settings)  # 31 tokens: within the tiny GPT's context of 32
    slow = generate(net, prompt, 26, use_cache=False, **settings)
    assert torch.equal(fast[:, :5], prompt.repeat_interleave(fast.size(0) // 2, 0))
    assert torch.equal(fast, slow)


def test_past_the_context_each_path_does_what_it_says(model):
    """Without the cache the window slides by one token; with it, the cache restarts from the last half."""
    prompt = torch.randint(0, 65, (1, 6), generator=torch.Generator().manual_seed(5))
    context, steps = model.context_length, 60
    slow, fast, start = prompt, prompt, 0
    slow_draws, fast_draws = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    with torch.no_grad():
        for _ in range(steps):
            probs = torch.softmax(model(slow[:, -context:])[0][:, -1], dim=-1)
            slow = torch.cat([slow, torch.multinomial(probs, 1, generator=slow_draws)], dim=1)
            if fast.size(1) - start > context:
                start = fast.size(1) - context // 2  # the cache restarts: positions count from here again
            probs = torch.softmax(model(fast[:, start:])[0][:, -1], dim=-1)
            fast = torch.cat([fast, torch.multinomial(probs, 1, generator=fast_draws)], dim=1)
    assert torch.equal(generate(model, prompt, steps, use_cache=False, seed=9), slow)
    assert torch.equal(generate(model, prompt, steps, seed=9), fast)
    assert torch.equal(slow[:, : context + 1], fast[:, : context + 1])  # the same until the context is full
    assert not torch.equal(slow, fast)  # then the windows differ, and so does the text


def test_recurrent_models_have_no_context_limit(lstm):
    out = generate(lstm, torch.zeros(1, 1, dtype=torch.long), 100, temperature=0.8, seed=0)
    assert out.shape == (1, 101)
    assert Reader(lstm).context is None


def test_greedy_is_the_argmax_and_sampling_filters_hold(model):
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.5]])
    assert sample_next(logits, temperature=0).item() == 1
    gen = torch.Generator().manual_seed(0)
    assert {sample_next(logits, 1.0, top_k=2, generator=gen).item() for _ in range(200)} == {1, 3}
    assert {sample_next(logits, 1.0, top_k=0, generator=gen).item() for _ in range(300)} == {0, 1, 2, 3}
    prompt = torch.randint(0, 65, (4, 3), generator=torch.Generator().manual_seed(2))
    greedy = generate(model, prompt, 15, temperature=0)
    assert torch.equal(generate(model, prompt, 15, temperature=0.7, do_sample=False), greedy)  # T ignored
    assert torch.equal(generate(model, prompt, 15, top_k=1, seed=3), greedy)  # one token left: no choice
    assert torch.equal(generate(model, prompt, 15, top_p=0.0, seed=3), greedy)
    # top_k=0 means no filter, as in transformers; the seed makes draws repeat and nothing else
    assert torch.equal(generate(model, prompt, 15, top_k=0, seed=3), generate(model, prompt, 15, seed=3))
    assert not torch.equal(generate(model, prompt, 15, seed=3), generate(model, prompt, 15, seed=4))


def test_lengths_end_ids_and_padding(model):
    prompt = torch.randint(0, 65, (3, 4), generator=torch.Generator().manual_seed(8))
    greedy = generate(model, prompt, 20, temperature=0)
    assert torch.equal(generate(model, prompt, max_length=24, temperature=0), greedy)  # the prompt counts
    assert torch.equal(generate(model, prompt, 20, max_length=6, temperature=0), greedy)  # max_new_tokens wins
    end = greedy[0, 9].item()  # the 6th new token of row 0 becomes the end of text
    ended = generate(model, prompt, 20, temperature=0, eos_token_id=end, pad_token_id=0)
    for row, full in zip(ended, greedy):
        hits = (full[4:] == end).nonzero()
        stop = 4 + (hits[0].item() + 1 if len(hits) else 20)
        assert torch.equal(row[:stop], full[:stop]) and (row[stop:] == 0).all()
    if all((full[4:] == end).any() for full in greedy):  # every row ends: the output is cut at the last end
        assert ended.size(1) < 24


def test_stop_strings_end_a_row_at_the_newest_token(model, tokenizer):
    prompt = torch.tensor([tokenizer.encode("ROMEO:")])
    full = tokenizer.decode(generate(model, prompt, 40, temperature=0)[0].tolist())
    stop = full[12:14]  # two characters of the continuation
    out = generate(model, prompt, 40, temperature=0, stop_strings=[stop], tokenizer=tokenizer)
    text = tokenizer.decode(out[0].tolist())
    assert text.endswith(stop) and stop not in text[6:-1] and full.startswith(text)
    spanning = generate(model, prompt, 40, temperature=0, stop_strings=[":" + full[6]], tokenizer=tokenizer)
    assert spanning.size(1) == 7  # a stop string may begin in the prompt, as in transformers
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, prompt, 5, stop_strings=["x"])


def test_stream_yields_the_tokens_generate_returns(model, tokenizer):
    prompt = torch.tensor(tokenizer.encode("ROMEO:"))
    for settings in (dict(temperature=0), dict(temperature=0.9, top_k=20, seed=5)):
        pieces = []
        for piece in stream(model, prompt, tokenizer, max_new_tokens=30, **settings):
            assert not torch.is_inference_mode_enabled() and not model.training
            pieces.append(piece)
        out = generate(model, prompt, 30, **settings)
        assert [p.id for p in pieces] == out[0, 6:].tolist()
        assert "".join(p.text for p in pieces) == tokenizer.decode(out[0, 6:].tolist())
    with torch.no_grad():
        probs = torch.softmax(model(prompt[None])[0][0, -1], dim=-1)
    first = next(stream(model, prompt, max_new_tokens=3, temperature=0))
    assert first.id == probs.argmax().item() and first.probability == pytest.approx(probs.max().item(), abs=1e-6)


def test_prompts_of_different_lengths_decode_as_each_alone(model, lstm):
    rows = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    for net in (model, lstm):  # the GPT reads the padded batch at once, the LSTM one prompt after the other
        out = generate(net, rows, 12, temperature=0, pad_token_id=3)
        assert out.shape == (3, 17)
        for row, ids in zip(out, rows):
            assert torch.equal(row[5 - len(ids) :], generate(net, torch.tensor(ids), 12, temperature=0)[0])
            assert (row[: 5 - len(ids)] == 3).all()
    beams = generate(lstm, rows, 8, num_beams=2, return_dict=True)
    assert beams.sequences.shape == (3, 13) and beams.scores.shape == (3,)


def test_left_padded_rows_read_like_each_prompt_alone_without_nan(model):
    idx = torch.tensor([[0, 0, 0, 4, 5], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        logits = model(idx, attention_mask=mask)[0]  # (2, 5, V)
        assert torch.isfinite(logits).all()  # padding queries see themselves: no row is all masked
        torch.testing.assert_close(logits[0, 3:], model(idx[:1, 3:])[0][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits[1], model(idx[1:])[0][0], rtol=1e-5, atol=1e-5)
        cache = model.make_cache()
        model(idx[:, :4], cache=cache, attention_mask=mask[:, :4])
        step = model(idx[:, 4:], cache=cache, attention_mask=mask)[0]  # the mask covers cached and new keys
        torch.testing.assert_close(step[:, 0], logits[:, 4], rtol=1e-5, atol=1e-5)
    rows = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    for settings in (dict(temperature=0), dict(top_k=5, seed=1), dict(num_beams=2)):
        cached = generate(model, rows, 20, **settings)
        assert torch.equal(cached, generate(model, rows, 20, use_cache=False, **settings))


def test_generate_restores_the_mode_and_returns_ordinary_tensors(model):
    model.train()
    out = generate(model, torch.tensor([1, 2]), 3)
    assert model.training and not out.is_inference()
    out[0, 0] = 5  # an ordinary tensor can be written to
    model.eval()


BAD = [
    (dict(temperature=-1), ValueError, "temperature must be finite and >= 0"),
    (dict(temperature=0, do_sample=True), ValueError, "do_sample=False"),
    (dict(top_k=-2), ValueError, "top_k must be >= 0"),
    (dict(top_k=2.5), TypeError, "top_k must be an integer"),
    (dict(top_p=1.5), ValueError, r"top_p must be in \[0, 1\]"),
    (dict(repetition_penalty=0), ValueError, "repetition_penalty must be > 0"),
    (dict(no_repeat_ngram_size=-1), ValueError, "no_repeat_ngram_size"),
    (dict(num_beams=0), ValueError, "num_beams must be >= 1"),
    (dict(num_beams=2, num_return_sequences=3), ValueError, "num_return_sequences=3 must be <= num_beams=2"),
    (dict(temperature=0, num_return_sequences=2), ValueError, "greedy decoding gives one sequence"),
    (dict(num_beams=2, do_sample=True), ValueError, "beam search with sampling"),
    (dict(early_stopping="sometimes"), ValueError, "early_stopping must be True, False or 'never'"),
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens must be >= 0"),
    (dict(max_new_tokens=2.0), TypeError, "max_new_tokens must be an integer"),
    (dict(max_new_tokens=True), TypeError, "max_new_tokens must be an integer"),
    (dict(temperature=float("inf")), ValueError, "temperature must be finite"),
    (dict(temperature=float("nan")), ValueError, "temperature must be finite"),
    (dict(temperature=1e-45), ValueError, "temperature=1e-45 is so small that the scaled scores overflow"),
    (dict(max_new_tokens=None), ValueError, "give max_new_tokens"),
    (dict(max_new_tokens=None, max_length=3), ValueError, "max_length=3 leaves no room"),
    (dict(eos_token_id=70), ValueError, "end/pad id 70 is outside"),
    (dict(stop_strings="ab"), TypeError, "stop_strings must be a list"),
    (dict(colour="red"), TypeError, "unknown generation settings"),
    (dict(seed=1, generator=torch.Generator()), ValueError, "seed or generator"),
    (dict(seed=2.5), TypeError, "seed must be an integer or None, not 2.5"),
    (dict(seed=True), TypeError, "seed must be an integer or None, not True"),
    (dict(seed=2**64), ValueError, r"seed must lie in \[-2\*\*63, 2\*\*64\)"),
    (dict(use_cache="no"), TypeError, "use_cache must be True or False, not 'no'"),
    (dict(do_sample=0.5), TypeError, "do_sample must be True or False or None, not 0.5"),
    (dict(repetition_penalty=1e-284, seed=0), ValueError,
     r"repetition_penalty=1e-284 is so small that the scores of the tokens seen overflow to infinity: raise it"),
]


@pytest.mark.parametrize("settings, error, message", BAD, ids=[next(iter(b[0])) for b in BAD])
def test_bad_settings_are_refused_with_what_is_allowed(model, settings, error, message):
    with pytest.raises(error, match=message):
        generate(model, torch.tensor([[1, 2, 3]]), **{"max_new_tokens": 5, **settings})


def test_ids_of_a_narrower_integer_type_are_read_as_int64_and_bools_are_refused(model, lstm):
    for m in (model, lstm):
        expected = generate(m, torch.tensor([[1, 2, 3]]), 4, seed=0)
        for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32):
            assert torch.equal(generate(m, torch.tensor([[1, 2, 3]], dtype=dtype), 4, seed=0), expected), dtype
            assert torch.equal(generate(m, [torch.tensor([1, 2, 3], dtype=dtype)], 4, seed=0), expected), dtype
    with pytest.raises(TypeError, match="integer"):
        generate(model, torch.tensor([[True, False]]), 4)
    with pytest.raises(ValueError, match=r"int64 or int32, not torch.uint8 \(1, 3\) \(convert narrower ids with "
                                         r"idx.long\(\)\)"):
        model(torch.tensor([[1, 2, 3]], dtype=torch.uint8))  # the model itself reads int64 and int32 only


def test_bad_prompts_are_refused(model):
    with pytest.raises(ValueError, match="empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="empty"):
        generate(model, [[1, 2], []], 5)
    with pytest.raises(ValueError, match=r"last 32 tokens"):
        generate(model, torch.zeros(1, 40, dtype=torch.long), 5)
    with pytest.raises(ValueError, match=r"range\(65\).*from 1 to 65"):
        generate(model, torch.tensor([[1, 65]]), 5)
    with pytest.raises(ValueError, match="from -1 to 3"):
        generate(model, torch.tensor([[-1, 3]]), 5)
    with pytest.raises(TypeError, match="token ids"):
        generate(model, torch.tensor([[0.5, 1.0]]), 5)
    for prompt in ([[1, 2], [3.7, 4]], [1.5, 2.0], [[1, 2], "ab"], [[True, 2]], [torch.tensor([1.5, 2.0])]):
        with pytest.raises(TypeError, match="integer token ids"):  # never truncated to ids in silence
            generate(model, prompt, 5)
    with pytest.raises(ValueError, match="left padding"):
        generate(model, torch.tensor([[1, 2, 3]]), 5, attention_mask=torch.tensor([[1, 0, 1]]))
    with pytest.raises(ValueError, match="all padding"):
        generate(model, torch.tensor([[1, 2]]), 5, attention_mask=torch.tensor([[0, 0]]))
    with pytest.raises(ValueError, match="one prompt into one sequence"):
        next(stream(model, torch.tensor([[1, 2], [3, 4]]), max_new_tokens=3))


def test_an_end_reached_early_costs_only_what_was_decoded(model):
    """A huge max_new_tokens is a bound, not an allocation: the output grows as it is written."""
    first = generate(model, [1, 2, 3], 4, temperature=0)[0, -1].item()  # an id greedy decoding reaches
    out = generate(model, [1, 2, 3], 10**12, temperature=0, eos_token_id=first)
    assert out.size(1) <= 7 and out[0, -1].item() == first
    streamed = [t.id for t in stream(model, [1, 2, 3], max_new_tokens=10**12, temperature=0, eos_token_id=first)]
    assert streamed == out[0, 3:].tolist()


def test_long_outputs_grow_past_their_first_room_unchanged(model):
    """Past the first allocation (prompt + 64 tokens) the output is the same as decoded in one piece."""
    whole = generate(model, [1, 2, 3], 150, seed=0)
    assert whole.shape == (1, 153)
    assert torch.equal(whole[:, :103], generate(model, [1, 2, 3], 100, seed=0))
    beams = generate(model, [1, 2, 3], 80, num_beams=2, length_penalty=0.0)
    assert torch.equal(beams, generate(model, [1, 2, 3], 80, num_beams=2, length_penalty=0.0, use_cache=False))


def test_no_repeat_ngram_counts_no_ngram_that_covers_padding():
    from lmbook.decoding.shared import no_repeat_ngram

    scores = torch.zeros(1, 9)
    padded = no_repeat_ngram(scores, torch.tensor([[0, 0, 7, 0]]), 2, torch.tensor([[0, 0, 1, 1]]))
    alone = no_repeat_ngram(scores, torch.tensor([[7, 0]]), 2)
    assert torch.equal(padded, alone) and torch.isfinite(alone).all()  # (7, 0), the one bigram, does not start with 0
    banned = no_repeat_ngram(scores, torch.tensor([[7, 0, 7]]), 2)
    assert torch.isinf(banned[0, 0]) and torch.isfinite(banned[0, 1:]).all()  # 7 was followed by 0


def test_the_config_is_frozen_and_keywords_override_it(model):
    config = GenerationConfig(max_new_tokens=6, temperature=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.temperature = 1.0
    prompt = torch.tensor([[1, 2, 3]])
    assert generate(model, prompt, config=config).shape == (1, 9)
    assert generate(model, prompt, config=config, max_new_tokens=2).shape == (1, 5)
    assert not config.sampling and GenerationConfig(max_new_tokens=1).sampling  # chapters 2-4: T=1 samples
    assert not GenerationConfig(max_new_tokens=1, num_beams=2).sampling


# --- The weights' layout while a CPU decodes (lmbook.decoding.shared.weights_in_out) ----------------------
def test_decoding_leaves_every_weight_as_it_found_it():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    strides = {name: p.stride() for name, p in model.named_parameters()}
    pieces = stream(model, torch.tensor([1, 2, 3]), max_new_tokens=5, do_sample=False)
    next(pieces)
    inside = {name: p.stride() for name, p in model.named_parameters()}
    c_attn = model.h[0].attn.c_attn.weight  # (3C, C): stored column by column while decoding
    assert inside["h.0.attn.c_attn.weight"] == (1, c_attn.size(0)) and inside["wte.weight"] == strides["wte.weight"]
    stream_ids = [p.id for p in pieces]
    assert len(stream_ids) == 4 and {name: p.stride() for name, p in model.named_parameters()} == strides
    generate(model, torch.tensor([1, 2, 3]), 5, do_sample=False)
    assert {name: p.stride() for name, p in model.named_parameters()} == strides
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.lm_head.weight is model.wte.weight and model.training


def test_decoding_in_between_does_not_change_training():
    """Two identical training runs, one with a generate call between its steps: the same weights, bit for bit."""
    def train(decode: bool) -> dict:
        torch.manual_seed(0)
        model = GPT(GPTConfig.preset("tiny"))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        x = torch.randint(0, 65, (4, 16), generator=torch.Generator().manual_seed(1))
        for _ in range(3):
            loss = model(x[:, :-1], x[:, 1:])[1]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if decode:
                generate(model, x[:1, :4], 8, do_sample=False)
        return model.state_dict()

    plain, decoded = train(False), train(True)
    assert all(torch.equal(plain[k], decoded[k]) for k in plain)


def test_layout_is_restored_after_an_error_and_left_alone_in_inference_mode():
    from lmbook.decoding.shared import weights_in_out

    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny"))
    strides = {name: p.stride() for name, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match="stop here"):
        with weights_in_out(model):
            assert model.h[0].mlp.c_fc.weight.stride() == (1, model.h[0].mlp.c_fc.weight.size(0))
            raise RuntimeError("stop here")
    assert {name: p.stride() for name, p in model.named_parameters()} == strides
    with torch.inference_mode():
        generate(model, torch.tensor([1, 2, 3]), 5, do_sample=False)
    assert not any(p.is_inference() for p in model.parameters())  # training can go on
    model(torch.tensor([[1, 2, 3]]), torch.tensor([[2, 3, 4]]))[1].backward()


def test_several_rows_keep_the_layout_as_it_is(monkeypatch):
    import lmbook.decoding.shared
    import lmbook.decoding.generate

    seen = []

    def spy(model, rows=1):
        seen.append(rows)
        return lmbook.decoding.shared.weights_in_out(model, rows)

    monkeypatch.setattr(lmbook.decoding.generate, "weights_in_out", spy)
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny"))
    generate(model, torch.tensor([[1, 2], [3, 4]]), 3, do_sample=False)
    generate(model, torch.tensor([1, 2]), 3, num_beams=3, do_sample=False)
    generate(model, torch.tensor([1, 2]), 3, num_return_sequences=2, seed=0)
    generate(model, torch.tensor([1, 2]), 3, do_sample=False)
    assert seen == [2, 3, 2, 1]
    with lmbook.decoding.shared.weights_in_out(model, rows=2):
        assert model.h[0].attn.c_attn.weight.is_contiguous()
