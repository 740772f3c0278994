"""The attention explorer of lmbook.display.widgets builds, reacts to its controls and refuses nothing it should accept.

ipywidgets is one of the package's requirements: without it these tests fail (they never skip)."""

import matplotlib

matplotlib.use("Agg")

import ipywidgets  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from lmbook.models.gpt import GPT, GPTConfig  # noqa: E402
from lmbook.text.tokenizers import CharTokenizer  # noqa: E402


def test_explorer_offers_every_layer_and_head_and_redraws_for_new_text(monkeypatch):
    import lmbook.display.widgets
    from lmbook.models.attention import attention_maps
    from lmbook.display.widgets import attention_explorer

    drawn = []  # (weights, tokens, title) of every figure the explorer draws
    monkeypatch.setattr(lmbook.display.widgets, "plot_attention",
                        lambda w, tokens, title: drawn.append((w, tokens, title)))
    tokenizer = CharTokenizer.train("ROMEO: What light through yonder window breaks? " * 2)
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, n_layer=3, block_size=16))
    text = "ROMEO: What light through yonder window"  # longer than the context of 16
    explorer = attention_explorer(model, tokenizer, text)
    (layer_box, head_box), text_box = explorer.children[0].children, explorer.children[1]
    assert isinstance(explorer, ipywidgets.VBox) and isinstance(text_box, ipywidgets.Textarea)
    assert list(layer_box.options) == [0, 1, 2] and list(head_box.options) == [0, 1]
    ids = tokenizer.encode(text)[-16:]
    maps = attention_maps(model, torch.tensor(ids)[None])  # (L, 1, nh, T, T)
    assert drawn[-1][2] == "layer 0, head 0" and "".join(drawn[-1][1]) == text[-16:]
    torch.testing.assert_close(drawn[-1][0], maps[0, 0, 0])
    layer_box.value, head_box.value = 2, 1
    assert drawn[-1][2] == "layer 2, head 1"
    torch.testing.assert_close(drawn[-1][0], maps[2, 0, 1])
    text_box.value = "What light"
    assert "".join(drawn[-1][1]) == "What light" and drawn[-1][0].shape == (10, 10)
    short = attention_maps(model, torch.tensor(tokenizer.encode("What light"))[None])
    torch.testing.assert_close(drawn[-1][0], short[2, 0, 1])
    assert model.training  # the explorer leaves the model's mode as it was


def playground_parts(box):
    """The playground's controls by name, found in its layout."""
    prompt, (strategy, new, seed), (temperature, top_k, top_p), (beams, button), status, text = (
        box.children[0], box.children[1].children, box.children[2].children, box.children[3].children,
        box.children[4], box.children[5])
    return dict(prompt=prompt, strategy=strategy, new=new, seed=seed, temperature=temperature, top_k=top_k,
                top_p=top_p, beams=beams, button=button, status=status, text=text)


def shown_text(html_value: str) -> str:
    """The text of tokens_html's output, without tags, as a reader sees it."""
    import html
    import re

    return html.unescape(re.sub(r"<[^>]+>", "", html_value.replace("↵<br>", "\n")))


@pytest.fixture(scope="module")
def small_gpt():
    tokenizer = CharTokenizer.train("ROMEO: What light through yonder window breaks?\nJULIET: Ay me!\n" * 2)
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, n_layer=2, block_size=32))
    return model, tokenizer


def test_playground_streams_what_generate_and_stream_give(small_gpt):
    from lmbook.decoding.generate import generate, stream
    from lmbook.display.widgets import generation_playground

    model, tokenizer = small_gpt
    box = generation_playground(model, tokenizer, prompt="ROMEO:", max_new_tokens=20, strategy="sampling",
                                temperature=0.8, top_k=5, top_p=0.9, seed=3)
    w = playground_parts(box)
    ids = torch.tensor(tokenizer.encode("ROMEO:"))
    drawn = "".join(p.text for p in stream(model, ids, tokenizer, max_new_tokens=20, do_sample=True,
                                          temperature=0.8, top_k=5, top_p=0.9, seed=3))
    assert shown_text(w["text"].value) == "ROMEO:" + drawn  # built once, with text shown
    assert "20 tokens in" in w["status"].value
    assert not w["temperature"].disabled and w["beams"].disabled

    w["strategy"].value = "greedy"
    assert w["temperature"].disabled and w["top_k"].disabled and w["top_p"].disabled and w["beams"].disabled
    w["button"].click()
    greedy = generate(model, ids, max_new_tokens=20, do_sample=False)[0]
    assert shown_text(w["text"].value) == tokenizer.decode(greedy.tolist())

    w["strategy"].value, w["beams"].value = "beam search", 3
    assert not w["beams"].disabled and w["temperature"].disabled
    w["button"].click()
    beams = generate(model, ids, max_new_tokens=20, num_beams=3, do_sample=False)[0]
    assert shown_text(w["text"].value) == tokenizer.decode(beams.tolist())
    import re  # beam search's tokens are coloured by the model's own probability of each, read in one window

    shown = [float(x) for x in re.findall(r'title="p = ([0-9.]+)"', w["text"].value)]
    with torch.no_grad():
        logits, _ = model.eval()(beams[None, :-1])
    model.train()
    expected = torch.softmax(logits[0], -1).gather(-1, beams[1:, None])[-20:, 0]
    torch.testing.assert_close(torch.tensor(shown), expected, atol=6e-4, rtol=0)  # printed with 3 decimals
    assert model.training  # the playground leaves the model's mode as it was


def test_playground_reports_bad_prompts_and_keeps_the_last_text(small_gpt):
    from lmbook.display.widgets import generation_playground

    model, tokenizer = small_gpt
    box = generation_playground(model, tokenizer, prompt="JULIET:", max_new_tokens=5, strategy="greedy")
    w = playground_parts(box)
    before = w["text"].value
    w["prompt"].value = "JULIET: 语"  # a character the tokenizer has never seen
    w["button"].click()
    assert w["text"].value == before and w["status"].value.startswith("not generated:") and "语" in w["status"].value
    assert not w["button"].disabled
    w["prompt"].value = "ROMEO: What light through yonder window breaks?"  # longer than the context of 32
    w["button"].click()
    assert "cut to its last 16 tokens" in w["status"].value
    assert shown_text(w["text"].value).startswith("ROMEO: What light through yonder window breaks?"[-16:])
    with pytest.raises(ValueError, match="strategy must be one of"):
        generation_playground(model, tokenizer, strategy="nucleus")
