"""The digits example, short: it learns, and fusedopt's loss curve is torch.optim's for the same seed."""
from __future__ import annotations

import pytest
import torch

import fusedopt
from example_scripts import example_module, one_thread

pytest.importorskip("sklearn")

# float32 tolerance for a few dozen steps of a small CNN: the fused kernels may round differently
# from torch's for-loop (FMA, evaluation order) and training amplifies that a little.
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def td():
    with example_module("train_digits") as module:
        yield module


@pytest.fixture(scope="module", autouse=True)
def deterministic():
    """One thread and deterministic kernels, so two runs differ only by their optimizers."""
    with one_thread(deterministic=True):
        yield


@pytest.fixture(scope="module")
def small(td):
    return td.subset(td.load_data(seed=0), n_train=256)


def _curves_close(a, b):
    torch.testing.assert_close(torch.tensor(a.step_loss), torch.tensor(b.step_loss), rtol=RTOL, atol=ATOL)


def test_data_split_is_fixed_by_seed(td):
    a, b, c = td.load_data(0), td.load_data(0), td.load_data(1)
    assert a.x_train.shape == (1347, 1, 8, 8) and a.x_test.shape == (450, 1, 8, 8)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, c.y_train)
    assert sorted(set(a.y_test.tolist())) == list(range(10))


