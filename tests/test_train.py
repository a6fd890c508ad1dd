"""The training kit: batches, schedules, optimiser state, the loop, checkpoints (issue 13)."""

import math
import re
from pathlib import Path

import numpy as np
import pytest

from dynconv_np import nn

F32, F64 = np.float32, np.float64


# ----------------------------------------------------------------------------- batches
def test_batches_shuffle_seed_drop_last():
    x = np.arange(10.0)[:, None]
    y = np.arange(10)
    b = nn.Batches(x, y, batch_size=4, shuffle=True, seed=3)
    assert len(b) == 3 and b.num_samples == 10
    e0 = [yb.copy() for _, yb in b]
    e1 = [yb.copy() for _, yb in b]
    assert [len(v) for v in e0] == [4, 4, 2] and b.epoch == 2
    assert sorted(np.concatenate(e0)) == list(range(10))
    assert not np.array_equal(np.concatenate(e0), np.concatenate(e1))      # a new order each epoch
    again = nn.Batches(x, y, batch_size=4, shuffle=True, seed=3)
    assert all(np.array_equal(a, yb) for a, (_, yb) in zip(e0, again))    # same seed, same order
    for xb, yb in again:
        assert np.array_equal(xb[:, 0], yb)                                # arrays stay aligned
    d = nn.Batches(x, batch_size=4, drop_last=True)
    assert len(d) == 2 and [v.shape for v in d] == [(4, 1), (4, 1)]       # one array: plain batches
    assert np.shares_memory(next(iter(d)), x)                              # unshuffled: views
    r = nn.Batches(x, y, batch_size=4, shuffle=True, seed=3)
    r.load_state_dict(b.state_dict())                                      # resume at epoch 2
    assert np.array_equal(next(iter(r))[1], next(iter(b))[1])


def test_batches_default_seed_follows_manual_seed():
    x = np.arange(20.0)
    nn.manual_seed(5)
    a = [v.copy() for v in nn.Batches(x, batch_size=5, shuffle=True)]
    nn.manual_seed(5)
    b = [v.copy() for v in nn.Batches(x, batch_size=5, shuffle=True)]
    assert all(np.array_equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("call, exc, words", [
    (lambda: nn.Batches(), TypeError, "at least one array"),
    (lambda: nn.Batches([1, 2]), TypeError, "arrays[0] must be a numpy.ndarray"),
    (lambda: nn.Batches(np.ones(3), np.ones(4)), ValueError, "arrays[1] has 4 entries"),
    (lambda: nn.Batches(np.ones(3), batch_size=0), ValueError, "batch_size"),
    (lambda: nn.Batches(np.ones(3), batch_size=4, drop_last=True), ValueError, "no batch"),
    (lambda: nn.Batches(np.ones(3), seed=1.5), TypeError, "seed"),
])
def test_batches_errors(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value)


# ----------------------------------------------------------------------------- schedules
def test_schedule_factors_and_composition():
    assert nn.StepDecay(2, gamma=0.5)(3.9) == 0.5 and nn.StepDecay(2, gamma=0.5)(4.0) == 0.25
    assert nn.MultiStep([1, 3], gamma=0.1)(2.0) == pytest.approx(0.1)
    assert nn.Cosine(4)(0) == 1 and nn.Cosine(4)(2) == pytest.approx(0.5) and nn.Cosine(4)(9) == 0
    assert nn.Cosine(4, final=0.2)(4) == pytest.approx(0.2)
    assert nn.LinearWarmup(2)(1) == 0.5 and nn.LinearWarmup(2, start=0.2)(0) == 0.2 and nn.LinearWarmup(2)(5) == 1
    prod = nn.LinearWarmup(2) * nn.Cosine(10)
    assert prod(1) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)) / 2)
    seq = nn.LinearWarmup(2).then(nn.Cosine(8), at=2)
    assert seq(1) == 0.5 and seq(2) == 1 and seq(6) == pytest.approx(0.5)
    assert "Cosine(8" in repr(seq) and nn.Constant(0.3)(7) == 0.3
    with pytest.raises(ValueError, match="increasing"):
        nn.MultiStep([3, 1])
    with pytest.raises(TypeError, match="Schedule"):
        nn.Cosine(2).then(3, at=1)


