"""Chapter 8's runs: the ladder's summary and intervals, the length experiment's pieces, the cache and int8 tables,
the scaling grid and its fit, and both reference recipes at their tiny size."""

import math

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lmbook.evaluation.intervals import mean_interval, t_cdf, t_quantile  # noqa: E402
from lmbook.interface import num_params  # noqa: E402
from lmbook.models.llama import Llama, LlamaConfig, grouped_attention  # noqa: E402
from lmbook.runs import ch08_architecture as arch  # noqa: E402
from lmbook.runs import ch08_decoding as dec  # noqa: E402
from lmbook.runs import ch08_scaling as scaling  # noqa: E402
from lmbook.runs import recording, reference  # noqa: E402
from lmbook.runs.common import make_char_llama  # noqa: E402


# --- intervals ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p, df, expected", [(0.95, 1, 6.3138), (0.95, 2, 2.9200), (0.975, 10, 2.2281),
                                             (0.95, 30, 1.6973)])
def test_t_quantiles_match_the_tables(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=2e-4)
    assert t_cdf(expected, df) == pytest.approx(p, abs=1e-4) and t_cdf(-expected, df) == pytest.approx(1 - p, abs=1e-4)


def test_mean_interval_is_the_mean_plus_minus_t_times_the_standard_error():
    values = [1.0, 2.0, 4.0]
    mean, low, high = mean_interval(values, 0.9)
    sd = math.sqrt(sum((v - 7 / 3) ** 2 for v in values) / 2)
    assert mean == pytest.approx(7 / 3) and high - mean == pytest.approx(2.9200 * sd / math.sqrt(3), rel=1e-4)
    assert mean - low == pytest.approx(high - mean)
    one = mean_interval([3.0])
    assert one[0] == 3.0 and math.isnan(one[1]) and math.isnan(one[2])
    for bad, match in (([], "at least one"), ([1.0, 2.0], "level")):
        with pytest.raises(ValueError, match=match):
            mean_interval(bad, level=1.5) if bad else mean_interval(bad)
    with pytest.raises(ValueError, match="df"):
        t_cdf(1.0, 0)


# --- grouped attention without copies --------------------------------------------------------------------------
@pytest.mark.parametrize("nkv", [4, 2, 1])
def test_grouped_attention_equals_attention_over_repeated_heads(nkv):
    torch.manual_seed(0)
    B, nh, S, hd = 2, 4, 7, 8
    k, v = torch.randn(B, nkv, S, hd), torch.randn(B, nkv, S, hd)
    repeated = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
    step = torch.randn(B, nh, 1, hd)  # a decoding step, with a padding mask
    mask = torch.ones(B, 1, 1, S, dtype=torch.bool)
    mask[0, ..., :2] = False
    expected = F.scaled_dot_product_attention(step, *repeated, attn_mask=mask)
    assert torch.allclose(grouped_attention(step, k, v, mask), expected, atol=1e-6)
    full = torch.randn(B, nh, S, hd)  # a prompt, causal
    expected = F.scaled_dot_product_attention(full, *repeated, is_causal=True)
    assert torch.allclose(grouped_attention(full, k, v, causal=True), expected, atol=1e-6)