def test_accuracy_well_above_chance(td):
    data = td.subset(td.load_data(seed=0), n_train=512)
    hist = td.train(lambda p: fusedopt.Adam(p, lr=3e-3), data, epochs=3, seed=0, progress=False)
    assert len(hist.test_acc) == 3 and len(hist.step_loss) == 3 * 16
    assert hist.final_acc > 0.5, hist.test_acc  # chance is 0.1
    assert hist.epoch_loss[-1] < hist.epoch_loss[0]


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RAdam", "Adagrad", "Adadelta", "RMSprop"])
def test_loss_curve_equals_torch_optim(td, small, name):
    spec = td.OPTIMIZERS[name]
    ours = td.train(lambda p: spec.fused(p, backend="auto"), small, epochs=2, seed=0, progress=False)
    theirs = td.train(spec.torch, small, epochs=2, seed=0, progress=False)
    assert len(ours.step_loss) == 16
    _curves_close(ours, theirs)
    torch.testing.assert_close(torch.tensor(ours.test_loss), torch.tensor(theirs.test_loss), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", fusedopt.available_backends("cpu"))
def test_every_cpu_backend_gives_torchs_adam_curve(td, small, backend):
    # one epoch: the triton backend runs in its (slow) interpreter on a machine without a GPU
    ours = td.train(lambda p: fusedopt.Adam(p, lr=2e-3, backend=backend), small, epochs=1, seed=0, progress=False)
    theirs = td.train(lambda p: torch.optim.Adam(p, lr=2e-3), small, epochs=1, seed=0, progress=False)
    _curves_close(ours, theirs)


def test_accumulation_equals_the_larger_batch(td, small):
    """K micro-batches of B, loss divided by K, take the step one batch of K*B takes."""
    opt = lambda p: fusedopt.Adam(p, lr=2e-3)  # noqa: E731
    big = td.train(opt, small, epochs=2, batch_size=32, seed=0, progress=False)
    acc = td.train(opt, small, epochs=2, batch_size=16, accumulate=2, seed=0, progress=False)
    assert len(acc.step_loss) == len(big.step_loss) == 16
    _curves_close(acc, big)


def test_short_last_group_is_weighted_by_samples(td):
    # 100 samples, micro-batches of 16 and K=4: groups of 64 and 36 samples (the last one has a
    # 4-sample micro-batch); the step loss is still the mean over the group's samples.
    data = td.subset(td.load_data(seed=0), n_train=100)
    opt = lambda p: torch.optim.SGD(p, lr=0.05)  # noqa: E731
    big = td.train(opt, data, epochs=1, batch_size=64, seed=0, progress=False)
    acc = td.train(opt, data, epochs=1, batch_size=16, accumulate=4, seed=0, progress=False)
    assert len(acc.step_loss) == 2
    _curves_close(acc, big)


def test_warmup_ramps_the_lr_linearly(td, small):
    hist = td.train(lambda p: fusedopt.RAdam(p, lr=4e-3), small, epochs=1, warmup=4, seed=0, progress=False)
    torch.testing.assert_close(torch.tensor(hist.lr[:6]), torch.tensor([1e-3, 2e-3, 3e-3, 4e-3, 4e-3, 4e-3]))


def test_clipping(td, small):
    opt = lambda p: fusedopt.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731
    free = td.train(opt, small, epochs=1, seed=0, progress=False)
    loose = td.train(opt, small, epochs=1, clip=1e6, seed=0, progress=False)
    tight = td.train(opt, small, epochs=1, clip=1e-3, seed=0, progress=False)
    _curves_close(loose, free)  # a bound no gradient reaches changes nothing
    # gradients of norm 1e-3 barely move the weights in 8 steps: the loss stays near its start
    assert max(tight.step_loss) - min(tight.step_loss) < 0.5 * (max(free.step_loss) - min(free.step_loss))


def test_main_writes_figures_and_summary(td, tmp_path):
    out = td.main(["--epochs", "1", "--n-train", "64", "--only", "Adam", "Yogi", "Lookahead(RAdam)",
                   "--lr-sweep", "--sweep-epochs", "1", "--sweep-seeds", "1", "--no-progress", "--out", str(tmp_path)])
    for name in ("curves.png", "lr_sweep.png", "summary.md", "lr_sweep.md"):
        assert (tmp_path / name).stat().st_size > 0
    summary = (tmp_path / "summary.md").read_text()
    assert "| Adam |" in summary and "| Yogi |" in summary and "| Lookahead(RAdam) |" in summary
    assert "Adam vs RAdam" in (tmp_path / "lr_sweep.md").read_text()
    assert set(out["results"]["Adam"]) == {"fusedopt", "torch.optim"}
    assert set(out["results"]["Yogi"]) == {"fusedopt"}


def test_storage_mode_writes_table_and_uses_8bit_and_bf16(td, tmp_path):
    out = td.main(["--storage", "--epochs", "1", "--n-train", "64", "--only", "Adam", "Lookahead(RAdam)",
                   "--no-progress", "--out", str(tmp_path)])
    for name in ("storage.png", "storage.md", "storage.json"):
        assert (tmp_path / name).stat().st_size > 0
    text = (tmp_path / "storage.md").read_text()
    assert "| Adam |" in text and "| Lookahead(RAdam) |" in text and 'backend="auto"' in text
    for name in ("Adam", "Lookahead(RAdam)"):
        runs = out["storage"][name]
        assert list(runs) == list(td.VARIANTS)
        # conv2 (4,608) and fc1 (32,768) have >= 4096 elements: exp_avg and exp_avg_sq of each are 8-bit
        h8 = runs["8bit"][0]
        assert (h8.eight_bit_slots, h8.eight_bit_params, h8.eight_bit_elements) == (4, 2, 4608 + 32768)
        assert runs["float32"][0].eight_bit_slots == 0 and runs["bf16+SR"][0].eight_bit_slots == 0
        assert runs["bf16+SR"][0].param_dtype == runs["bf16 RN"][0].param_dtype == "bfloat16"
        assert runs["bf16+SR"][0].step_loss != runs["bf16 RN"][0].step_loss  # the rounding differs


def test_storage_float32_variant_is_the_plain_training(td, small):
    """The dtype argument changes nothing for float32: the storage baseline is the default run's."""
    spec = td.OPTIMIZERS["Adam"]
    plain = td.train(lambda p: spec.fused(p, backend="auto"), small, epochs=1, seed=0, progress=False)
    base = td.train(lambda p: spec.fused(p, backend="auto", **td.storage_options(td.VARIANTS["float32"], 0)),
                    small, epochs=1, seed=0, dtype=torch.float32, progress=False)
    assert plain.step_loss == base.step_loss and plain.test_loss == base.test_loss