def test_lr_schedule_steps_and_state():
    opt = nn.SGD(nn.Linear(2, 2, seed=0), lr=0.1)
    s = nn.LRSchedule(opt, nn.StepDecay(1, gamma=0.5), iters_per_epoch=4)
    assert opt.lr == 0.1
    for _ in range(4):
        s.step()
    assert opt.lr == 0.05 and s.progress() == 1.0
    opt2 = nn.SGD(nn.Linear(2, 2, seed=0), lr=0.7)
    s2 = nn.LRSchedule(opt2, nn.StepDecay(1, gamma=0.5), iters_per_epoch=4)
    s2.load_state_dict(s.state_dict())
    assert opt2.lr == 0.05 and s2.base_lr == 0.1 and s2.t == 4
    with pytest.raises(ValueError, match="iters_per_epoch=4, but an epoch has 5 batches"):
        s.set_iters_per_epoch(5)
    with pytest.raises(ValueError, match='per must be "iteration" or "epoch"'):
        nn.LRSchedule(opt, nn.Cosine(1), per="step")


def test_the_loop_drives_schedules_per_iteration_and_per_epoch():
    net = nn.Sequential(nn.DynamicConv2d(2, 3, 1, seed=0), nn.GlobalAvgPool2d(), nn.Linear(3, 2, seed=0))
    x = np.random.default_rng(0).standard_normal((10, 2, 3, 3)).astype(F32)
    y = np.arange(10) % 2
    opt = nn.SGD(net, lr=0.1)
    tau = nn.TemperatureSchedule(net, epochs=2)                # iters_per_epoch from the loop
    lr = nn.LRSchedule(opt, nn.StepDecay(1, gamma=0.5), per="epoch")
    hist = nn.fit(net, nn.Batches(x, y, batch_size=2), nn.SoftmaxCrossEntropy(), opt, 1, schedules=[tau, lr])
    assert tau.iters_per_epoch == 5 and tau.t == 5 and net[0].temperature == pytest.approx(1 + 29 * 5 / 10)
    assert lr.t == 1 and opt.lr == 0.05 and hist[0]["lr"] == 0.05
    with pytest.raises(TypeError, match="schedules\\[0\\] must be a Scheduler"):
        nn.train_epoch(net, nn.Batches(x, y, batch_size=2), nn.SoftmaxCrossEntropy(), opt, [nn.Cosine(2)])