# --- the ladder ------------------------------------------------------------------------------------------------
def test_each_rung_changes_one_choice_and_ends_at_the_llama_defaults():
    names = [name for name, _ in arch.LADDER]
    assert names[0] == "GPT-2" and len(set(names)) == len(names)
    for (_, before), (name, after) in zip(arch.LADDER, arch.LADDER[1:]):
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        assert len(changed) == 1, (name, changed)
    run = arch.RUNS["fast"].run
    last = arch.rung_choices(arch.LADDER[-1][1], run)
    config = LlamaConfig(**last)
    assert (config.position, config.norm, config.mlp, config.bias, config.n_kv_head) == ("rope", "rms", "swiglu",
                                                                                         False, run.n_head // 2)


def test_matched_width_brings_the_swiglu_rungs_to_the_gpt2_rungs_parameters():
    run = arch.RUNS["fast"].run
    target = num_params(make_char_llama(run, 65, "cpu", **arch.GPT2))
    for name, choices in arch.LADDER:
        choices = arch.matched_width(run, 65, arch.rung_choices(choices, run), target)
        params = num_params(make_char_llama(run, 65, "cpu", **choices))
        if choices.get("mlp") == "swiglu":  # one unit of width is 3 x n_embd weights (plus biases)
            assert abs(params - target) <= 3 * run.n_embd + 2, name
        else:
            # RoPE drops the position table, RMSNorm the norms' biases
            assert abs(params - target) <= (run.block_size + 2 * run.n_layer + 1) * run.n_embd, name


def rows(bits: dict[str, list[float]], budget="steps"):
    return [{"rung": name, "seed": seed, "budget": budget, "params": 10, "steps": 5, "seconds": 1.0 + seed,
             "val_loss": b * math.log(2)} for name, values in bits.items() for seed, b in enumerate(values)]


def test_the_summary_pairs_seeds_and_says_which_changes_matter():
    bits = {"GPT-2": [2.0, 2.1, 2.2], "+ RoPE": [1.9, 2.0, 2.1], "+ RMSNorm": [1.95, 1.95, 2.1]}
    summary = arch.ablation_summary(rows(bits) + rows({"GPT-2": [9.0]}, "time"))
    assert [s["rung"] for s in summary] == ["GPT-2", "+ RoPE", "+ RMSNorm"]
    assert summary[0]["bits"] == pytest.approx(2.1) and math.isnan(summary[0]["change"])
    assert summary[1]["change"] == pytest.approx(-0.1) and summary[1]["matters"] is True  # every seed: -0.1
    assert summary[2]["change"] == pytest.approx(0.0, abs=1e-9) and summary[2]["matters"] is False
    assert summary[0]["seconds"] == pytest.approx(2.0)
    single = arch.ablation_summary(rows({"GPT-2": [2.0], "+ RoPE": [1.0]}))
    assert single[1]["change"] == pytest.approx(-1.0) and single[1]["matters"] is None
    assert arch.ablation_summary(rows(bits), budget="time") == []
    ax = arch.plot_ablation({"equal steps": summary, "one seed": arch.ablation_summary(rows(
        {k: v[:1] for k, v in bits.items()}))})
    assert len(ax.patches) == 6


def test_the_ablation_sentences_say_what_the_seeds_support():
    bits = {"GPT-2": [2.0, 2.1, 2.2], "+ RoPE": [1.9, 2.0, 2.1], "+ RMSNorm": [1.95, 1.95, 2.1]}
    said = arch.ablation_facts(arch.ablation_summary(rows(bits)), when="At equal steps")
    assert said == ("At equal steps, each change's effect on held-out bits per character, paired by seed: + RoPE "
                    "-0.100 and + RMSNorm +0.000. Beyond the spread over seeds (90% intervals that leave out zero), "
                    "+ RoPE lowered the loss; + RMSNorm changed it by less than the seeds vary.")
    single = arch.ablation_facts(arch.ablation_summary(rows({"GPT-2": [2.0], "+ RoPE": [1.0]})))
    assert single.startswith("Each change's effect on held-out bits per character, one seed each: + RoPE -1.000. "
                             "One seed draws no interval")


# --- length -----------------------------------------------------------------------------------------------------
def test_position_losses_average_to_the_windows_loss():
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=8))
    data = torch.randint(11, (500,))
    per_position = arch.position_losses(model, data, 16, 5, seed=3)
    from lmbook.text.data import RandomBatches

    x, y = RandomBatches(data, 16, 5, "cpu", seed=3)()
    assert per_position.shape == (16,) and model.training
    assert per_position.mean().item() == pytest.approx(model.eval()(x, y)[1].item(), rel=1e-5)


