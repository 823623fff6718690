"""Tests of the offline quality score (quality.py)."""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import quality


def test_frechet_distance_of_known_gaussians():
    torch.manual_seed(0)
    a = torch.randn(20000, 3, dtype=torch.float64)
    assert quality.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Same covariance, means 2 apart along one axis: distance |mu_a - mu_b|^2 = 4.
    assert quality.frechet_distance(a, a + torch.tensor([2.0, 0, 0], dtype=torch.float64)) == pytest.approx(4.0)
    # Diagonal covariances: sum (sqrt(var_a) - sqrt(var_b))^2 = (1 - 3)^2 = 4 for std 1 vs std 3 on one axis.
    scaled = a * torch.tensor([3.0, 1.0, 1.0], dtype=torch.float64)
    assert quality.frechet_distance(a, scaled) == pytest.approx(4.0, rel=0.03)
    with pytest.raises(ValueError, match="at least 2"):
        quality.frechet_distance(a[:1], a)



def features_with(mean: np.ndarray, cov: np.ndarray, n: int, seed: int) -> torch.Tensor:
    """n feature vectors whose sample mean and (unbiased) sample covariance are exactly ``mean`` and ``cov``."""
    z = np.random.default_rng(seed).standard_normal((n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z.T))).T  # sample covariance exactly I
    return torch.from_numpy(z @ np.linalg.cholesky(cov).T + mean)


def test_frechet_distance_of_non_commuting_covariances_in_two_dimensions():
    """C_a C_b != C_b C_a, so no formula of separate square roots is right. In two dimensions
    tr(sqrt(M)) = sqrt(tr M + 2 sqrt(det M)), and M = C_a^1/2 C_b C_a^1/2 has tr M = tr(C_a C_b) = 10 and
    det M = det C_a det C_b = 12: d = |mu_a - mu_b|^2 + tr C_a + tr C_b - 2 sqrt(10 + 2 sqrt(12))."""
    cov_a, cov_b = np.array([[2.0, 1.0], [1.0, 2.0]]), np.array([[1.0, 0.0], [0.0, 4.0]])
    assert not np.allclose(cov_a @ cov_b, cov_b @ cov_a)
    a = features_with(np.array([1.0, 0.0]), cov_a, 50, seed=0)
    b = features_with(np.array([0.0, 2.0]), cov_b, 70, seed=1)
    expected = (1 + 4) + (4 + 5) - 2 * math.sqrt(10 + 2 * math.sqrt(12))  # 5.771219...
    assert quality.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert quality.frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)  # symmetric
    assert quality.frechet_distance(a.float(), b.float()) == pytest.approx(expected, rel=1e-5)


def test_frechet_distance_of_random_covariances_by_the_eigenvalues_of_their_product():
    """tr((C_a^1/2 C_b C_a^1/2)^1/2) = sum of sqrt(eigenvalues of C_a C_b) (similar matrices), computed here
    with numpy's general eigenvalue routine on the product, without any matrix square root."""
    rng = np.random.default_rng(5)
    a = torch.from_numpy(rng.standard_normal((300, 6)) @ rng.standard_normal((6, 6)) + rng.standard_normal(6))
    b = torch.from_numpy(rng.standard_normal((200, 6)) @ rng.standard_normal((6, 6)))
    x, y = a.numpy(), b.numpy()
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    assert np.abs(cov_x @ cov_y - cov_y @ cov_x).max() > 1.0
    eig = np.linalg.eigvals(cov_x @ cov_y)
    assert np.abs(eig.imag).max() < 1e-8 and eig.real.min() > 0
    expected = (np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(cov_x) + np.trace(cov_y)
                - 2 * np.sqrt(eig.real).sum())
    assert quality.frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)

