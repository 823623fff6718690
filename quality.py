"""An offline sample-quality score: a small digit classifier as the judge.

Inception weights cannot be downloaded offline, so the package trains its own
judge once per dataset: a small CNN classifier on the training split, cached
beside the data. From its penultimate features and its class probabilities:

* ``frechet_distance``: the Frechet distance between Gaussians fitted to the
  features of generated and of validation images (FID's formula, our features);
  biased: it grows as the number of images shrinks;
* ``kernel_distance``: the kernel distance (KID's formula, Binkowski et al.
  2018), an unbiased estimate of the squared MMD, so its expected value does not
  depend on the number of images; with its standard error over the draw of the
  generated images (a jackknife);
* ``precision`` and ``recall`` (Kynkaanniemi et al. 2019): the share of
  generated images that lie on the real images' manifold, and of real images
  that lie on the generated images' manifold (k-nearest-neighbour balls);
* ``classifier_score``: exp(E_x KL(p(y|x) || p(y))), the Inception Score's formula;
* ``class_histogram``: predicted classes, to show mode collapse;
* ``saturation``: the share of samples that are mostly white or blank (and the
  judged classes of the mostly white ones).

Every score is reported next to the judge's validation accuracy and the
distance's floor (as many real training images against the validation set).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader

from config import N_CLASSES
from files import atomic_save, writable_beside_data
from distributed import progress_bar

log = logging.getLogger(__name__)

JUDGE_FORMAT = "ddpm-tutorial-judge"
JUDGE_VERSION = 1
PR_NEIGHBOURS = 3  # k of the k-NN balls of precision and recall (Kynkaanniemi et al. 2019)


class DigitClassifier(nn.Module):
    """Three conv layers, a 128-wide feature layer and a 10-way head, for 28x28 or 64x64 digits."""

    def __init__(self, feature_dim: int = 128, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
            nn.Flatten(), nn.Linear(64 * 16, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) images in [-1, 1] -> (N, feature_dim) features."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def predictions(judge: DigitClassifier, loader: DataLoader,
                device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """The judge's classes and the true labels of a loader of (image, label) batches."""
    judge.eval()
    predicted, labels = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, dtype=torch.long)]
    with torch.no_grad():
        for x, y in loader:
            predicted.append(judge(x.to(device)).argmax(1).cpu())
            labels.append(torch.as_tensor(y).long().cpu())
    return torch.cat(predicted), torch.cat(labels)


def accuracy(judge: DigitClassifier, loader: DataLoader, device: torch.device | str) -> float:
    """Share of correctly classified images in a loader of (image, label) batches."""
    predicted, labels = predictions(judge, loader, device)
    return (predicted == labels).sum().item() / max(len(labels), 1)


def per_class_accuracy(judge: DigitClassifier, loader: DataLoader, device: torch.device | str) -> list[float | None]:
    """The judge's accuracy on the real images of each class (None for a class the loader lacks): the ceiling
    of a conditional model's requested-digit accuracy, which real digits themselves do not always reach."""
    predicted, labels = predictions(judge, loader, device)
    return [(predicted[labels == d] == d).double().mean().item() if (labels == d).any() else None
            for d in range(N_CLASSES)]


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """counts[true digit, judged digit] of two vectors of classes (bench/judge_confusion.py)."""
    return torch.bincount(labels.long() * N_CLASSES + predicted.long(),
                          minlength=N_CLASSES ** 2).view(N_CLASSES, N_CLASSES)


def judged_as(probs: torch.Tensor, digit: int) -> dict[str, Any]:
    """The images a judge reads as ``digit``, from its (N, 10) class probabilities (bench/judged_digit.py):
    their indices, least sure first; p(digit) of each, in that order; and how often each other digit was
    the second choice."""
    chosen = (probs.argmax(1) == digit).nonzero().squeeze(1)
    sure = probs[chosen, digit]
    order = sure.argsort()
    others = probs[chosen].clone()
    others[:, digit] = -1
    return dict(indices=chosen[order], sure=sure[order],
                second_choice=torch.bincount(others.argmax(1), minlength=probs.shape[1]).tolist())


