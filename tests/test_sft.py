"""lmbook.training.sft: the masked loss against a written-out formula, padding and packing as the docstring states
them, the batch source with the book's training loop (full fine-tuning and LoRA), and the loss equal to trl's
SFTTrainer on the same examples."""

from __future__ import annotations

import pytest
import torch

from lmbook.models.llama import Llama, LlamaConfig
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.models.lora import apply_lora
from lmbook.training.optim import TrainConfig
from lmbook.training.sft import SFTBatch, SFTBatches, make_sft_batch, sft_loss, sft_tokens
from lmbook.training.train import train

EXAMPLES = [([3, 4, 5], [6, 7]), ([8], [9, 10, 11, 12]), ([13, 14, 15, 16, 17], [18]), ([19, 20], [21, 22, 23])]


def tiny_llama(seed=0, std=0.1, block_size=24, vocab_size=40) -> Llama:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    model = Llama(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model


def token_losses(model, prompt, completion) -> torch.Tensor:
    """Written out: -log p(next token) at every position of one example read alone (n-1,)."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logp = model(ids[:, :-1])[0][0].log_softmax(-1)  # (n-1, V)
    return -logp.gather(-1, ids[0, 1:, None]).squeeze(-1)


def test_sft_tokens_mask_the_prompt_or_nothing():
    x, y = sft_tokens([3, 4, 5], [6, 7])
    assert x.tolist() == [3, 4, 5, 6] and y.tolist() == [-1, -1, 6, 7]  # 5 predicts 6: the first answer token
    x, y = sft_tokens([3, 4, 5], [6, 7], completion_only=False)
    assert x.tolist() == [3, 4, 5, 6] and y.tolist() == [4, 5, 6, 7]


@pytest.mark.parametrize("completion_only", [True, False])
def test_the_masked_loss_is_the_written_out_mean_over_answer_tokens(completion_only):
    model = tiny_llama()
    got = sft_loss(model, make_sft_batch(EXAMPLES, model.context_length, completion_only))
    losses = []
    for prompt, completion in EXAMPLES:
        per_token = token_losses(model, prompt, completion)
        losses.append(per_token[len(prompt) - 1:] if completion_only else per_token)
    want = torch.cat(losses).mean()  # every labelled token weighs the same, whatever its example's length
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    per_example = torch.stack([piece.mean() for piece in losses])
    assert not torch.allclose(got, per_example.mean(), atol=1e-4)  # not the mean of the examples' means


@pytest.mark.parametrize("make", [tiny_llama, lambda: GPT(GPTConfig.preset("tiny", vocab_size=40)).eval()],
                         ids=["llama", "gpt"])
def test_right_padding_needs_no_mask_for_the_causal_models(make):
    model = make()
    batch = make_sft_batch(EXAMPLES, model.context_length)
    assert batch.x.shape == (4, 5) and batch.attention_mask.sum(1).tolist() == [4, 4, 5, 4]
    assert (batch.y[batch.attention_mask == 0] == -1).all() and (batch.x[batch.attention_mask == 0] == 0).all()
    with torch.no_grad():
        padded = model(batch.x)[0]
        for row, (prompt, completion) in enumerate(EXAMPLES):  # each real position equals the example alone
            n = len(prompt) + len(completion) - 1
            torch.testing.assert_close(padded[row, :n], model(batch.x[row:row + 1, :n])[0][0], atol=1e-5, rtol=1e-5)
    counts = torch.tensor([len(c) for _, c in EXAMPLES], dtype=torch.float)
    alone = torch.stack([sft_loss(model, make_sft_batch([e], model.context_length)) for e in EXAMPLES])
    torch.testing.assert_close(sft_loss(model, batch), (alone * counts).sum() / counts.sum(), atol=1e-6, rtol=1e-6)


def test_packing_masks_the_boundaries_and_attention_crosses_them():
    model = tiny_llama(block_size=12)
    batch = make_sft_batch(EXAMPLES, 12, completion_only=False, packing=True)
    # 5 + 5 tokens make 9 inputs; the third example (6) would make 15 > 12; then 6 + 5 make 10 inputs
    assert batch.x.tolist() == [[3, 4, 5, 6, 7, 8, 9, 10, 11, 0], [13, 14, 15, 16, 17, 18, 19, 20, 21, 22]]
    assert batch.y.tolist() == [[4, 5, 6, 7, -1, 9, 10, 11, 12, -1], [14, 15, 16, 17, 18, -1, 20, 21, 22, 23]]
    assert batch.labelled == make_sft_batch(EXAMPLES, 12, completion_only=False).labelled  # nothing lost
    masked = make_sft_batch(EXAMPLES, 12, packing=True)
    assert masked.y.tolist()[0] == [-1, -1, 6, 7, -1, 9, 10, 11, 12, -1]
    with torch.no_grad():
        logp = model(batch.x)[0].log_softmax(-1)
    packed = -logp[0].gather(-1, batch.y[0].clamp(min=0)[:, None]).squeeze(-1)  # (10,)
    torch.testing.assert_close(packed[:4], token_losses(model, *EXAMPLES[0]), atol=1e-5, rtol=1e-5)  # first: alone
    second = token_losses(model, *EXAMPLES[1])
    assert (packed[5:9] - second).abs().max() > 1e-3  # the second example sees the first: attention crosses


def test_sft_loss_on_a_transformers_model_with_its_mask():
    from lmbook.models.hf import to_hf_llama

    model = tiny_llama()
    batch = make_sft_batch(EXAMPLES, model.context_length)
    torch.testing.assert_close(sft_loss(to_hf_llama(model).eval(), batch), sft_loss(model, batch),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("call, error, message", [
    (lambda: make_sft_batch([], 8), ValueError, "non-empty list of"),
    (lambda: make_sft_batch([([1], [])], 8), ValueError, "empty completion"),
    (lambda: make_sft_batch([([], [1])], 8), ValueError, "empty prompt"),
    (lambda: make_sft_batch([([1, 2], [3])], 8, pad_id=-1), ValueError, "pad_id must be >= 0"),
    (lambda: make_sft_batch([([1, -2], [3])], 8), ValueError, "token ids"),
    (lambda: make_sft_batch([("ab", [3])], 8), TypeError, "encode text with the tokenizer"),
    (lambda: make_sft_batch([([1, 2],)], 8), ValueError, "must be a pair"),
    (lambda: make_sft_batch([([1] * 6, [2] * 4)], 8), ValueError, r"10 tokens .*longer than the context.* 9 fit"),
    (lambda: make_sft_batch(EXAMPLES, None, packing=True), ValueError, "packing fills rows of context_length"),
    (lambda: make_sft_batch(EXAMPLES, 0), ValueError, "context_length must be >= 1"),
    (lambda: make_sft_batch(EXAMPLES, 9, completion_only="yes"), TypeError, "completion_only must be True or False"),
    (lambda: sft_loss(tiny_llama(), "batch"), TypeError, "SFTBatch"),
    (lambda: SFTBatches(EXAMPLES, batch_size=5, context_length=9), ValueError, "more than the 4 examples"),
    (lambda: SFTBatches(EXAMPLES, batch_size=0, context_length=9), ValueError, "batch_size must be a positive"),
])
def test_bad_arguments_are_refused_clearly(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_batch_without_labelled_targets_is_refused():
    batch = SFTBatch(torch.tensor([[1, 2]]), torch.tensor([[-1, -1]]), torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="no labelled target"):
        sft_loss(tiny_llama(), batch)


def test_an_example_that_fills_the_context_exactly_fits():
    batch = make_sft_batch([([1] * 5, [2] * 4)], 8)  # 9 tokens: the model reads 8
    assert batch.x.shape == (1, 8) and batch.labelled == 4


def test_the_batch_source_is_seeded_and_resumes():
    source = SFTBatches(EXAMPLES, batch_size=2, context_length=12, seed=3)
    again = SFTBatches(EXAMPLES, batch_size=2, context_length=12, seed=3)
    first = [source() for _ in range(3)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, [again() for _ in "abc"]))
    state = source.state_dict()
    later = source()
    source.load_state_dict(state)
    assert torch.equal(source()[1], later[1])
    other = SFTBatches(EXAMPLES, batch_size=2, context_length=12, seed=4)
    assert any(not torch.equal(a[0], other()[0]) for a in first)
    packed = SFTBatches(EXAMPLES, batch_size=4, context_length=12, packing=True)()
    assert packed[0].shape == (2, 10)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_the_book_loop_fine_tunes_with_the_masked_loss(lora):
    model = tiny_llama(std=0.3).train()  # weights large enough that adapters on q and v move the logits
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    if lora:
        apply_lora(model, targets=("self_attn.q_proj", "self_attn.v_proj"), r=4, alpha=8)
    batch = make_sft_batch(EXAMPLES, model.context_length)
    before = sft_loss(model, batch).item()
    config = TrainConfig(max_steps=30, lr=3e-2 if lora else 1e-2, warmup_steps=0, schedule="constant",
                         weight_decay=0.0, log_interval=10, progress=False, seed=0)
    train(model, SFTBatches(EXAMPLES, batch_size=4, context_length=model.context_length), config)
    after = sft_loss(model, batch).item()
    assert after < 0.6 * before, (before, after)
    state = dict(model.named_parameters())
    if lora:  # only the adapters moved
        for name, weight in frozen.items():
            wrapped = name.replace("q_proj.", "q_proj.base.").replace("v_proj.", "v_proj.base.")
            assert torch.equal(state[name if name in state else wrapped], weight), name
    else:
        assert not torch.equal(state["layers.0.self_attn.q_proj.weight"], frozen["layers.0.self_attn.q_proj.weight"])


def char_tokenizer():
    """A character-level PreTrainedTokenizerFast with an end-of-text and a padding token, built offline."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = "abcdefghijklmnopqrstuvwxyz ?.:"
    vocab = {"<pad>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>")


PAIRS = [("q: two plus two? a:", " four"), ("q: sky? a:", " blue and wide"), ("q: say hi. a:", " hi"),
         ("q: one plus one plus one? a:", " three")]


@pytest.mark.parametrize("completion_only", [True, False])
def test_the_masked_loss_equals_trl_sft_trainer(tmp_path, completion_only):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from lmbook.models.hf import to_hf_llama

    tok = char_tokenizer()
    model = tiny_llama(block_size=48, vocab_size=len(tok))
    args = trl.SFTConfig(output_dir=str(tmp_path), bf16=False, activation_checkpointing=False, use_cpu=True,
                         report_to="none", max_length=64, per_device_train_batch_size=4, seed=0,
                         completion_only_loss=completion_only)
    data = Dataset.from_dict({"prompt": [p for p, _ in PAIRS], "completion": [c for _, c in PAIRS]})
    trainer = trl.SFTTrainer(model=to_hf_llama(model), args=args, train_dataset=data, processing_class=tok)
    rows = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    inputs = trainer.data_collator(rows)
    with torch.no_grad():
        want = trainer.compute_loss(trainer.model, inputs)
    # The same examples through our own path: trl appends the tokenizer's EOS to plain-text answers, so we do too.
    examples = [(tok(p)["input_ids"], tok(c)["input_ids"] + [tok.eos_token_id]) for p, c in PAIRS]
    assert [r["input_ids"] for r in rows] == [p + c for p, c in examples]
    batch = make_sft_batch(examples, model.context_length, completion_only)
    assert torch.equal(inputs["labels"][:, 1:] != -100, batch.y != -1)  # the same tokens learned (labels unshifted)
    with torch.no_grad():
        got = sft_loss(model, batch)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
