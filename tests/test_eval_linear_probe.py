"""The linear probe finds a linear class structure when there is one, and only then."""

import torch

from bevt.eval.linear_probe import fit_linear_probe, probe_features, score


def _gaussian_classes(generator, n_per_class, means, noise=1.0):
    classes, dim = means.shape
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    features = means[labels] + noise * torch.randn(len(labels), dim, generator=generator)
    return features, labels


def test_probe_recovers_gaussian_classes_and_not_random_labels():
    generator = torch.Generator().manual_seed(0)
    # 6 classes in 64 dimensions, means 3 noise-deviations apart, on an offset and a scale
    means = 3.0 * torch.randn(6, 64, generator=generator)
    train_x, train_y = _gaussian_classes(generator, 40, means)
    val_x, val_y = _gaussian_classes(generator, 40, means)
    offset, scale = 100.0, 50.0
    probe = fit_linear_probe(offset + scale * train_x, train_y, 6)
    assert score(probe, offset + scale * val_x, val_y)["top1"] > 95

    # the same features with labels drawn at random: the probe fits the training set, yet stays
    # near chance (16.7%) on fresh data
    random_train = torch.randint(6, train_y.shape, generator=generator)
    random_val = torch.randint(6, val_y.shape, generator=generator)
    probe = fit_linear_probe(train_x, random_train, 6)
    assert score(probe, train_x, random_train)["top1"] > 60
    assert score(probe, val_x, random_val)["top1"] < 30


def test_probe_is_deterministic_and_scores_every_mode():
    generator = torch.Generator().manual_seed(1)
    means = 2.0 * torch.randn(4, 16, generator=generator)
    x, y = _gaussian_classes(generator, 20, means)
    val_x, val_y = _gaussian_classes(generator, 10, means)
    noise = torch.randn(val_x.shape, generator=generator)
    train = {"outputs": {"normal": x}, "labels": y}
    val = {"outputs": {"normal": val_x, "shuffled": noise}, "labels": val_y}
    first, second = probe_features(train, val, 4), probe_features(train, val, 4)
    assert first == second
    assert first["results"]["normal"]["top1"] > 90 > first["results"]["shuffled"]["top1"]
    assert len(first["results"]["normal"]["correct"]) == 40
    assert first["results"]["normal"]["top5"] == 100.0  # 4 classes: the top 5 hold all of them


def test_the_fit_stops_where_autograd_finds_no_gradient():
    """The probe's closed-form gradient is the objective's: at the returned weights, autograd's
    gradient of cross-entropy + L2 vanishes (a wrong closed form stops elsewhere)."""
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(120, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (120,), generator=generator)
    probe = fit_linear_probe(features, labels, num_classes=4, l2=1e-2)
    weight, bias = probe.weight.clone().requires_grad_(), probe.bias.clone().requires_grad_()
    x = (features - probe.mean) / probe.std
    loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, labels) + 0.5 * 1e-2 * weight.pow(2).sum()
    grads = torch.autograd.grad(loss, (weight, bias))
    assert max(g.abs().max().item() for g in grads) < 1e-5
