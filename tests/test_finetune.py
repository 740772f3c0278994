"""lmbook.training.finetune: examples encoded, the classification head, and chapter 4's pipeline at a tiny size."""

import dataclasses
import random

import pytest
import torch

from lmbook.training.finetune import (
    ExampleBatches,
    SequenceClassifier,
    accuracy,
    encode_examples,
    freeze_backbone,
    labelled_subset,
)
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.models.mlm import Encoder

class Chars:
    """A stand-in tokenizer: one id per byte."""

    vocab_size = 256

    def encode(self, text):
        return list(text.encode())


def test_encode_examples_pads_with_minus_one():
    x, y = encode_examples(["ab", "abcdef", ""], [0, 1, 1], Chars(), block_size=4)
    assert x.tolist() == [[97, 98, -1, -1], [97, 98, 99, 100]]  # cut to 4 tokens; the empty text left out
    assert y.tolist() == [0, 1]


def test_labelled_subset():
    x, y = torch.arange(30)[:, None], torch.arange(30) % 3
    xs, ys = labelled_subset(x, y, per_class=4, seed=0)
    assert ys.bincount().tolist() == [4, 4, 4]
    assert torch.equal(xs[:, 0] % 3, ys)  # examples keep their labels
    assert labelled_subset(x, y, None)[0] is x
    with pytest.raises(ValueError, match="at least one labelled example per class"):
        labelled_subset(x, y, per_class=0)
    with pytest.raises(ValueError, match="fewer than"):
        labelled_subset(x, y, per_class=11)


def classifier(seed=0, pool="mean"):
    torch.manual_seed(seed)
    return SequenceClassifier(GPT(GPTConfig.preset("tiny", vocab_size=20, block_size=12)), n_classes=3, pool=pool)


@pytest.mark.parametrize("pool", ["mean", "last"])
def test_classifier_shapes_and_padding(pool):
    model = classifier(pool=pool).eval()
    x = torch.randint(20, (4, 7))
    x[1, 4:] = -1  # a shorter sequence
    logits, loss = model(x, torch.tensor([0, 1, 2, 0]))
    assert logits.shape == (4, 3) and loss.ndim == 0
    padded = torch.cat([x, torch.full((4, 5), -1)], dim=1)  # more padding changes nothing
    assert torch.allclose(model(padded)[0], logits, atol=1e-6)
    alone = model(x[1:2, :4])[0]  # the short one, without padding
    assert torch.allclose(alone, logits[1:2], atol=1e-5)
    with pytest.raises(ValueError, match="at least one real token"):
        model(torch.full((1, 3), -1))


def test_gradients_reach_the_backbone_only_in_full_fine_tuning():
    x, y = torch.randint(20, (4, 6)), torch.tensor([0, 1, 2, 1])
    full = classifier()
    full(x, y)[1].backward()
    assert full.head.weight.grad.abs().sum() > 0
    assert full.backbone.h[0].attn.c_attn.weight.grad.abs().sum() > 0
    assert full.backbone.wte.weight.grad.abs().sum() > 0

    probe = freeze_backbone(classifier())
    probe(x, y)[1].backward()
    assert probe.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in probe.backbone.parameters())


def test_classifier_learns_with_the_training_loop():
    from lmbook.training.train import TrainConfig, train

    generator = torch.Generator().manual_seed(0)
    x = torch.randint(1, 20, (120, 8), generator=generator)
    y = (x[:, 0] % 3)  # the class is written in the first token
    model = classifier()
    before = accuracy(model, x, y)
    config = TrainConfig(max_steps=60, lr=3e-3, warmup_steps=0, eval_interval=60, progress=False, weight_decay=0.0)
    train(model, ExampleBatches(x, y, batch_size=32, seed=0), config)
    assert accuracy(model, x, y) > max(0.8, before + 0.3)


def test_classifier_refuses_bad_settings():
    backbone = GPT(GPTConfig.preset("tiny"))
    with pytest.raises(ValueError, match="pool"):
        SequenceClassifier(backbone, 3, pool="max")
    with pytest.raises(ValueError, match="at least 2 classes"):
        SequenceClassifier(backbone, 1)
    with pytest.raises(ValueError, match="bidirectional"):
        SequenceClassifier(Encoder(GPTConfig.preset("tiny")), 3)


def test_example_batches_cut_padding():
    x = torch.tensor([[1, 2, -1, -1, -1], [3, -1, -1, -1, -1]])
    xb, yb = ExampleBatches(x, torch.tensor([0, 1]), batch_size=6, seed=0)()
    assert xb.shape == (6, 2) and yb.shape == (6,)
    with pytest.raises(ValueError, match="as many labels"):
        ExampleBatches(x, torch.tensor([0]), batch_size=2)


def test_the_chapter_pipeline_runs_at_a_tiny_size():
    """Every experiment of chapter 4, a few steps each, on a made-up play."""
    from lmbook.runs.ch04_finetune import (ChapterRun, adapt, compare_methods, label_sweep, prepare, pretrain,
                                           regularisation_runs, task_data)

    rng = random.Random(0)
    words = "thou art the sun and moon my lord good night sweet prince of love".split()
    play = "\n\n".join(
        f"{rng.choice(['ROMEO', 'JULIET', 'NURSE'])}:\n"
        + "\n".join(" ".join(rng.choices(words, k=6)) for _ in range(2))
        for _ in range(120)
    ) + "\n"
    run = ChapterRun(vocab_size=270, n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, max_steps=3,
                     mlm_steps=2, lr=1e-3, warmup_steps=1, eval_interval=3, eval_iters=1, adapt_steps=3, adapt_lr=1e-3,
                     classify_steps=3, classify_lr=1e-3, probe_lr=1e-3, lora_lr=1e-3, per_class=(1, None),
                     n_speakers=2, small_tokens=300, overfit_batch_size=4, overfit_steps=4, hf_steps=1)
    data = prepare(run, play)
    gpt, history = pretrain(run, data, device="cpu")
    assert history.eval_steps == [0, 3] and type(gpt) is GPT
    encoder, mlm_history = pretrain(run, data, causal=False, device="cpu")
    assert isinstance(encoder, Encoder) and encoder.config.vocab_size == data.tokenizer.vocab_size + 1
    assert mlm_history.steps == [0, 1]
    run = dataclasses.replace(run, adapt_speaker=data.corpus.speakers[0])
    adapted, adapt_history = adapt(gpt, run, data)
    assert set(adapt_history.eval_loss) == {run.adapt_speaker, "rest"}
    assert not torch.equal(adapted.wte.weight, gpt.wte.weight)  # a trained copy; the original is left alone
    runs = regularisation_runs(run, data, "cpu")
    assert len(runs) == 4 and all(set(h.eval_loss) == {"train", "val"} for h in runs.values())
    task = task_data(run, data)
    assert task["classes"] == ["shuffled", "in order"] and len(task["x_test"]) > 0
    sweep = label_sweep(gpt, run, task)
    assert set(sweep) == {"pretrained", "scratch"} and set(sweep["scratch"]) == {1, None}
    methods = compare_methods(gpt, run, task)
    trainable = {m: r["trainable"] for m, r in methods.items()}
    assert trainable["linear probe"] == 16 * 2 + 2  # the head alone
    assert trainable["linear probe"] < trainable["LoRA"] < trainable["full fine-tuning"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in methods.values())