def test_classifier_score_bounds():
    confident_all_classes = torch.eye(10).repeat(3, 1)
    assert quality.classifier_score(confident_all_classes) == pytest.approx(10.0, rel=1e-6)
    one_class = torch.zeros(30, 10)
    one_class[:, 4] = 1
    assert quality.classifier_score(one_class) == pytest.approx(1.0)
    unsure = torch.full((30, 10), 0.1)
    assert quality.classifier_score(unsure) == pytest.approx(1.0)
    two_classes = torch.eye(10)[[0, 1] * 5]
    assert quality.classifier_score(two_classes) == pytest.approx(2.0, rel=1e-6)


def test_class_histogram():
    probs = torch.eye(10)[[3, 3, 7, 0]]
    assert quality.class_histogram(probs) == [1, 0, 0, 2, 0, 0, 0, 1, 0, 0]


def test_saturation():
    black = -torch.ones(1, 1, 10, 10)
    white = torch.ones(1, 1, 10, 10)
    digit = black.clone()
    digit[..., 2:8, 4:6] = 1  # 12% of pixels lit
    images = torch.cat([black, white, digit, digit])
    assert quality.saturation(images) == dict(mostly_white=0.25, blank=0.25)
    assert quality.saturation(white * 5) == dict(mostly_white=1.0, blank=0.0)  # clamped first


class BrightnessJudge(torch.nn.Module):
    """A stand-in judge: reads bright images (mean above 0) as 0, the others as 5."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.mean(dim=(1, 2, 3)), x.std(dim=(1, 2, 3))], 1)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(f), 10, device=f.device)
        logits[:, 0] = 10 * f[:, 0]
        logits[:, 5] = -10 * f[:, 0]
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_the_judges_accuracy_per_class_on_real_images():
    """The ceiling of the requested-digit accuracy: how often the judge reads real digits of each class right."""
    bright, dark = torch.ones(1, 1, 4, 4), -torch.ones(1, 1, 4, 4)
    images = torch.cat([bright, bright, bright, bright, dark, dark, dark])
    labels = torch.tensor([0, 0, 0, 5, 5, 5, 3])  # read as 0 0 0 0 5 5 5
    loader = DataLoader(TensorDataset(images, labels), batch_size=3)
    per_class = quality.per_class_accuracy(BrightnessJudge(), loader, "cpu")
    assert per_class[0] == 1.0 and per_class[5] == pytest.approx(2 / 3) and per_class[3] == 0.0
    assert [per_class[d] for d in (1, 2, 4, 6, 7, 8, 9)] == [None] * 7
    assert quality.accuracy(BrightnessJudge(), loader, "cpu") == pytest.approx(5 / 7)
    counts = quality.confusion_matrix(*quality.predictions(BrightnessJudge(), loader, "cpu"))
    assert counts.shape == (10, 10) and counts.sum() == 7
    assert (counts[0, 0], counts[5, 0], counts[5, 5], counts[3, 5]) == (3, 1, 2, 1)  # true 5 read as 0, true 3 as 5
    assert counts.sum(0)[0] == 4 and counts.sum(1)[5] == 3  # judged as 0; truly 5


def test_judged_as_orders_the_images_of_one_class_least_sure_first():
    """bench/judged_digit.py: which images are read as 2, how sure, and the runner-up digit of each."""
    probs = torch.full((5, 10), 0.01)
    probs[0, 2], probs[0, 8] = 0.60, 0.31  # a 2, 8 second
    probs[1, 7] = 0.91                     # a 7
    probs[2, 2], probs[2, 7] = 0.90, 0.01  # a sure 2; ties among the others go to the lowest digit, 0
    probs[3, 2], probs[3, 7] = 0.45, 0.40  # an unsure 2, 7 second
    probs[4, 2], probs[4, 3] = 0.80, 0.11  # a 2, 3 second
    judged = quality.judged_as(probs, 2)
    assert judged["indices"].tolist() == [3, 0, 4, 2]
    assert judged["sure"].tolist() == pytest.approx([0.45, 0.60, 0.80, 0.90])
    assert judged["second_choice"] == [1, 0, 0, 1, 0, 0, 0, 1, 1, 0]
    assert quality.judged_as(probs, 5)["indices"].tolist() == [] and sum(quality.judged_as(probs, 5)["second_choice"]) == 0


def white_and_digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Two all-white images and three dark images with a bright bar (a stroke)."""
    white = torch.ones(2, 1, 10, 10)
    digit = -torch.ones(3, 1, 10, 10)
    digit[..., 2:8, 4:6] = 1
    return white, digit