def test_with_rope_changes_the_positions_and_not_the_weights():
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=8)).eval()
    with torch.no_grad():  # weights large enough for attention to depend on the positions
        for p in model.parameters():
            p.normal_(0, 0.5)
    idx = torch.randint(11, (1, 12))
    same = arch.with_rope(model, rope_scale=1.0)
    assert torch.equal(same(idx)[0], model(idx)[0])
    scaled = arch.with_rope(model, rope_scale=4.0)
    raised = arch.with_rope(model, rope_theta=40000.0)
    assert model.config.rope_scale == 1.0 and scaled.config.rope_scale == 4.0
    for changed in (scaled, raised):
        logits = changed(idx)[0]
        assert torch.allclose(logits[:, 0], model(idx)[0][:, 0], atol=1e-6)  # position 0 is not rotated
        assert not torch.allclose(logits[:, 5:], model(idx)[0][:, 5:], atol=1e-4)
    # positions / 4 is the unscaled model at positions p / 4
    from lmbook.models.llama import apply_rope, rope_cos_sin

    q = torch.randn(1, 1, 12, 4)
    cos, sin = rope_cos_sin(torch.arange(12) / 4, 4)
    assert torch.allclose(apply_rope(q, cos, sin), apply_rope(q, *rope_cos_sin(torch.arange(12.0) * 0.25, 4)))


def test_length_summary_splits_at_the_training_context():
    result = {"trained": 2, "long": 4, "losses": {"a": [math.log(2)] * 2 + [2 * math.log(2)] * 2}}
    assert arch.length_summary(result) == {"a": pytest.approx((1.0, 2.0))}
    ax = arch.plot_position_losses(result, smooth=1)
    assert len(ax.get_lines()) == 2


def test_the_length_sentences_read_the_table():
    ln2 = math.log(2)
    losses = {"learned": [3 * ln2] * 2 + [4 * ln2] * 2, "RoPE": [2 * ln2] * 2 + [2.5 * ln2] * 2,
              "RoPE + 5 steps at 4": [2 * ln2] * 2 + [2.2 * ln2] * 2}
    said = arch.length_facts({"trained": 2, "long": 4, "losses": losses}, when="In the reference")
    assert said == ("In the reference, inside the 2 positions they trained on, learned positions reach 3.000 bits "
                    "per character and RoPE 2.000. Beyond them, up to 4, learned positions rise to 4.000 and RoPE "
                    "rises to 2.500. Without any training at the longer length, the best of the 2 beyond the "
                    "training context is RoPE (2.500); in order: RoPE (2.500) < learned (4.000). After a short "
                    "training on the longer windows, beyond the first context: 2.200 bits per character for RoPE "
                    "+ 5 steps at 4.")


# --- the cache and int8 ----------------------------------------------------------------------------------------
def test_the_cache_holds_what_the_shape_says_and_multi_query_holds_least():
    run = dec.DecodingRun(kv_shape=(2, 4, 16), kv_heads=(4, 2, 1), kv_prompt=6, kv_new=2, kv_batch=2,
                          quant_chars=100, quant_new=2, speed_shape=(1, 2, 8), repeats=1)
    table = dec.kv_cache_rows(run)
    assert [r["name"] for r in table] == ["multi-head", "grouped (2 kv heads)", "multi-query"]
    assert all(r["measured"] == r["computed"] == 2 * 2 * r["n_kv_head"] * 4 * 4 for r in table)
    assert table[0]["params"] > table[1]["params"] > table[2]["params"]
    assert all(r["tokens_per_second"] > 0 for r in table)