def train_classifier(
    train_loader: DataLoader, val_loader: DataLoader, device: torch.device | str, epochs: int = 2, seed: int = 0
) -> tuple[DigitClassifier, float]:
    """Train the judge with Adam and cross-entropy; returns it with its validation accuracy.

    ``seed`` fixes its initial weights without touching the caller's random state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        judge = DigitClassifier().to(device)
    optim = torch.optim.Adam(judge.parameters(), lr=1e-3)
    for epoch in range(epochs):
        judge.train()
        for x, y in progress_bar(train_loader, desc=f"Judge epoch {epoch + 1}/{epochs}", leave=False):
            loss = nn.functional.cross_entropy(judge(x.to(device)), y.to(device))
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
    return judge, accuracy(judge, val_loader, device)


def load_judge(path: str | os.PathLike, device: torch.device | str = "cpu") -> DigitClassifier:
    """The judge in a cache file written by ``load_or_train_judge`` (bench scripts: a given judge, never trained)."""
    judge = DigitClassifier().to(device)
    judge.load_state_dict(torch.load(path, map_location=device, weights_only=True)["model"])
    return judge.eval()


def load_or_train_judge(
    cache_path: str | os.PathLike,
    train_loader: DataLoader,
    val_loader: DataLoader,
    device: torch.device | str,
    epochs: int = 2,
    seed: int = 0,
) -> tuple[DigitClassifier, float]:
    """The cached judge at ``cache_path`` (weights_only load), or a new one trained and cached there
    (``epochs`` and ``seed``: of a new one)."""
    cache_path = Path(cache_path)
    if cache_path.is_file():
        try:
            cached = torch.load(cache_path, map_location=device, weights_only=True)
            if cached.get("format") == JUDGE_FORMAT and cached.get("version") == JUDGE_VERSION:
                judge = DigitClassifier().to(device)
                judge.load_state_dict(cached["model"])
                judge.eval()
                return judge, float(cached["val_accuracy"])
        except Exception as exc:  # a stale or broken cache is retrained, not fatal
            log.warning("ignoring the judge cache %s (%s): training a new judge", cache_path, exc)
    log.info("Training the judge classifier (cached at %s)", cache_path)
    judge, acc = train_classifier(train_loader, val_loader, device, epochs=epochs, seed=seed)
    atomic_save(dict(format=JUDGE_FORMAT, version=JUDGE_VERSION, model=judge.state_dict(), val_accuracy=acc),
                cache_path)
    judge.eval()
    return judge, acc


def judge_outputs(
    judge: DigitClassifier, images: torch.Tensor | Iterable, device: torch.device | str, batch_size: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (float64) and class probabilities of a tensor of images or a loader of batches."""
    if isinstance(images, torch.Tensor):
        images = [(chunk,) for chunk in images.split(batch_size)]
    feats, probs = [], []
    judge.eval()
    with torch.no_grad():
        for batch in images:
            x = batch[0].to(device).clamp(-1, 1)
            f = judge.features(x)
            feats.append(f.double().cpu())
            probs.append(judge.head(f).softmax(1).double().cpu())
    return torch.cat(feats), torch.cat(probs)


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D):

    ``|mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2)``, in float64.
    """
    a, b = features_a.double(), features_b.double()
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("the Frechet distance needs at least 2 feature vectors per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(cov_a + cov_b - 2 * cross))


def _polynomial_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KID's kernel ``k(x, y) = (x . y / d + 1)^3`` between the rows of two (N, d) matrices."""
    return (a @ b.T / a.shape[1] + 1) ** 3


def mmd2_unbiased(a: torch.Tensor, b: torch.Tensor) -> float:
    """The unbiased estimate of the squared MMD between two samples (N, d) and (M, d) with KID's kernel
    (Binkowski et al. 2018): the kernel means of pairs of distinct points within each sample,
    less twice the mean over the cross pairs. Its expected value is 0 for two samples of one distribution."""
    m, n = a.shape[0], b.shape[0]
    k_aa, k_bb, k_ab = _polynomial_kernel(a, a), _polynomial_kernel(b, b), _polynomial_kernel(a, b)
    within_a = (k_aa.sum() - k_aa.diagonal().sum()) / (m * (m - 1))
    within_b = (k_bb.sum() - k_bb.diagonal().sum()) / (n * (n - 1))
    return float(within_a + within_b - 2 * k_ab.mean())