def test_score_names_the_judged_classes_of_mostly_white_images():
    """Resized to 64x64, half the real Persian 0s are mostly white: the report says which classes the white
    images are read as, so a white 0 can be told from a white blob."""
    white, digit = white_and_digit_images()
    row = quality.score(BrightnessJudge(), torch.cat([white, digit]), torch.randn(50, 2, dtype=torch.float64), "cpu")
    assert row["mostly_white"] == pytest.approx(0.4) and row["class_histogram"] == [2, 0, 0, 0, 0, 3, 0, 0, 0, 0]
    assert row["mostly_white_classes"] == [2, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert quality.score(BrightnessJudge(), digit, torch.randn(50, 2, dtype=torch.float64),
                         "cpu")["mostly_white_classes"] == [0] * 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_score_of_samples_on_cuda():
    """--evaluate --device cuda: the samples arrive on the GPU, the judge's outputs come back on the CPU."""
    samples = torch.cat(white_and_digit_images()).cuda()
    row = quality.score(BrightnessJudge().cuda(), samples, torch.randn(50, 2, dtype=torch.float64), "cuda")
    assert row["mostly_white_classes"] == [2, 0, 0, 0, 0, 0, 0, 0, 0, 0]


def test_judge_learns_and_is_cached(tmp_path):
    """A judge trained on two easy classes separates them; the cache is reused, not retrained."""
    torch.manual_seed(0)
    images = -torch.ones(64, 1, 28, 28)
    labels = torch.arange(64) % 2
    images[labels == 1, :, 10:18, 10:18] = 1  # class 1: a white square
    loader = DataLoader(TensorDataset(images, labels), batch_size=16, shuffle=True)
    path = tmp_path / "judges" / "judge_mnist.pt"
    judge, acc = quality.load_or_train_judge(path, loader, loader, "cpu", epochs=8)
    assert acc == 1.0 and path.is_file()
    feats, probs = quality.judge_outputs(judge, images, "cpu", batch_size=10)
    assert feats.shape == (64, 128) and probs.shape == (64, 10)
    assert torch.allclose(probs.sum(1), torch.ones(64, dtype=torch.float64))
    cached, cached_acc = quality.load_or_train_judge(path, None, None, "cpu")  # no loaders needed
    assert cached_acc == acc
    assert torch.allclose(quality.judge_outputs(cached, images, "cpu")[1], probs, atol=1e-6)
    report = quality.score(judge, images, feats, "cpu")
    assert report["n"] == 64 and report["frechet_distance"] == pytest.approx(0.0, abs=1e-3)
    assert report["class_histogram"][:2] == [32, 32] and math.isclose(report["classifier_score"], 2.0, rel_tol=0.05)
    table = quality.format_table({"real": report}, acc)
    assert "judge accuracy on the validation set: 1.0000" in table and "32 32 0 0" in table


def test_load_judge_reads_the_cache_that_load_or_train_judge_writes(tmp_path):
    images = torch.linspace(-1, 1, 8).view(8, 1, 1, 1).expand(8, 1, 28, 28).contiguous()
    loader = DataLoader(TensorDataset(images, torch.arange(8) % 2), batch_size=8)
    judge, _ = quality.load_or_train_judge(tmp_path / "j.pt", loader, loader, "cpu", epochs=1)
    loaded = quality.load_judge(tmp_path / "j.pt")
    assert not loaded.training
    assert torch.equal(quality.judge_outputs(loaded, images, "cpu")[1], quality.judge_outputs(judge, images, "cpu")[1])


def test_a_new_judge_takes_the_given_seed(tmp_path):
    """bench/train_judge.py: the seed sets a new judge's initial weights, as train_classifier's does."""
    images = torch.linspace(-1, 1, 8).view(8, 1, 1, 1).expand(8, 1, 28, 28).contiguous()
    loader = DataLoader(TensorDataset(images, torch.arange(8) % 2), batch_size=8)
    judge, _ = quality.load_or_train_judge(tmp_path / "a.pt", loader, loader, "cpu", epochs=1, seed=3)
    same, _ = quality.train_classifier(loader, loader, "cpu", epochs=1, seed=3)
    other, _ = quality.load_or_train_judge(tmp_path / "b.pt", loader, loader, "cpu", epochs=1, seed=4)
    assert torch.equal(judge.head.weight, same.head.weight)
    assert not torch.equal(judge.head.weight, other.head.weight)


def test_broken_judge_cache_is_retrained(tmp_path, caplog):
    path = tmp_path / "judge.pt"
    path.write_bytes(b"garbage")
    images = -torch.ones(8, 1, 28, 28)
    loader = DataLoader(TensorDataset(images, torch.zeros(8, dtype=torch.long)), batch_size=8)
    quality.load_or_train_judge(path, loader, loader, "cpu")
    assert "ignoring the judge cache" in caplog.text
    assert torch.load(path, weights_only=True)["format"] == quality.JUDGE_FORMAT


def biased_mmd2(a: torch.Tensor, b: torch.Tensor) -> float:
    """The squared MMD with the diagonals kept (the V-statistic): the estimate KID avoids."""
    kernel = lambda x, y: (x @ y.T / x.shape[1] + 1) ** 3  # noqa: E731
    return float(kernel(a, a).mean() + kernel(b, b).mean() - 2 * kernel(a, b).mean())


def test_unbiased_mmd2_by_hand():
    """d = 2, k(x, y) = (x.y / 2 + 1)^3: within a, k = 1; within b, x.y = -2 gives 0; the cross pairs
    give 1.5^3, 0.5^3, 1.5^3, 0.5^3 (mean 1.75): 1 + 0 - 2 * 1.75 = -2.5 (the biased estimate: 2.5 higher)."""
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    assert quality.mmd2_unbiased(a, b) == pytest.approx(-2.5)
    # The diagonals: k(a_i, a_i) = 1.5^3, k(b_i, b_i) = 2^3; (2 * 3.375 + 2) / 4 + (2 * 8 + 0) / 4 - 3.5 = 2.6875.
    assert biased_mmd2(a.double(), b.double()) == pytest.approx(2.6875)
    with pytest.raises(ValueError, match="at least 3 generated and 2 reference feature vectors, got 2 and 2"):
        quality.kernel_distance(a, b)
    with pytest.raises(ValueError, match="got 3 and 1"):
        quality.kernel_distance(torch.eye(3)[:, :2], b[:1])


def test_unbiased_mmd2_divides_by_the_feature_dimension_not_the_count():
    """3 and 2 points in d = 1, k(x, y) = (x y + 1)^3: within a the pairs (1, 2), (1, 0), (2, 0) give 27, 1, 1
    (mean 29 / 3), within b (1, -1) gives 0, the cross pairs 8, 0, 27, -1, 1, 1 (mean 6): 29/3 - 12 = -7/3.
    A kernel over the number of points (3) instead of d would give another value."""
    a, b = torch.tensor([[1.0], [2.0], [0.0]]), torch.tensor([[1.0], [-1.0]])
    assert quality.mmd2_unbiased(a, b) == pytest.approx(-7 / 3)


class PixelJudge(torch.nn.Module):
    """A stand-in judge that reads an image's class from which of its first ten pixels is lit."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10]

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return 10 * features


def test_requested_digit_accuracy_by_hand():
    """Asked for 3, 3, 7, 7, 1 and read as 3, 2, 7, 7, 5: 3 of 5 overall, 3: 1/2, 7: 2/2, 1: 0/1, others None."""
    samples = -torch.ones(5, 1, 28, 28)
    for i, judged in enumerate((3, 2, 7, 7, 5)):
        samples[i, 0, 0, judged] = 1.0
    got = quality.requested_digit_accuracy(PixelJudge(), samples, torch.tensor([3, 3, 7, 7, 1]), "cpu")
    assert got["overall"] == pytest.approx(0.6)
    assert got["per_class"] == [None, 0.0, None, 0.5, None, None, None, 1.0, None, None]


def test_kernel_distance_is_unbiased_on_gaussians():
    """Two samples of one Gaussian: the unbiased estimate averages to 0 over independent draws, the
    biased one is clearly positive at every draw; two different Gaussians are clearly apart."""
    generator = torch.Generator().manual_seed(0)
    draw = lambda shift=0.0: torch.randn(20, 8, dtype=torch.float64, generator=generator) + shift  # noqa: E731
    pairs = [(draw(), draw()) for _ in range(300)]
    unbiased = torch.tensor([quality.mmd2_unbiased(a, b) for a, b in pairs])
    biased = torch.tensor([biased_mmd2(a, b) for a, b in pairs])
    standard_error = unbiased.std() / len(pairs) ** 0.5
    assert abs(unbiased.mean()) < 3 * standard_error
    assert (biased > 0).all() and biased.mean() > 30 * standard_error
    same, same_se = quality.kernel_distance(torch.randn(400, 8, generator=generator),
                                            torch.randn(400, 8, generator=generator))
    assert abs(same) < 3 * same_se
    apart, apart_se = quality.kernel_distance(torch.randn(400, 8, generator=generator),
                                              torch.randn(400, 8, generator=generator) + 0.5)
    assert apart > 10 * apart_se and apart > 20 * abs(same)


def test_kernel_distance_is_mmd2_of_the_whole_sets_with_a_leave_one_out_jackknife_error():
    """The estimate is mmd2_unbiased of every pair; the error is the jackknife recomputed by brute force
    (each generated row left out in turn); blocks of a few rows give the same answer."""
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(25, 4, dtype=torch.float64, generator=generator)
    b = torch.randn(18, 4, dtype=torch.float64, generator=generator) + 0.3
    estimate, error = quality.kernel_distance(a, b)
    assert estimate == pytest.approx(quality.mmd2_unbiased(a, b), rel=1e-12)
    left_out = torch.tensor([quality.mmd2_unbiased(torch.cat([a[:i], a[i + 1:]]), b) for i in range(25)], dtype=torch.float64)
    assert error == pytest.approx(((24 / 25) * (left_out - left_out.mean()).pow(2).sum()).sqrt().item(), rel=1e-9)
    tiny = 8 * 25 * 2  # two rows of kernel values per block
    assert quality.kernel_distance(a, b, budget_bytes=tiny) == pytest.approx((estimate, error), rel=1e-12)


def test_kernel_distance_error_matches_the_spread_of_independent_draws():
    """Over 300 independent draws of the generated set (one fixed reference set, two distributions apart),
    the reported error is on average the standard deviation of the estimates (within 25%), and the
    estimates average to the distance of the whole population (within 3 standard errors of that mean)."""
    generator = torch.Generator().manual_seed(2)
    reference = torch.randn(60, 3, dtype=torch.float64, generator=generator)
    draws = [quality.kernel_distance(torch.randn(60, 3, dtype=torch.float64, generator=generator) * 1.3 + 0.4,
                                     reference) for _ in range(300)]
    estimates, errors = torch.tensor([d[0] for d in draws]), torch.tensor([d[1] for d in draws])
    assert 0.75 < errors.mean() / estimates.std() < 1.25
    population, population_error = quality.kernel_distance(
        torch.randn(6000, 3, dtype=torch.float64, generator=generator) * 1.3 + 0.4, reference)
    assert abs(estimates.mean() - population) < 3 * (estimates.std() ** 2 / 300 + population_error ** 2) ** 0.5


def test_knn_radii_and_precision_recall_by_hand():
    """The unit square's corners: the 1st, 2nd and 3rd nearest others lie at 1, 1 and sqrt(2)."""
    square = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    for k, radius in ((1, 1.0), (2, 1.0), (3, math.sqrt(2))):
        assert quality.knn_radii(square, k).tolist() == pytest.approx([radius] * 4)
    with pytest.raises(ValueError, match="1 <= k < the number of points"):
        quality.knn_radii(square, 4)
    # k = 1: balls of radius 1 around the corners. Fakes: the centre (in), 1 from (1, 0) (on the boundary: in),
    # 2 from (1, 0) (out), and below the square, sqrt(0.5^2 + 1.5^2) from the nearest corner (out).
    fake = torch.tensor([[0.5, 0.5], [2.0, 0.0], [3.0, 0.0], [0.5, -1.5]])
    # The fakes' own radii (k = 1): 1.58, 1, 1, 2; the centre lies 0.71 from every corner: recall 1.
    assert quality.precision_recall(square, fake, k=1) == (0.5, 1.0)
    assert quality.precision_recall(square, square + 10, k=3) == (0.0, 0.0)
    assert quality.precision_recall(square, square, k=3) == (1.0, 1.0)


def test_precision_recall_of_a_fake_set_that_covers_half_the_modes():
    """Four modes of real points (small squares 10 apart); the fakes sit 0.1 beside the real points of two
    modes: every fake is real-looking (precision 1), half the real points are covered (recall 0.5)."""
    square = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    modes = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    real = (modes[:, None] + square[None]).reshape(-1, 2)
    fake = real[:8] + torch.tensor([0.1, 0.0])
    assert quality.precision_recall(real, fake, k=3) == (1.0, 0.5)
    assert quality.precision_recall(fake, real, k=3) == (0.5, 1.0)  # the roles swapped


def test_precision_recall_in_blocks_gives_the_same_answer():
    """A budget of a few rows of distances per block: the same radii (to rounding: the matrix products of a
    block round differently) and memberships as one block."""
    generator = torch.Generator().manual_seed(0)
    real, fake = torch.randn(70, 5, generator=generator), torch.randn(50, 5, generator=generator) * 0.7 + 0.8
    tiny = 8 * 70 * 3  # three rows of distances to 70 points
    assert torch.allclose(quality.knn_radii(real, 3, budget_bytes=tiny), quality.knn_radii(real, 3), rtol=1e-12)
    whole = quality.precision_recall(real, fake)
    assert quality.precision_recall(real, fake, budget_bytes=tiny) == whole
    assert 0 < whole[0] < 1 and 0 < whole[1] < 1


def test_score_reports_the_kernel_distance_and_precision_recall_against_the_validation_features():
    """score's new keys are the functions' answers on the judge's features, the precision and recall on as
    many validation features as samples; sets of at most k images have none."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(12, 1, 4, 4, generator=generator) * 2 - 1
    val, _ = quality.judge_outputs(BrightnessJudge(), torch.rand(30, 1, 4, 4, generator=generator) * 1.6 - 0.8, "cpu")
    row = quality.score(BrightnessJudge(), images, val, "cpu", seed=3)
    feats, _ = quality.judge_outputs(BrightnessJudge(), images, "cpu")
    assert (row["kernel_distance"], row["kernel_distance_se"]) == quality.kernel_distance(feats, val)
    cut = val[torch.randperm(30, generator=torch.Generator().manual_seed(3))[:12]]
    assert (row["precision"], row["recall"]) == quality.precision_recall(cut, feats, k=3)
    assert (row["precision"], row["recall"]) != quality.precision_recall(val, feats, k=3)  # the cut matters here
    table = quality.format_table({"generated": row}, 0.5)
    assert "KID x1e3 +- se" in table and f"{1e3 * row['kernel_distance']:.3f} +- {1e3 * row['kernel_distance_se']:.3f}" in table
    assert f"{row['precision']:.3f} {row['recall']:>6.3f}" in table
    few = quality.score(BrightnessJudge(), images[:3], val, "cpu")
    assert few["precision"] is None and few["recall"] is None
    assert " -      - " in quality.format_table({"few": few}, 0.5)
