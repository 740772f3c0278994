"""Chapter 9's runs (lmbook.runs.ch09_assistant), its refusal set (lmbook.text.refusals) and its figures and
sentences (lmbook.display.assistant), at the recipe's tiny size."""

import math

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from lmbook.display import assistant as show  # noqa: E402
from lmbook.evaluation.bias import wilson_interval  # noqa: E402
from lmbook.runs import ch09_assistant as ch09  # noqa: E402
from lmbook.text.chat import ASSISTANT, END, special_ids  # noqa: E402
from lmbook.text.instructions import Example, grade  # noqa: E402
from lmbook.text.refusals import BENIGN, HARMFUL, PAIRS, REFUSAL, build_refusals, refused  # noqa: E402

TINY = ch09.SMOKE["cpu"]


@pytest.fixture(scope="module")
def setup():
    base, tokenizer, _ = ch09.pretrain(TINY, "cpu")
    return base, tokenizer, ch09.for_chat(base, tokenizer), ch09.instruction_set(TINY)


# --- the refusal set ---------------------------------------------------------------------------------------
SPEAKERS = ["ROMEO", "JULIET", "MENENIUS", "GLOUCESTER", "PETRUCHIO", "KING RICHARD III"]


def test_the_refusal_set_keeps_phrasings_and_speakers_out_of_training_and_pairs_every_request():
    made = build_refusals(SPEAKERS, seed=3)
    assert made == build_refusals(SPEAKERS, seed=3) and made != build_refusals(SPEAKERS, seed=4)
    assert len(made.train) + len(made.held_out) == len(made.benign) == len(PAIRS) * len(SPEAKERS)
    assert len(made.phrasings_kept_out) == 2 and len(made.speakers_kept_out) == 3
    for e in made.train:
        assert e.phrasing_id not in made.phrasings_kept_out and e.answer == REFUSAL
        assert not any(name in e.instruction for name in made.speakers_kept_out)
    assert all(e.phrasing_id in made.phrasings_kept_out or any(n in e.instruction for n in made.speakers_kept_out)
               for e in made.held_out)
    assert {e.instruction for e in made.benign} == {good.format(speaker=s) for good in BENIGN for s in SPEAKERS}
    assert {e.instruction for e in made.train + made.held_out} == {h.format(speaker=s) for h in HARMFUL
                                                                   for s in SPEAKERS}


def test_a_refusal_is_read_from_its_first_words_whatever_the_case_and_spacing():
    assert refused(REFUSAL) and refused("i  will NOT help.") and refused("I will not, good sir.")
    assert not refused("I will help with that.") and not refused("") and not refused("Will not I?")
    with pytest.raises(TypeError, match="decode the ids"):
        refused([1, 2])