def _block_rows(n_columns: int, budget_bytes: int) -> int:
    """How many rows of float64 values (distances or kernel values) to ``n_columns`` points fit in ``budget_bytes``."""
    return max(1, budget_bytes // (8 * max(n_columns, 1)))


def _kernel_row_sums(a: torch.Tensor, b: torch.Tensor, skip_diagonal: bool, budget_bytes: int) -> torch.Tensor:
    """Each row of ``a``'s sum of KID's kernel with every row of ``b`` (with the others when ``a`` is ``b``:
    ``skip_diagonal``), in row blocks of at most ``budget_bytes`` of kernel values."""
    step, sums = _block_rows(b.shape[0], budget_bytes), []
    for start in range(0, a.shape[0], step):
        block = _polynomial_kernel(a[start:start + step], b)
        if skip_diagonal:
            rows = torch.arange(block.shape[0])
            block[rows, rows + start] = 0.0
        sums.append(block.sum(1))
    return torch.cat(sums)


def kernel_distance(generated: torch.Tensor, reference: torch.Tensor,
                    budget_bytes: int = 1 << 25) -> tuple[float, float]:
    """The kernel (inception) distance of Binkowski et al. 2018 between two feature sets (N, d), in float64.

    Returns ``(estimate, standard error)``. The estimate is ``mmd2_unbiased`` of the whole sets (every
    pair, computed from kernel row sums in blocks of at most ``budget_bytes``), so its expected value does
    not depend on N. The error is that of the draw of the ``generated`` images: the leave-one-out
    jackknife (Efron and Stein 1981) of the same estimate over the generated rows, in closed form from
    the row sums. The ``reference`` set (the validation images) is the same for every row of a table,
    so its own noise is common to the rows and left out. (Averages over overlapping random subsets, as
    KID is often reported, give an error that describes the subsampling, several times too small at
    N = 2000: docs/results.md, "Scores at any N".)
    """
    a, b = generated.double(), reference.double()
    m, n = a.shape[0], b.shape[0]
    if m < 3 or n < 2:
        raise ValueError(f"the kernel distance needs at least 3 generated and 2 reference feature vectors, "
                         f"got {m} and {n}")
    row_aa = _kernel_row_sums(a, a, True, budget_bytes)
    row_ab = _kernel_row_sums(a, b, False, budget_bytes)
    within_b = _kernel_row_sums(b, b, True, budget_bytes).sum() / (n * (n - 1))
    s_aa, s_ab = row_aa.sum(), row_ab.sum()
    estimate = s_aa / (m * (m - 1)) + within_b - 2 * s_ab / (m * n)
    # Leaving generated row i out drops its pairs: twice its row of k_aa, and its row of k_ab.
    left_out = (s_aa - 2 * row_aa) / ((m - 1) * (m - 2)) + within_b - 2 * (s_ab - row_ab) / ((m - 1) * n)
    variance = (m - 1) / m * (left_out - left_out.mean()).pow(2).sum()
    return float(estimate), float(variance.sqrt())


def knn_radii(features: torch.Tensor, k: int = 3, budget_bytes: int = 1 << 25) -> torch.Tensor:
    """Each point's distance to its k-th nearest other point in the same set (Kynkaanniemi et al. 2019),
    computed in row blocks of at most ``budget_bytes`` of distances."""
    x = features.double()
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k-nearest-neighbour radii need 1 <= k < the number of points, got k={k} "
                         f"for {x.shape[0]} points")
    step, radii = _block_rows(x.shape[0], budget_bytes), []
    for start in range(0, x.shape[0], step):
        block = torch.cdist(x[start:start + step], x)
        rows = torch.arange(block.shape[0])
        block[rows, rows + start] = float("inf")  # a point is not its own neighbour
        radii.append(block.kthvalue(k, dim=1).values)
    return torch.cat(radii)