# ----------------------------------------------------------------------------- optimiser state
@pytest.mark.parametrize("make", [lambda m: nn.SGD(m, lr=0.1, momentum=0.9), lambda m: nn.Adam(m, lr=0.01)])
def test_optimiser_state_round_trip(make, rng):
    layer = nn.Linear(3, 2, seed=0)
    opt = make(layer)
    assert set(opt.state_dict()) <= {"lr", "t"}
    for _ in range(2):
        layer.grads["weight"][...] = rng.standard_normal((2, 3))
        opt.step()
    sd = opt.state_dict()
    slots = {"buf"} if isinstance(opt, nn.SGD) else {"m", "v"}
    assert {k.split(".")[0] for k in sd} - {"lr", "t"} == slots
    other = make(nn.Linear(3, 2, seed=1))
    other.load_state_dict(sd)
    assert all(np.array_equal(v, other.state_dict()[k]) for k, v in sd.items())
    with pytest.raises(KeyError, match="no entry 'm.nothing'"):
        other.load_state_dict({**sd, "m.nothing": np.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        key = next(k for k in sd if "." in k)
        other.load_state_dict({**sd, key: np.zeros(5)})


# ----------------------------------------------------------------------------- the loss layer
def test_the_loss_is_a_layer(rng):
    crit = nn.SoftmaxCrossEntropy()
    assert isinstance(crit, nn.Module) and repr(crit) == "SoftmaxCrossEntropy()"
    logits = rng.standard_normal((4, 3))
    labels = np.array([0, 2, 1, 1])
    loss, pb = crit.forward_pullback(logits, labels)
    assert crit._cache is None and loss == crit(logits, labels)
    assert np.array_equal(pb(1.0)[0], crit.backward()) and pb(1.0)[1] == {}
    with pytest.raises(TypeError, match="SoftmaxCrossEntropy.*int64"):
        crit(labels, labels)


# ----------------------------------------------------------------------------- the loop against re-implementations
def _record_losses():
    losses = []

    def hook(layer, inputs, y):
        if isinstance(layer, nn.SoftmaxCrossEntropy):
            losses.append(y)

    return losses, nn.forward_hook(hook)


def test_fit_matches_a_numpy_reimplementation_step_by_step(rng):
    x = rng.standard_normal((20, 5))
    y = rng.integers(0, 3, 20)
    net = nn.Sequential(nn.Linear(5, 7, dtype=F64, seed=1), nn.ReLU(), nn.Linear(7, 3, dtype=F64, seed=2))
    W1, b1, W2, b2 = (p.copy() for p in net.params.values())
    batches = nn.Batches(x, y, batch_size=8, shuffle=True, seed=4)
    opt = nn.SGD(net, lr=0.2, momentum=0.9, weight_decay=1e-3)
    sched = nn.LRSchedule(opt, nn.LinearWarmup(1, start=0.2) * nn.Cosine(3))
    losses, hook = _record_losses()
    with hook:
        hist = nn.fit(net, batches, nn.SoftmaxCrossEntropy(), opt, 3, schedules=[sched])

    # the same training written out in NumPy: PyTorch's SGD rule, the schedule's formula
    ref, bufs, t = [], {}, 0
    params = {"W1": W1, "b1": b1, "W2": W2, "b2": b2}
    for epoch in range(3):
        order = np.random.default_rng([4, epoch]).permutation(20)
        for i in range(0, 20, 8):
            idx = order[i:i + 8]
            xb, yb = x[idx], y[idx]
            h = xb @ params["W1"].T + params["b1"]
            a = np.maximum(h, 0)
            z = a @ params["W2"].T + params["b2"]
            zs = z - z.max(axis=1, keepdims=True)
            logp = zs - np.log(np.exp(zs).sum(axis=1, keepdims=True))
            ref.append(-logp[np.arange(len(yb)), yb].mean())
            dz = np.exp(logp)
            dz[np.arange(len(yb)), yb] -= 1
            dz /= len(yb)
            da = dz @ params["W2"]
            dh = da * (h > 0)
            grads = {"W2": dz.T @ a, "b2": dz.sum(0), "W1": dh.T @ xb, "b1": dh.sum(0)}
            e = t / 3
            lr = 0.2 * (0.2 + 0.8 * min(e, 1.0)) * (1 + math.cos(math.pi * min(e, 3) / 3)) / 2
            for k, g in grads.items():
                g = g + 1e-3 * params[k]
                bufs[k] = g if k not in bufs else 0.9 * bufs[k] + g
                params[k] = params[k] - lr * bufs[k]
            t += 1
    assert len(losses) == len(ref) == 9
    np.testing.assert_allclose(losses, ref, rtol=1e-10)
    for got, want in zip(net.params.values(), params.values()):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert [row["epoch"] for row in hist] == [1, 2, 3]
    sizes = np.array([8, 8, 4])
    assert hist["loss"][0] == pytest.approx(np.dot(ref[:3], sizes) / 20, rel=1e-12)


def test_fit_matches_torch_step_by_step(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((12, 2, 5, 5))
    y = rng.integers(0, 3, 12)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, dtype=F64, seed=0), nn.BatchNorm2d(4, dtype=F64), nn.ReLU(),
                        nn.GlobalAvgPool2d(), nn.Linear(4, 3, dtype=F64, seed=1))
    tnet = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).double()
    with torch.no_grad():
        for (_, p), tp in zip(net.params.items(), tnet.parameters()):
            tp.copy_(torch.from_numpy(p))
    opt = nn.Adam(net, lr=0.05, weight_decay=1e-4)
    sched = nn.LRSchedule(opt, nn.MultiStep([1], gamma=0.3))
    losses, hook = _record_losses()
    with hook:
        nn.fit(net, nn.Batches(x, y, batch_size=4), nn.SoftmaxCrossEntropy(), opt, 2, schedules=[sched])

    topt = torch.optim.Adam(tnet.parameters(), lr=0.05, weight_decay=1e-4)
    ref = []
    for t in range(6):
        for g in topt.param_groups:
            g["lr"] = 0.05 * (0.3 if t >= 3 else 1.0)
        i = (t % 3) * 4
        loss = torch.nn.functional.cross_entropy(tnet(torch.from_numpy(x[i:i + 4])), torch.from_numpy(y[i:i + 4]))
        topt.zero_grad()
        loss.backward()
        topt.step()
        ref.append(loss.item())
    np.testing.assert_allclose(losses, ref, rtol=1e-9)
    np.testing.assert_allclose(net[1].running_var, tnet[1].running_var.numpy(), rtol=1e-9)


# ----------------------------------------------------------------------------- resume bitwise
def _setup(seed):
    net = nn.Sequential(nn.DynamicConv2d(2, 4, 3, padding=1, seed=seed), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.GlobalAvgPool2d(), nn.Linear(4, 3, seed=seed))
    opt = nn.Adam(net, lr=0.02)
    scheds = {"lr": nn.LRSchedule(opt, nn.LinearWarmup(1) * nn.Cosine(4)), "tau": nn.TemperatureSchedule(net, epochs=2)}
    return net, opt, scheds


