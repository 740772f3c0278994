"""lmbook.training.dpo: summed log-probabilities against a written-out loop, the loss and metrics against the
formula and against trl's DPOTrainer on the same token ids, ln 2 at the start, and the small training loop."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from lmbook.models.gpt import GPT, GPTConfig
from lmbook.models.lora import apply_lora
from lmbook.training.dpo import DPOBatches, dpo_loss, dpo_step, sequence_logprobs, train_dpo
from lmbook.training.optim import TrainConfig
from test_sft import char_tokenizer, tiny_llama

PROMPTS = [[3, 4, 5], [8], [13, 14, 15, 16], [19, 20]]
CHOSEN = [[6, 7], [9, 10, 11, 12], [18], [21, 22, 23]]
REJECTED = [[30, 31, 32], [33], [34, 35], [36, 37, 38, 39]]


def written_out(model, prompt, completion) -> float:
    """log p(completion | prompt), one token at a time, each read with the whole prefix before it."""
    ids, total = list(prompt), 0.0
    with torch.no_grad():
        for token in completion:
            logits = model(torch.tensor([ids]))[0][0, -1]
            total += logits.log_softmax(-1)[token].item()
            ids.append(token)
    return total


@pytest.mark.parametrize("make", [tiny_llama, lambda: GPT(GPTConfig.preset("tiny", vocab_size=40)).eval()],
                         ids=["llama", "gpt"])
def test_sequence_logprobs_equal_a_written_out_loop(make):
    model = make()
    got = sequence_logprobs(model, PROMPTS, CHOSEN)
    assert got.shape == (4,) and got.requires_grad  # a policy's: gradients flow through it
    want = torch.tensor([written_out(model, p, c) for p, c in zip(PROMPTS, CHOSEN)])
    torch.testing.assert_close(got.detach(), want, atol=1e-5, rtol=1e-5)
    assert len(set(got.tolist())) == 4


def test_dpo_loss_is_the_formula_and_its_metrics_trl_s():
    pc, pr = torch.tensor([-3.0, -5.0, -2.5]), torch.tensor([-4.0, -4.5, -6.0])
    rc, rr = torch.tensor([-3.5, -5.0, -2.0]), torch.tensor([-3.0, -5.0, -6.5])
    loss, metrics = dpo_loss(pc, pr, rc, rr, beta=0.5)
    d = [((a - b) - (c - e)) for a, b, c, e in zip(pc.tolist(), rc.tolist(), pr.tolist(), rr.tolist())]
    assert d == [1.5, -0.5, -1.0]
    want = sum(math.log1p(math.exp(-0.5 * v)) for v in d) / 3  # -log σ(βd) = log(1 + e^(-βd))
    assert loss.item() == pytest.approx(want, abs=1e-6)
    assert metrics["rewards/chosen"] == pytest.approx(0.5 * (0.5 + 0.0 - 0.5) / 3, abs=1e-7)
    assert metrics["rewards/rejected"] == pytest.approx(0.5 * (-1.0 + 0.5 + 0.5) / 3, abs=1e-7)
    assert metrics["rewards/margins"] == pytest.approx(0.5 * sum(d) / 3, abs=1e-7)
    assert metrics["rewards/accuracies"] == pytest.approx(1 / 3)
    assert metrics["logps/chosen"] == pytest.approx(-3.5) and metrics["logps/rejected"] == pytest.approx(-14.5 / 3)
    grad_loss, _ = dpo_loss(pc.clone().requires_grad_(), pr, rc, rr, beta=0.5)
    grad_loss.backward()  # the loss is differentiable in the policy's log-probabilities


def test_the_first_step_loss_is_ln_2_when_the_policy_is_the_reference():
    model = tiny_llama()
    loss, metrics = dpo_step(model, copy.deepcopy(model), PROMPTS, CHOSEN, REJECTED, beta=0.3)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["rewards/margins"] == 0 and metrics["rewards/accuracies"] == 0 and metrics["kl"] == 0
    assert metrics["logps/chosen"] == pytest.approx(sequence_logprobs(model, PROMPTS, CHOSEN).mean().item())


@pytest.mark.parametrize("call, error, message", [
    (lambda t: dpo_loss(t, t, t, t, beta=0.0), ValueError, "beta must be a finite number > 0"),
    (lambda t: dpo_loss(t, t, t, t, beta=-0.1), ValueError, "beta must be a finite number > 0"),
    (lambda t: dpo_loss(t, t, t, t, beta=float("nan")), ValueError, "beta must be"),
    (lambda t: dpo_loss(t, t, t, t, beta="0.1"), TypeError, "beta must be a number"),
    (lambda t: dpo_loss(t, t[:2], t, t), ValueError, "the same shape"),
    (lambda t: dpo_loss(t.long(), t, t, t), ValueError, "1-D float tensor"),
    (lambda t: dpo_loss([1.0], t, t, t), ValueError, "1-D float tensor"),
    (lambda t: sequence_logprobs(tiny_llama(), [3, 4], [5]), ValueError, "wrap a single example in a list"),
    (lambda t: sequence_logprobs(tiny_llama(), [[3, 4]], [[5], [6]]), ValueError, "one completion per prompt"),
    (lambda t: sequence_logprobs(tiny_llama(), [[3] * 20], [[5] * 6]), ValueError, "longer than the context"),
    (lambda t: sequence_logprobs(tiny_llama(), [[3]], [[]]), ValueError, "empty completion"),
    (lambda t: DPOBatches([([1], [2])], 1), ValueError, "prompt_ids, chosen_ids, rejected_ids"),
    (lambda t: DPOBatches(list(zip(PROMPTS, CHOSEN, REJECTED)), 5), ValueError, "more than the 4 triples"),
    (lambda t: train_dpo(tiny_llama(), DPOBatches(list(zip(PROMPTS, CHOSEN, REJECTED)), 2), TrainConfig(), 0),
     ValueError, "beta must be"),
])
def test_bad_arguments_are_refused_clearly(call, error, message):
    with pytest.raises(error, match=message):
        call(torch.tensor([-1.0, -2.0, -3.0]))


def test_dpo_loss_and_metrics_equal_trl_dpo_trainer(tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from lmbook.models.hf import from_hf_llama, to_hf_llama

    tok = char_tokenizer()
    prompts, chosen, rejected = ["q: two plus two? a:", "q: sky? a:", "q: say hi. a:"], [" four", " blue", " hi"], \
        [" five", " green and wet", " no"]
    policy = to_hf_llama(tiny_llama(block_size=48, vocab_size=len(tok)))
    args = trl.DPOConfig(output_dir=str(tmp_path), bf16=False, activation_checkpointing=False, use_cpu=True,
                         report_to="none", per_device_train_batch_size=3, beta=0.2, seed=0)
    data = Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": rejected})
    reference = copy.deepcopy(policy)
    trainer = trl.DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=data, processing_class=tok)
    rows = [trainer.train_dataset[i] for i in range(3)]
    # trl appends the tokenizer's EOS to plain-text answers and tokenizes the parts apart: so do we
    eos = [tok.eos_token_id]
    ids = [(tok(p)["input_ids"], tok(c)["input_ids"] + eos, tok(r)["input_ids"] + eos)
           for p, c, r in zip(prompts, chosen, rejected)]
    assert [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in rows] == ids
    inputs = trainer.data_collator(rows)
    trainer.model.train()
    with torch.no_grad():
        assert trainer.compute_loss(trainer.model, dict(inputs)).item() == pytest.approx(math.log(2), abs=1e-6)
        for p in trainer.model.parameters():  # the policy moves away from the reference
            p.add_(torch.randn_like(p) * 0.05)
        want = trainer.compute_loss(trainer.model, dict(inputs)).item()
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    ours_policy, ours_reference = from_hf_llama(trainer.model).eval(), from_hf_llama(reference).eval()
    p, c, r = map(list, zip(*ids))
    with torch.no_grad():
        logps = [sequence_logprobs(m, p, x) for m in (ours_policy, ours_reference) for x in (c, r)]
    loss, metrics = dpo_loss(*logps[:2], *logps[2:], beta=0.2)
    assert abs(want - math.log(2)) > 1e-3
    assert loss.item() == pytest.approx(want, abs=1e-5)
    for name, value in metrics.items():
        assert value == pytest.approx(logged[name], abs=1e-5), name


TRIPLES = list(zip(PROMPTS, CHOSEN, REJECTED))


def run(seed=0, lora=False, steps=12, reference=None):
    model = tiny_llama(std=0.3)
    if lora:
        apply_lora(model, targets=("self_attn.q_proj", "self_attn.v_proj"), r=4, alpha=8)
    config = TrainConfig(max_steps=steps, lr=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.0, seed=0)
    return model, train_dpo(model, DPOBatches(TRIPLES, batch_size=4, seed=seed), config, 0.5, reference)


def test_train_dpo_prefers_the_chosen_answers_and_is_deterministic():
    model, records = run()
    first, last = records[0], records[-1]
    assert set(first) == {"loss", "lr", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins",
                          "rewards/accuracies", "logps/chosen", "logps/rejected"}
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6) and first["kl"] == 0
    assert last["loss"] < 0.3 and last["rewards/accuracies"] == 1 and last["rewards/margins"] > 1
    assert last["kl"] > 0.01 and last["logps/chosen"] > first["logps/chosen"]  # the policy left the reference
    assert run()[1] == records  # the same seed, the same run
    assert run(seed=1)[1] != records


def test_the_reference_stays_frozen_and_defaults_to_the_starting_model():
    reference = tiny_llama(std=0.3)
    _, records = run(steps=4, reference=reference)
    assert not any(p.requires_grad for p in reference.parameters())
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), tiny_llama(std=0.3).parameters()))
    assert run(steps=4)[1] == records  # without one, a copy of the model as it starts
    assert run(steps=4, reference=tiny_llama(seed=1, std=0.3))[1] != records
    model = tiny_llama()
    with pytest.raises(ValueError, match="frozen copy, not the model being trained"):
        train_dpo(model, DPOBatches(TRIPLES, 2), TrainConfig(max_steps=1), reference=model)


def test_train_dpo_trains_only_the_adapters_of_a_lora_model():
    model, records = run(lora=True, steps=6)
    assert records[-1]["loss"] < records[0]["loss"]
    base = tiny_llama(std=0.3)
    state = dict(model.named_parameters())
    for name, weight in base.named_parameters():
        wrapped = name.replace("q_proj.", "q_proj.base.").replace("v_proj.", "v_proj.base.")
        assert torch.equal(state[name if name in state else wrapped], weight), name


def test_the_kl_is_the_exact_divergence_on_the_chosen_tokens():
    policy, reference = tiny_llama(seed=0), tiny_llama(seed=1)
    _, metrics = dpo_step(policy, reference, PROMPTS[:2], CHOSEN[:2], REJECTED[:2])
    kls = []
    with torch.no_grad():
        for prompt, answer in zip(PROMPTS[:2], CHOSEN[:2]):
            ids = torch.tensor([prompt + answer[:-1]])
            p, q = policy(ids)[0][0, len(prompt) - 1:], reference(ids)[0][0, len(prompt) - 1:]  # answer positions
            kls += F.kl_div(q.log_softmax(-1), p.log_softmax(-1), log_target=True, reduction="none").sum(-1).tolist()
    assert len(kls) == 6 and metrics["kl"] == pytest.approx(sum(kls) / 6, rel=1e-5)