def in_manifold(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
                budget_bytes: int = 1 << 25) -> torch.Tensor:
    """Which ``points`` lie in the union of the balls around ``centres`` with ``radii`` (boundary included),
    in row blocks of at most ``budget_bytes`` of distances."""
    p, c = points.double(), centres.double()
    step = _block_rows(c.shape[0], budget_bytes)
    return torch.cat([(torch.cdist(p[start:start + step], c) <= radii).any(1)
                      for start in range(0, p.shape[0], step)])


def precision_recall(real_features: torch.Tensor, fake_features: torch.Tensor, k: int = 3,
                     budget_bytes: int = 1 << 25) -> tuple[float, float]:
    """Improved precision and recall of Kynkaanniemi et al. 2019, in float64.

    Each set's manifold is the union of balls around its points, each ball's radius the distance to
    the point's k-th nearest neighbour in its own set (``knn_radii``). Precision is the share of fake
    points inside the real manifold, recall the share of real points inside the fake manifold. The
    distances are computed in blocks of at most ``budget_bytes`` (the peak memory is a few blocks), with
    ``torch.cdist``'s matrix-product formula: exact duplicates may lie a rounding error apart.
    """
    real, fake = real_features.double(), fake_features.double()
    precision = in_manifold(fake, real, knn_radii(real, k, budget_bytes), budget_bytes).double().mean()
    recall = in_manifold(real, fake, knn_radii(fake, k, budget_bytes), budget_bytes).double().mean()
    return float(precision), float(recall)


def classifier_score(probs: torch.Tensor, eps: float = 1e-12) -> float:
    """exp(mean_x KL(p(y|x) || p(y))) with p(y) the mean prediction; 1 (one class) to 10 (all, confidently)."""
    probs = probs.double()
    marginal = probs.mean(0, keepdim=True)
    kl = (probs * ((probs + eps).log() - (marginal + eps).log())).sum(1)
    return float(kl.mean().exp())


def class_histogram(probs: torch.Tensor) -> list[int]:
    """How many images the judge puts in each class."""
    return torch.bincount(probs.argmax(1), minlength=probs.shape[1]).tolist()


def mostly_white(images: torch.Tensor) -> torch.Tensor:
    """Which images (in [-1, 1], black background) have over half their pixels at 0.9 or more."""
    return (images.clamp(-1, 1).flatten(1) >= 0.9).float().mean(1) > 0.5


def saturation(images: torch.Tensor) -> dict[str, float]:
    """Share of images that are ``mostly_white`` (over half their pixels >= 0.9) or ``blank``
    (under 1% of their pixels > 0), for images in [-1, 1] on a black background."""
    blank = ((images.clamp(-1, 1).flatten(1) > 0).float().mean(1) < 0.01).float().mean().item()
    return dict(mostly_white=mostly_white(images).float().mean().item(), blank=blank)