@pytest.mark.parametrize("fmt", ["ck.npz", "ckdir"])
def test_resume_from_a_checkpoint_is_bitwise(tmp_path, fmt):
    r = np.random.default_rng(1)
    x = r.standard_normal((12, 2, 4, 4)).astype(F32)
    y = r.integers(0, 3, 12)
    crit = nn.SoftmaxCrossEntropy()

    net, opt, sch = _setup(0)
    straight = nn.fit(net, nn.Batches(x, y, batch_size=5, shuffle=True, seed=2), crit, opt, 4,
                      schedules=list(sch.values()))

    net1, opt1, sch1 = _setup(0)
    data1 = nn.Batches(x, y, batch_size=5, shuffle=True, seed=2)
    nn.fit(net1, data1, crit, opt1, 2, schedules=list(sch1.values()))
    path = nn.save_checkpoint(tmp_path / fmt, model=net1, optimizer=opt1, data=data1, **sch1)

    net2, opt2, sch2 = _setup(7)                                # other initial values: all overwritten
    data2 = nn.Batches(x, y, batch_size=5, shuffle=True, seed=99)
    nn.load_checkpoint(path, model=net2, optimizer=opt2, data=data2, **sch2)
    assert net2[0].temperature == net1[0].temperature and opt2.lr == opt1.lr
    resumed = nn.fit(net2, data2, crit, opt2, 2, schedules=list(sch2.values()))

    assert [row["epoch"] for row in resumed] == [3, 4]
    assert [row["loss"] for row in resumed] == [row["loss"] for row in straight[2:]]
    for (k, a), b in zip(net.state_dict().items(), net2.state_dict().values()):
        assert np.array_equal(a, b), k
    assert all(np.array_equal(v, opt2.state_dict()[k]) for k, v in opt.state_dict().items())
    with pytest.raises(KeyError, match="no part|has no"):
        nn.load_checkpoint(path, model=net2, other=opt2)


def test_checkpoint_argument_errors(tmp_path):
    with pytest.raises(TypeError, match="at least one part"):
        nn.save_checkpoint(tmp_path / "a.npz")
    with pytest.raises(TypeError, match="state_dict"):
        nn.save_checkpoint(tmp_path / "a.npz", model=3)


# ----------------------------------------------------------------------------- evaluate and progress
def test_evaluate_is_batched_in_eval_mode_and_restores_modes(rng):
    net = nn.Sequential(nn.Conv2d(2, 3, 3, seed=0), nn.BatchNorm2d(3), nn.ReLU(), nn.GlobalAvgPool2d(),
                        nn.Linear(3, 4, seed=0))
    net[1].running_mean[...] = 0.3
    net[4].eval()                                               # a mixed state, restored as it was
    x = rng.standard_normal((9, 2, 5, 5)).astype(F32)
    y = rng.integers(0, 4, 9)
    before = net.state_dict()
    full = nn.evaluate(net, x, y, batch_size=100)
    small = nn.evaluate(net, x, y, batch_size=2)
    assert small["accuracy"] == full["accuracy"] and small["loss"] == pytest.approx(full["loss"], rel=1e-6)
    assert all(np.array_equal(v, net.state_dict()[k]) for k, v in before.items())
    assert net.training and net[1].training and not net[4].training
    net.eval()
    logits = net(x)
    assert full["accuracy"] == np.mean(logits.argmax(1) == y)


def test_progress_bar_only_on_a_terminal(rng, capsys):
    x = rng.standard_normal((6, 3)).astype(F32)
    y = rng.integers(0, 2, 6)
    net = nn.Sequential(nn.Linear(3, 2, seed=0))
    nn.fit(net, nn.Batches(x, y, batch_size=3), nn.SoftmaxCrossEntropy(), nn.SGD(net, lr=0.1), 1)
    assert capsys.readouterr().err == ""                       # stderr is not a terminal here
    hist = nn.fit(net, nn.Batches(x, y, batch_size=3), nn.SoftmaxCrossEntropy(), nn.SGD(net, lr=0.1), 2,
                  val=(x, y), progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "100%|" in err and "2/2" in err and "loss=" in err
    assert "epoch 2: loss" in err and "val_accuracy" in err
    assert set(hist[0]) == {"epoch", "loss", "accuracy", "time", "lr", "val_loss", "val_accuracy"}


def test_the_training_example_of_the_layer_docs_runs():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "layers.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    env: dict = {}
    exec(code, env)                                            # defines every name it uses
    assert env["sched"].t == len(env["batches"]) and np.isfinite(env["loss"])
