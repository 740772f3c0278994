"""The encoder–decoder of chapter 3b (lmbook.models.seq2seq): cross-attention written out equals PyTorch's on the same
weights, the wrapper around nn.Transformer masks what it must, and greedy and beam decoding do what they say."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmbook.models.seq2seq import (Packed, Seq2Seq, Seq2SeqConfig, attend, beam_decode, causal_tgt_mask,
                                   cross_attention, decoder_layer, greedy_decode)
from lmbook.training.optim import TrainConfig
from lmbook.training.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def padded_memory(B=3, S=7, C=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    memory = torch.randn(B, S, C, generator=g)
    padding = torch.zeros(B, S, dtype=torch.bool)
    padding[0, 4:] = True  # the first source is shorter
    return memory, padding


@pytest.mark.parametrize("bias", [True, False])
def test_cross_attention_equals_multihead_attention_on_the_same_weights(bias):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, bias=bias, batch_first=True).eval()
    x = torch.randn(3, 5, 32)
    memory, padding = padded_memory()
    out, weights = cross_attention(x, memory, mha, padding)
    ref, ref_weights = mha(x, memory, memory, key_padding_mask=padding, average_attn_weights=False)
    assert out.shape == (3, 5, 32) and weights.shape == (3, 4, 5, 7)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights, ref_weights, atol=1e-6, rtol=1e-5)
    assert weights[0, :, :, 4:].abs().max() == 0  # no weight on the padding
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 5))


def test_causal_self_attention_written_out_equals_pytorch():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    x = torch.randn(2, 6, 16)
    out, weights = attend(x, x, mha, causal=True)
    ref, _ = mha(x, x, x, attn_mask=causal_tgt_mask(6), need_weights=False)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    assert weights[..., 0, 1:].abs().max() == 0  # the first position sees only itself


@pytest.mark.parametrize("norm_first", [True, False])
def test_a_decoder_layer_written_out_equals_transformer_decoder_layer(norm_first):
    torch.manual_seed(2)
    layer = nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
    x = torch.randn(3, 5, 32)
    memory, padding = padded_memory()
    ref = layer(x, memory, tgt_mask=causal_tgt_mask(5), tgt_is_causal=True, memory_key_padding_mask=padding)
    torch.testing.assert_close(decoder_layer(layer, x, memory, padding), ref, atol=1e-5, rtol=1e-5)


def test_attend_refuses_mismatched_shapes():
    mha = nn.MultiheadAttention(16, 2, batch_first=True)
    with pytest.raises(ValueError, match="must share B and C"):
        attend(torch.randn(2, 3, 16), torch.randn(3, 4, 16), mha)


def tiny(**changes) -> Seq2Seq:
    torch.manual_seed(0)
    return Seq2Seq(Seq2SeqConfig.preset("tiny", **changes)).eval()


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, 20, (4, 8), generator=g)
    src[0, 5:] = 0  # padding
    tgt = torch.randint(3, 20, (4, 9), generator=g)
    tgt[:, 0] = 1
    return src, tgt


def test_forward_equals_encode_then_decode():
    model = tiny()
    src, tgt = batch()
    logits, loss = model(src, tgt, tgt)
    assert logits.shape == (4, 9, 20)
    torch.testing.assert_close(model.decode(tgt, model.encode(src), src == 0), logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 20), tgt.reshape(-1)))


def test_the_decoder_sees_no_later_target_and_the_whole_source():
    model = tiny()
    src, tgt = batch()
    logits = model(src, tgt)[0]
    later = tgt.clone()
    later[:, 5:] = 3
    torch.testing.assert_close(model(src, later)[0][:, :5], logits[:, :5])  # positions before 5 unchanged
    other = src.clone()
    other[1:, -1] = 4  # the last source token of rows 1..3
    assert (model(other, tgt)[0][1:, 0] - logits[1:, 0]).abs().max() > 1e-4  # even the first target reads it


def test_padding_the_source_further_changes_nothing():
    model = tiny()
    src, tgt = batch()
    short = model(src[:1, :5], tgt[:1])[0]
    torch.testing.assert_close(model(src[:1], tgt[:1])[0], short, atol=1e-5, rtol=1e-5)  # src[0, 5:] is padding


def test_packed_is_the_same_model_in_one_tensor():
    model = tiny()
    src, tgt = batch()
    x = torch.cat([src, tgt], dim=1)
    torch.testing.assert_close(Packed(model)(x, tgt)[1], model(src, tgt, tgt)[1])
    with pytest.raises(ValueError, match="first S = 8 columns"):
        Packed(model)(src, tgt)


def test_clear_errors():
    model = tiny()
    src, tgt = batch()
    with pytest.raises(ValueError, match="longer than the model's 8 positions"):
        model(torch.cat([src, src], 1), tgt)
    with pytest.raises(ValueError, match="targets must be a tensor of tgt's shape"):
        model(src, tgt, tgt[:, :3])
    with pytest.raises(ValueError, match="divisible"):
        Seq2SeqConfig(d_model=30, n_head=4)
    with pytest.raises(ValueError, match="eos_id must be below"):
        Seq2SeqConfig(vocab_size=2)
    with pytest.raises(ValueError, match="num_beams must be >= 1"):
        beam_decode(model, src, num_beams=0)
    with pytest.raises(ValueError, match="longer than the model's 9 target positions"):
        greedy_decode(model, src, max_len=20)
    with pytest.raises(TypeError, match="must be a Seq2Seq"):
        greedy_decode(nn.Linear(2, 2), src)


def sequence_logprob(model, src, ids, eos=2):
    """The log-probability of ``ids`` then the end token, by teacher forcing."""
    tgt = torch.tensor([[1] + ids])
    logp = F.log_softmax(model(src, tgt)[0][0], -1)
    return sum(logp[t, i].item() for t, i in enumerate(ids + [eos]))


def test_greedy_and_beam_decoding():
    model = tiny()
    src, _ = batch()
    greedy = greedy_decode(model, src)
    assert beam_decode(model, src, num_beams=1) == greedy  # one beam is greedy decoding
    assert all(len(row) <= 9 for row in greedy)
    beams = beam_decode(model, src, num_beams=6, length_penalty=0.0)  # length_penalty 0: the plain sum of log p
    for i in range(4):
        ended = [greedy[i], beams[i]]
        if all(len(r) < 9 for r in ended):  # both ended with the end token: compare whole sequences
            assert sequence_logprob(model, src[i:i + 1], beams[i]) >= sequence_logprob(model, src[i:i + 1],
                                                                                      greedy[i]) - 1e-4
    assert not model.training


def test_a_tiny_model_learns_to_copy_through_the_training_loop():
    """Copy a random sequence: only cross-attention can do it, so the loss falls only if the memory is read."""
    model = tiny(d_model=32, d_ff=64).train()
    g = torch.Generator().manual_seed(0)

    def batches():
        src = torch.randint(3, 20, (32, 6), generator=g)
        tgt = torch.cat([torch.ones(32, 1, dtype=torch.long), src, torch.full((32, 1), 2)], 1)  # (B, 8)
        x = torch.cat([F.pad(src, (0, 2)), tgt[:, :-1], torch.zeros(32, 2, dtype=torch.long)], 1)[:, :17]
        y = torch.cat([tgt[:, 1:], torch.full((32, 2), -1)], 1)[:, :9]
        return x, y

    history = train(Packed(model), batches, TrainConfig(max_steps=150, lr=1e-2, warmup_steps=10, progress=False,
                                                        log_interval=50, eval_interval=150))
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]
    src = batches()[0][:8, :6]
    copied = greedy_decode(model, src)
    assert sum(row == s for row, s in zip(copied, src.tolist())) >= 4