def test_the_int8_table_keeps_the_model_and_reads_fewer_bytes():
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=11, block_size=24, n_layer=2, n_head=2, n_embd=32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run = dec.DecodingRun(kv_shape=(1, 2, 8), kv_heads=(2,), kv_prompt=2, kv_new=2, kv_batch=1, quant_chars=200,
                          quant_new=8, speed_shape=(1, 2, 8), repeats=1)
    table = dec.quantization_rows(model, torch.randint(11, (400,)), run, torch.randint(11, (1, 4)))
    assert [r["dtype"] for r in table] == ["float32", "bfloat16", "int8"] and table[0]["agreement"] == 1.0
    assert all(0.5 < r["agreement"] <= 1.0 for r in table)
    with pytest.raises(ValueError, match="do not fill one window"):
        dec.quantization_rows(model, torch.randint(11, (10,)), run, torch.randint(11, (1, 4)))
    assert table[0]["mib"] > table[1]["mib"] > table[2]["mib"]
    assert abs(table[2]["bits"] - table[0]["bits"]) < 0.05 and all(r["tokens_per_second"] > 0 for r in table)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model itself unchanged
    untimed = dec.quantization_rows(model, torch.randint(11, (400,)), run, torch.randint(11, (1, 4)), bits=False)
    assert all(math.isnan(r["bits"]) and math.isnan(r["agreement"]) for r in untimed)
    said = dec.quantization_facts({"a model": table, "a random model": untimed})
    assert said.count("the same most likely next token as float32") == 2  # the trained model's two rows only
    assert said.startswith("A model: bfloat16 ") and "A random model: bfloat16 " in said
    assert len(dec.plot_quantization({"a": table})[0].collections) == 3


# --- scaling ----------------------------------------------------------------------------------------------------
def test_the_grid_is_every_size_times_every_budget_each_with_its_own_schedule():
    grid = scaling.CPU_GRID
    runs = grid.runs()
    assert len(runs) == len(grid.shapes) * len(grid.steps) >= 16
    assert len({scaling.label_of(r) for r in runs}) == len(runs)
    assert all(r.warmup_steps == max(1, round(grid.warmup_share * r.max_steps)) for r in runs)


def test_the_grid_fit_recovers_a_known_law():
    law = scaling.ScalingLaw(E=1.2, A=30.0, B=60.0, alpha=0.4, beta=0.35)
    points = [{"params": n, "tokens": d, "val_loss": float(law.loss(n, d)) * (1 + 0.002 * ((i * 7) % 5 - 2))}
              for i, (n, d) in enumerate((n, d) for n in (1e4, 3e4, 1e5, 3e5, 1e6) for d in (1e5, 3e5, 1e6, 3e6))]
    found = scaling.grid_fit(points, n_boot=20)
    assert found["law"].alpha == pytest.approx(0.4, abs=0.06) and found["law"].beta == pytest.approx(0.35, abs=0.06)
    low, high = found["tokens_per_param_interval"]
    assert low <= found["tokens_per_param"] <= high or math.isclose(low, high)
    n_opt, d_opt = found["law"].compute_optimal(found["compute"])
    assert d_opt / n_opt == pytest.approx(found["tokens_per_param"])
    assert scaling.plot_grid(points, found["law"]).get_lines()
    assert scaling.plot_iso_flops(points, found["law"]).get_lines()


# --- the recipes ------------------------------------------------------------------------------------------------
def test_the_architecture_recipe_records_every_rung_seed_and_budget(tmp_path, shakespeare, one_thread):
    rec = reference.read(recording.record("ch08", "cpu", smoke=True, work=tmp_path, threads=1))
    plan = arch.SMOKE["cpu"]
    table = rec.results["ablation"]
    assert len(table) == len(arch.LADDER) * len(plan.seeds) * 2
    timed = [r for r in table if r["budget"] == "time"]
    assert all(r["steps"] >= 1 for r in timed) and all(0 < r["val_loss"] < 6 for r in table)
    for budget in ("steps", "time"):
        summary = arch.ablation_summary(table, budget)
        assert [s["rung"] for s in summary] == [name for name, _ in arch.LADDER]
    length = rec.results["length"]
    assert length["long"] == plan.run.block_size * plan.long_factor
    assert all(len(v) == length["long"] for v in length["losses"].values()) and len(length["losses"]) == 6


def test_the_scaling_recipe_records_the_grid(tmp_path, shakespeare, one_thread):
    rec = reference.read(recording.record("ch08-scaling", "cpu", smoke=True, work=tmp_path, threads=1))
    grid = rec.results["grid"]
    plan = scaling.SMOKE["cpu"]
    assert len(grid) == len(plan.shapes) * len(plan.steps)
    for point in grid:
        assert point["tokens"] == point["steps"] * plan.base.batch_size * plan.base.block_size
        assert point["flops"] == 6 * point["params"] * point["tokens"] and point["val_loss"] > 0
