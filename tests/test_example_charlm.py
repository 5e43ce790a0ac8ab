"""The character-level language model example, short: every storage variant learns on a slice
of the corpus, the 8-bit variant really keeps 8-bit states, and stochastic rounding is on."""
from __future__ import annotations

import pytest
import torch

from example_scripts import example_module, one_thread

# A model small enough for seconds, but with matrices of >= 4096 elements (min_8bit_size).
TINY = dict(d_model=64, n_heads=2, n_layers=1, context=32)
STEPS = 40


@pytest.fixture(scope="module")
def cl():
    with example_module("train_charlm") as module:
        yield module


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def data(cl):
    return cl.make_data(cl.load_corpus()[:20_000])


@pytest.fixture(scope="module")
def runs(cl, data):
    return {v: cl.train(data, v, steps=STEPS, batch_size=8, lr=3e-3, warmup=4, eval_every=STEPS,
                        eval_windows=8, final_eval=False, model_kwargs=TINY, progress=False)
            for v in cl.VARIANTS}


def test_corpus_and_split(cl, data):
    text = cl.load_corpus()
    assert text.startswith("# ===== argparse.py =====\n") and "# ===== textwrap.py =====\n" in text
    assert 200_000 < len(text) < 500_000
    assert len(data.train) == 18_000 and len(data.val) == 2_000
    assert "".join(data.vocab[i] for i in data.val[:50].tolist()) == text[18_000:18_050]
    x, y = cl.get_batch(data.train, torch.tensor([0, 5]), 16)
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(x[1], data.train[5:21])


def test_same_batches_and_weights_for_every_variant(cl, data):
    a = cl.batch_offsets(len(data.train), 10, 4, 32, seed=3)
    assert torch.equal(a, cl.batch_offsets(len(data.train), 10, 4, 32, seed=3))
    assert not torch.equal(a, cl.batch_offsets(len(data.train), 10, 4, 32, seed=4))
    m32 = cl.build_model(len(data.vocab), 0, **TINY)
    m16 = cl.build_model(len(data.vocab), 0, torch.bfloat16, **TINY)
    assert all(torch.equal(p.to(torch.bfloat16), q) for p, q in zip(m32.parameters(), m16.parameters()))


def test_every_variant_learns(cl, runs):
    for v, h in runs.items():
        first, last = sum(h.step_loss[:5]) / 5, sum(h.step_loss[-5:]) / 5
        assert last < first - 0.5, (v, first, last)
        assert h.val_loss[-1] < h.step_loss[0], v


def test_storage_is_what_the_variant_says(cl, data, runs):
    h8 = runs["8bit"]
    # every param of >= 4096 elements (the matrices but the 32 x 64 position embedding) keeps its two
    # AdamW states (exp_avg, exp_avg_sq) as 8-bit codes and scales
    big = [p.numel() for p in cl.build_model(len(data.vocab), 0, **TINY).parameters() if p.numel() >= 4096]
    assert len(big) == 6
    assert (h8.eight_bit_params, h8.eight_bit_slots, h8.eight_bit_elements) == (len(big), 2 * len(big), sum(big))
    assert h8.eight_bit_elements > 0.9 * h8.n_elements
    for v in ("float32", "bf16+SR", "bf16 RN"):
        assert runs[v].eight_bit_slots == 0
    assert runs["bf16+SR"].param_dtype == runs["bf16 RN"].param_dtype == "bfloat16"
    # the first step is identical (same weights, same batch); stochastic rounding then differs from RN
    assert runs["bf16+SR"].step_loss[0] == runs["bf16 RN"].step_loss[0]
    assert runs["bf16+SR"].step_loss != runs["bf16 RN"].step_loss


def test_8bit_state_dict_has_codes_and_scales(cl, data):
    model = cl.build_model(len(data.vocab), 0, **TINY)
    opt = cl.make_optimizer(model, "adamw", cl.VARIANTS["8bit"], seed=0)
    x, y = cl.get_batch(data.train, torch.tensor([0, 100]), TINY["context"])
    cl._loss(model, x, y).backward()
    opt.step()
    st = opt.state[model.blocks[0].qkv.weight]
    assert st["exp_avg"].dtype == torch.uint8 and st["exp_avg_sq"].dtype == torch.uint8
    assert st["exp_avg_absmax"].numel() == -(-model.blocks[0].qkv.weight.numel() // 256)
    assert opt.state[model.blocks[0].qkv.bias]["exp_avg"].dtype == torch.float32  # 192 elements: float32


def test_main_writes_report_and_figure(cl, tmp_path):
    hists = cl.main(["--steps", "4", "--max-chars", "20000", "--d-model", "64", "--heads", "2", "--layers", "1",
                     "--context", "32", "--batch-size", "4", "--eval-every", "2", "--only", "float32", "8bit",
                     "--no-progress", "--out", str(tmp_path)])
    assert [h.variant for h in hists] == ["float32", "8bit"]
    for name in ("charlm.png", "charlm.md", "charlm.json"):
        assert (tmp_path / name).stat().st_size > 0
    report = (tmp_path / "charlm.md").read_text()
    assert "| adamw (AdamW) | float32 |" in report and "| adamw (AdamW) | 8bit |" in report