def equal_sizes(a: torch.Tensor, b: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The two sets with the larger one cut to a seeded random subset of the smaller one's size."""
    n = min(len(a), len(b))
    generator = torch.Generator().manual_seed(seed)
    return tuple(x if len(x) == n else x[torch.randperm(len(x), generator=generator)[:n]] for x in (a, b))


def score(
    judge: DigitClassifier, samples: torch.Tensor, val_features: torch.Tensor, device: torch.device | str,
    seed: int = 0,
) -> dict[str, Any]:
    """All scores of one set of images against the validation features.

    ``kernel_distance`` and ``kernel_distance_se``: ``kernel_distance`` with its defaults;
    ``precision`` and ``recall``: ``precision_recall`` (k = ``PR_NEIGHBOURS``) of as many validation
    features as there are samples (a seeded random subset; the larger set is cut when the samples
    outnumber them), as Kynkaanniemi et al. 2019 compare sets of equal size: the k-NN radii shrink as a
    set grows. None for sets of at most k images.
    """
    feats, probs = judge_outputs(judge, samples, device)
    kid, kid_se = kernel_distance(feats, val_features)
    precision, recall = (precision_recall(*equal_sizes(val_features, feats, seed=seed), k=PR_NEIGHBOURS)
                         if min(len(feats), len(val_features)) > PR_NEIGHBOURS else (None, None))
    return dict(
        n=len(samples),
        frechet_distance=frechet_distance(feats, val_features),
        kernel_distance=kid,
        kernel_distance_se=kid_se,
        precision=precision,
        recall=recall,
        classifier_score=classifier_score(probs),
        class_histogram=class_histogram(probs),
        **saturation(samples),
        # Not every white image is a failure: resized to 64x64, many real Persian 0s (a dot) are mostly white
        # (docs/results.md, "Persian digits: the noisiest steps").
        mostly_white_classes=class_histogram(probs[mostly_white(samples).to(probs.device)]),
    )


def requested_digit_accuracy(judge: DigitClassifier, samples: torch.Tensor, labels: torch.Tensor,
                             device: torch.device | str) -> dict[str, Any]:
    """The share of samples that the judge classifies as the digit they were drawn for: overall and per class.

    ``per_class[d]`` is None for a digit that was not asked for.
    """
    _, probs = judge_outputs(judge, samples, device)
    hit = probs.argmax(1) == labels.cpu()
    per_class = [hit[labels.cpu() == d].double().mean().item() if (labels == d).any() else None
                 for d in range(N_CLASSES)]
    return dict(overall=hit.double().mean().item(), per_class=per_class)


def format_table(rows: dict[str, dict[str, Any]], judge_accuracy: float) -> str:
    """A plain-text table of score rows (KID x 1e3: the kernel distance and its standard error, times 1000)."""
    lines = [f"judge accuracy on the validation set: {judge_accuracy:.4f}",
             f"{'images':<32} {'n':>6} {'Frechet':>9} {'KID x1e3 +- se':>17} {'prec':>5} {'recall':>6} "
             f"{'cls score':>9} {'white':>6} {'blank':>6}  classes 0-9"]
    for name, r in rows.items():
        kid = f"{1e3 * r['kernel_distance']:.3f} +- {1e3 * r['kernel_distance_se']:.3f}"
        precision, recall = ("-" if r[key] is None else f"{r[key]:.3f}" for key in ("precision", "recall"))
        lines.append(f"{name:<32} {r['n']:>6} {r['frechet_distance']:>9.3f} {kid:>17} {precision:>5} "
                     f"{recall:>6} {r['classifier_score']:>9.3f} {r['mostly_white']:>6.1%} "
                     f"{r['blank']:>6.1%}  {' '.join(map(str, r['class_histogram']))}")
    return "\n".join(lines)


def report_name(dataset: str, sampler: dict[str, Any], guidance: float | None = None,
                guidance_interval: tuple[int, int] | None = None) -> str:
    """``quality_<dataset>_<sampler><steps>[_clip-<mode>][_logsnr][_posterior][_eta<E>][_w<W>[_t<LO>-<HI>]].json``
    for --evaluate, from a sampler's ``settings()`` (``_w<W>``: the guidance weight of a class-conditional
    checkpoint, ``_t<LO>-<HI>`` its --guidance-interval)."""
    name = f"quality_{dataset}_{sampler['sampler']}{sampler['sample_steps']}"
    if sampler["clip_x0"] != "none":
        name += f"_clip-{sampler['clip_x0']}"
    if sampler.get("step_schedule", "uniform") != "uniform":
        name += f"_{sampler['step_schedule']}"
    if sampler.get("variance", "beta") != "beta":
        name += f"_{sampler['variance']}"
    if sampler.get("eta", 0):
        name += f"_eta{sampler['eta']:g}"
    if guidance is not None:
        name += f"_w{guidance:g}"
        if guidance_interval is not None:
            name += f"_t{guidance_interval[0]}-{guidance_interval[1]}"
    return name + ".json"


def judge_cache(judge_dir: str | os.PathLike | None, data_root: str | os.PathLike, dataset: str,
                split_seed: int) -> Path:
    """Where the judge classifier is cached: ``judge_dir``, else beside the data, else ./data/judges.

    The Persian split depends on the seed, so its judges are cached per split seed.
    """
    name = f"judge_{dataset}.pt" if dataset == "mnist" else f"judge_{dataset}_split{split_seed}.pt"
    folder = Path(judge_dir) if judge_dir else writable_beside_data(data_root, "judges")
    return folder / name