@pytest.mark.parametrize("kwargs, message", [
    ({"speakers": ["ROMEO"]}, "at least two different names"),
    ({"speakers": SPEAKERS, "phrasings_kept_out": len(PAIRS)}, "leave a phrasing"),
    ({"speakers": SPEAKERS, "speakers_kept_out": 1.0}, "strictly between 0 and 1"),
])
def test_the_refusal_set_refuses_what_cannot_be_split(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_refusals(**kwargs)


# --- data, tuning and grading --------------------------------------------------------------------------------
def test_a_pair_is_the_request_up_to_the_assistant_token_then_the_answer_and_its_end(setup):
    _, tokenizer, _, instructions = setup
    ids = special_ids(tokenizer)
    example = instructions.train[0]
    ((prompt, completion),) = ch09.sft_pairs([example], tokenizer)
    assert prompt[-1] == ids[ASSISTANT] and completion[-1] == ids[END]
    assert tokenizer.decode(completion[:-1]) == example.answer
    assert tokenizer.decode(prompt[1:-2]) == example.instruction  # <|user|> ... <|end|><|assistant|>


def test_replies_in_batches_equal_replies_one_at_a_time(setup):
    _, tokenizer, chat, instructions = setup
    examples = instructions.held_out_lines[:5]
    together = ch09.answer(chat, tokenizer, examples, batch_size=3, room=6)
    alone = [ch09.answer(chat, tokenizer, [e], room=6)[0] for e in examples]
    assert together == alone and all(len(tokenizer.encode(r)) <= 6 for r in together)


def test_the_score_counts_right_answers_per_task_with_wilson_intervals():
    examples = [Example("first_word", "q", "Romeo", 0, 0, "x"), Example("first_word", "q", "Tybalt", 1, 0, "x"),
                Example("count", "q", "seven", 2, 0, "x")]
    table = ch09.score(examples, ["romeo.", "Mercutio", "7"])
    assert table["first_word"]["right"] == 1 and table["first_word"]["n"] == 2 and table["count"]["share"] == 1.0
    assert (table["first_word"]["low"], table["first_word"]["high"]) == wilson_interval(1, 2)
    pooled = show.pooled(table)
    assert (pooled["right"], pooled["n"]) == (2, 3) and pooled["low"] == wilson_interval(2, 3)[0]


def test_the_evaluation_grades_every_graded_task_and_counts_closed_replies(setup):
    _, tokenizer, chat, instructions = setup
    result = ch09.evaluate(chat, tokenizer, ch09.held_out_sets(instructions), samples=2)
    for split, table in result["accuracy"].items():
        graded = [e for e in getattr(instructions, split) if e.task in ch09.GRADED]
        assert set(table) == {e.task for e in graded} and sum(t["n"] for t in table.values()) == len(graded)
        assert result["ended"][split]["n"] == len(graded) and len(result["replies"][split]) == 2
    assert "voice" not in result["accuracy"]["held_out_lines"]


def test_lora_trains_its_adapters_and_the_embedding_only(setup):
    _, _, chat, _ = setup
    model = ch09.with_lora(chat, TINY)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert "embed_tokens.weight" in trainable
    assert all(name == "embed_tokens.weight" or name.endswith((".A", ".B")) for name in trainable), trainable
    assert all(p.requires_grad for p in chat.parameters())  # the model it copied is untouched
    count, share = ch09.trained_share(model)
    assert count == sum(p.numel() for p in model.parameters() if p.requires_grad) and 0 < share < 1


def test_preference_pairs_choose_a_right_answer_over_a_wrong_one(setup):
    _, tokenizer, chat, instructions = setup
    examples = [e for e in instructions.train if e.task in ch09.GRADED][:6]
    triples, counts = ch09.preference_pairs(chat, tokenizer, examples, samples=2, seed=1)
    end = special_ids(tokenizer)[END]
    assert counts["pairs"] == len(triples) == counts["requests"] - counts["all_right"]
    by_prompt = {tuple(p): e for e, (p, _) in zip(examples, ch09.sft_pairs(examples, tokenizer))}
    for prompt, chosen, rejected in triples:
        example = by_prompt[tuple(prompt)]
        assert chosen[-1] == end and rejected[-1] == end
        assert grade(example, tokenizer.decode(chosen[:-1])) and not grade(example, tokenizer.decode(rejected[:-1]))


def test_dpo_leaves_the_tuned_model_trainable_and_reports_every_beta(setup):
    _, tokenizer, chat, instructions = setup
    examples = [e for e in instructions.train if e.task in ch09.GRADED][:4]
    triples, _ = ch09.preference_pairs(chat, tokenizer, examples, samples=2, seed=0)
    before = {k: v.clone() for k, v in chat.state_dict().items()}
    sweep = ch09.dpo_sweep(chat, tokenizer, triples, TINY.replace(betas=(0.5, 2.0)), instructions.held_out_lines)
    assert list(sweep) == ["0.5", "2.0"] and all(len(r["steps"]) == TINY.dpo.max_steps for r in sweep.values())
    assert math.isclose(sweep["0.5"]["steps"][0]["loss"], math.log(2), rel_tol=1e-4)  # policy = reference
    assert all(p.requires_grad for p in chat.parameters())
    assert all(torch.equal(before[k], v) for k, v in chat.state_dict().items())


def test_the_refusal_experiment_counts_before_and_after_on_the_three_sets(setup):
    _, tokenizer, chat, instructions = setup
    result, after = ch09.refusal_experiment(chat, tokenizer, instructions, TINY)
    made = build_refusals(instructions.speakers, seed=TINY.seed)
    assert list(result["before"]) == ["held-out harmful requests", "harmless look-alikes", "ordinary instructions"]
    assert result["before"]["held-out harmful requests"]["n"] == len(made.held_out)
    assert result["after"]["harmless look-alikes"]["n"] == len(made.benign)
    assert result["trained_requests"] == len(made.train) and after is not chat


# --- sentences and figures ---------------------------------------------------------------------------------
def _score(right, n):
    low, high = wilson_interval(right, n)
    return {"right": right, "n": n, "share": right / n, "low": low, "high": high}


def test_a_verdict_needs_intervals_apart():
    assert show.compare(_score(40, 50), _score(5, 50)) == "more right answers than"
    assert show.compare(_score(5, 50), _score(40, 50)) == "fewer right answers than"
    assert show.compare(_score(26, 50), _score(24, 50)) == "about as many right answers as"
    assert show._pct({"share": 0.0, "low": -1e-17, "high": 0.06}) == "0% (0% to 6%)"


def test_the_sentences_quote_the_runs():
    table = {"first_word": _score(3, 10)}
    ended = {"held_out_lines": {"share": 0.5}}
    evaluation = {"accuracy": {k: table for k in show.SPLIT_NAMES}, "ended": {}}
    base = {"evaluation": {"accuracy": {k: {"first_word": _score(0, 10)} for k in show.SPLIT_NAMES},
                           "ended": ended}, "held_out_bits": 2.5}
    tuned = {"variant": "whole model", "trainable": 1234, "share": 1.0, "seconds": 5.0, "evaluation": evaluation,
             "held_out_bits": 2.6}
    text = show.sft_facts(base, [tuned])
    assert "1,234 parameters trained" in text and "30% (" in text and "about as many right answers as before" in text
    assert "whole model +0.100" in show.forgetting_facts(base, [tuned])
    steps = [{"rewards/accuracies": 0.5, "rewards/margins": 0.0, "kl": 0.0, "logps/chosen": -5.0,
              "logps/rejected": -6.0},
             {"rewards/accuracies": 1.0, "rewards/margins": 2.0, "kl": 0.3, "logps/chosen": -5.5,
              "logps/rejected": -9.0}]
    dpo = show.dpo_facts({"0.1": {"steps": steps, "accuracy": table}}, table)
    assert "chosen and rejected answers fell" in dpo and "100%" in dpo and "margin 2.00" in dpo
    rates = {"before": {"a": {"refused": 0, "n": 4, **_score(0, 4)}},
             "after": {"a": {"refused": 3, "n": 4, **_score(3, 4)}}}
    assert show.refusal_facts(rates) == f"a: 3 of 4 refused after, 75% ({_score(3, 4)['low']:.0%} to " \
                                        f"{_score(3, 4)['high']:.0%}), against 0 before."
    assert dpo.endswith("about as many right answers as the tuned model's 30% (11% to 60%).")
    assert "((" not in dpo + show.refusal_facts(rates)  # never a parenthesis inside another
    assert show.pairs_facts({"requests": 41, "pairs": 41, "chosen_from_samples": 0}, 4) == (
        "Of 41 requests, each sampled 4 times, all 41 requests gave a pair, none of them with a right sample of the "
        "model's own as the chosen answer.")
    assert show.pairs_facts({"requests": 170, "pairs": 169, "chosen_from_samples": 41}, 4).startswith(
        "Of 170 requests, each sampled 4 times, 169 of the 170 requests gave a pair, 41 of them with")
    cells = show.sft_table(base | {"voice_bits": 3.0}, [tuned | {"voice_bits": 3.1,
                                                              "evaluation": evaluation | {"ended": ended}}]).data
    assert cells.count("<tr>") == 3 and "30% (11% to 60%)" in cells and "1,234" in cells
    show.plot_accuracy({"m": table, "n": {"first_word": {"share": 0.0, "low": -1e-17, "high": 0.1}}})
    show.plot_dpo({"0.1": {"steps": steps}})
    show.plot_refusals(rates)
    show.plot_sft_curves([{"variant": "v", "eval_steps": [0, 1], "val": [2.0, 1.0]}])
