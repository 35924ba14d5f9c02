//! The statistics behind the judges: the normal distribution, ranks, the
//! Mann-Whitney U test (exact and normal approximation), the Hodges-Lehmann
//! shift, Fisher's exact test, the two-proportion z-test, and alpha spending
//! across repeated looks. Pure functions, checked against textbook values.

/// The standard normal CDF Φ(x), from a Chebyshev fit of erfc with fractional
/// error below 1.2e-7 (Numerical Recipes' `erfcc`).
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// The upper tail 1 - Φ(x), accurate in the far tail.
pub fn normal_sf(x: f64) -> f64 {
    0.5 * erfc(x / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// The standard normal quantile Φ⁻¹(p) for 0 < p < 1 (Acklam's rational
/// approximation, relative error below 1.2e-9).
#[allow(clippy::excessive_precision)] // the published coefficients, as published
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383577518672690e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let low = 0.02425;
    if p < low {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - low {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -normal_quantile(1.0 - p)
    }
}

/// Median of finite values (the caller guarantees at least one).
pub fn median(values: &[f64]) -> f64 {
    quantile(values, 0.5)
}

/// Quantile by linear interpolation between order statistics.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_unstable_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// The result of a one-sided Mann-Whitney U test that `x` tends to be
/// larger than `y`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MannWhitney {
    /// U of `x`: pairs with x > y, plus half the ties.
    pub u: f64,
    /// The z-score of the normal approximation (tie- and continuity-corrected);
    /// also reported when the exact distribution gave the p-value.
    pub z: f64,
    /// P(U ≥ u) under the null hypothesis.
    pub p_value: f64,
    /// Whether the p-value is exact.
    pub exact: bool,
}

/// Largest arm for the exact distribution (without ties).
pub const EXACT_MAX_N: usize = 25;

/// Mann-Whitney U test of H1: `x` is stochastically larger than `y`.
/// Exact when both arms have at most [`EXACT_MAX_N`] values and there are no
/// ties; otherwise the normal approximation with tie correction and
/// continuity correction. Both arms must be non-empty and finite.
pub fn mann_whitney_greater(x: &[f64], y: &[f64]) -> MannWhitney {
    let (n1, n2) = (x.len(), y.len());
    let mut pooled: Vec<(f64, bool)> = x
        .iter()
        .map(|v| (*v, true))
        .chain(y.iter().map(|v| (*v, false)))
        .collect();
    pooled.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    // Midranks, and the tie term Σ(t³ - t).
    let n = pooled.len();
    let mut rank_sum_x = 0.0;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && pooled[j].0 == pooled[i].0 {
            j += 1;
        }
        let t = (j - i) as f64;
        let midrank = (i + j + 1) as f64 / 2.0; // ranks i+1 ..= j
        rank_sum_x += midrank * pooled[i..j].iter().filter(|p| p.1).count() as f64;
        tie_term += t * t * t - t;
        i = j;
    }
    let (f1, f2, nn) = (n1 as f64, n2 as f64, n as f64);
    let u = rank_sum_x - f1 * (f1 + 1.0) / 2.0;
    let mean = f1 * f2 / 2.0;
    let var = f1 * f2 / 12.0 * ((nn + 1.0) - tie_term / (nn * (nn - 1.0)).max(1.0));
    let z = if var > 0.0 { (u - mean - 0.5) / var.sqrt() } else { 0.0 };
    if tie_term == 0.0 && n1 <= EXACT_MAX_N && n2 <= EXACT_MAX_N {
        return MannWhitney {
            u,
            z,
            p_value: exact_upper_tail(n1, n2, u.round() as usize),
            exact: true,
        };
    }
    let p_value = if var > 0.0 { normal_sf(z) } else { 1.0 };
    MannWhitney {
        u,
        z,
        p_value,
        exact: false,
    }
}

/// P(U ≥ u) for sample sizes `m`, `n` without ties: the coefficients of the
/// Gaussian binomial [m+n choose m]_q count the arrangements with each U.
pub fn exact_upper_tail(m: usize, n: usize, u: usize) -> f64 {
    let max = m * n;
    if u == 0 {
        return 1.0;
    }
    if u > max {
        return 0.0;
    }
    // Π_{i=1..m} (1 - q^{n+i}) / (1 - q^i), exactly in integers.
    let mut poly = vec![0i128; max + 1];
    poly[0] = 1;
    for i in 1..=m {
        let a = n + i;
        for k in (a..=max).rev() {
            poly[k] -= poly[k - a];
        }
        for k in i..=max {
            poly[k] += poly[k - i];
        }
    }
    let total: i128 = poly.iter().sum();
    let tail: i128 = poly[u..].iter().sum();
    tail as f64 / total as f64
}

/// The Hodges-Lehmann estimate of the shift of `x` over `y`: the median of
/// all pairwise differences x_i - y_j. Above `max_pairs` pairs it falls back
/// to the difference of the medians, which estimates the same shift for a
/// location model at a fraction of the cost.
pub fn hodges_lehmann(x: &[f64], y: &[f64], max_pairs: usize) -> f64 {
    if x.len().saturating_mul(y.len()) > max_pairs {
        return median(x) - median(y);
    }
    let mut d: Vec<f64> = Vec::with_capacity(x.len() * y.len());
    for a in x {
        for b in y {
            d.push(a - b);
        }
    }
    let n = d.len();
    let mid = n / 2;
    let (_, upper, _) = d.select_nth_unstable_by(mid, f64::total_cmp);
    let upper = *upper;
    if n % 2 == 1 {
        upper
    } else {
        let lower = d[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lower + upper) / 2.0
    }
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; about 15 significant digits).
#[allow(clippy::excessive_precision)] // the published coefficients, as published
pub fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

fn ln_choose(n: u64, k: u64) -> f64 {
    ln_gamma(n as f64 + 1.0) - ln_gamma(k as f64 + 1.0) - ln_gamma((n - k) as f64 + 1.0)
}

/// Fisher's exact test, one-sided: the probability of at least `a` failures
/// in the first arm given the margins, for the table
/// `[[a, n1 - a], [c, n2 - c]]` (failures, successes per arm). NaN when a
/// count exceeds its arm.
pub fn fisher_greater(a: u64, n1: u64, c: u64, n2: u64) -> f64 {
    if a > n1 || c > n2 {
        return f64::NAN;
    }
    let k = a + c; // failures in all
    let n = n1 + n2;
    let hi = k.min(n1);
    let lo = k.saturating_sub(n2);
    if a <= lo {
        return 1.0;
    }
    // P(X = x) for the hypergeometric; sum from a up with the ratio of
    // consecutive terms.
    let mut term = (ln_choose(k, a) + ln_choose(n - k, n1 - a) - ln_choose(n, n1)).exp();
    let mut p = 0.0;
    let mut x = a;
    loop {
        p += term;
        if x >= hi {
            break;
        }
        let num = (k - x) as f64 * (n1 - x) as f64;
        let den = (x + 1) as f64 * (n2 + x + 1 - k) as f64; // x > k - n2, so positive
        term *= num / den;
        x += 1;
    }
    p.min(1.0)
}

/// The pooled two-proportion z statistic for H1: rate 1 > rate 2, with a
/// continuity correction of ½(1/n1 + 1/n2) (the normal approximation of a
/// discrete count is otherwise slightly liberal), and its one-sided p-value.
pub fn two_proportion_greater(f1: u64, n1: u64, f2: u64, n2: u64) -> (f64, f64) {
    let (p1, p2) = (f1 as f64 / n1 as f64, f2 as f64 / n2 as f64);
    let pooled = (f1 + f2) as f64 / (n1 + n2) as f64;
    let inv = 1.0 / n1 as f64 + 1.0 / n2 as f64;
    let se = (pooled * (1.0 - pooled) * inv).sqrt();
    if se == 0.0 {
        return (0.0, 1.0);
    }
    let diff = p1 - p2;
    let corrected = if diff > 0.0 { (diff - 0.5 * inv).max(0.0) } else { diff };
    let z = corrected / se;
    (z, normal_sf(z))
}

/// Whether Fisher's exact test should replace the z-test: some expected cell
/// count of the 2×2 table is below 5.
pub fn small_counts(f1: u64, n1: u64, f2: u64, n2: u64) -> bool {
    let n = (n1 + n2) as f64;
    let failures = (f1 + f2) as f64;
    let successes = n - failures;
    [n1 as f64, n2 as f64]
        .iter()
        .any(|ni| ni * failures / n < 5.0 || ni * successes / n < 5.0)
}

/// The significance level of look `look` of `looks` under Lan-DeMets
/// O'Brien-Fleming-type alpha spending for an overall one-sided level
/// `alpha`: the alpha spent between the previous look and this one,
/// α(t) = 2 - 2Φ(z_{1-α/2} / √t) at information fraction t = look / looks.
///
/// Testing each look at its spent increment bounds the false-alarm rate over
/// all looks by `alpha` (a union bound, whatever the correlation between
/// looks), while keeping most of the budget for the last look, where the
/// data is largest. Looks past the plan reuse the last increment.
pub fn alpha_spent_at(alpha: f64, look: u32, looks: u32) -> f64 {
    let looks = looks.max(1);
    let look = look.clamp(1, looks);
    let z = normal_quantile(1.0 - alpha / 2.0);
    let spent = |k: u32| -> f64 {
        if k == 0 {
            0.0
        } else {
            let t = f64::from(k) / f64::from(looks);
            (2.0 - 2.0 * normal_cdf(z / t.sqrt())).min(alpha)
        }
    };
    if look == looks {
        // Exactly the rest of the budget at the end.
        return alpha - spent(look - 1);
    }
    spent(look) - spent(look - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn normal_distribution_matches_tables() {
        assert!(close(normal_cdf(0.0), 0.5, 1e-7));
        assert!(close(normal_cdf(1.959_964), 0.975, 1e-6));
        assert!(close(normal_cdf(-2.326_348), 0.01, 1e-6));
        assert!(close(normal_sf(3.090_232), 0.001, 1e-7));
        assert!(close(normal_quantile(0.975), 1.959_964, 1e-6));
        assert!(close(normal_quantile(0.995), 2.575_829, 1e-6));
        assert!(close(normal_quantile(0.001), -3.090_232, 1e-6));
    }

    #[test]
    fn exact_u_distribution_small_cases() {
        // n1 = n2 = 3: 20 arrangements; U = 9 (all x above all y) in one of them.
        assert!(close(exact_upper_tail(3, 3, 9), 1.0 / 20.0, 1e-12));
        assert!(close(exact_upper_tail(3, 3, 8), 2.0 / 20.0, 1e-12));
        // U = 7 or more: counts of U = 7, 8, 9 are 2, 1, 1.
        assert!(close(exact_upper_tail(3, 3, 7), 4.0 / 20.0, 1e-12));
        assert_eq!(exact_upper_tail(4, 5, 0), 1.0);
        // Symmetry: P(U >= u) = P(U <= mn - u).
        let m = 7;
        let n = 9;
        let p_hi = exact_upper_tail(m, n, 50);
        let p_lo = 1.0 - exact_upper_tail(m, n, m * n - 50 + 1);
        assert!(close(p_hi, p_lo, 1e-12));
        // n1 = n2 = 5, complete separation: 1 / C(10, 5) = 1/252.
        assert!(close(exact_upper_tail(5, 5, 25), 1.0 / 252.0, 1e-12));
    }

    #[test]
    fn mann_whitney_textbook_example() {
        // x = {7, 8, 9, 10}, y = {1, 2, 3, 4, 5, 6, 11}: x beats y in 4*6 = 24
        // pairs and loses the 4 pairs against 11, so U = 24. By hand: U >= 24
        // means a "deficit" 28 - U <= 4, i.e. a partition of 0..=4 into at most
        // 4 parts: 1 + 1 + 2 + 3 + 5 = 12 of the C(11, 4) = 330 arrangements.
        let r = mann_whitney_greater(&[7.0, 8.0, 9.0, 10.0], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 11.0]);
        assert_eq!(r.u, 24.0);
        assert!(r.exact);
        assert!(close(r.p_value, exact_upper_tail(4, 7, 24), 1e-12));
        assert!(close(r.p_value, 12.0 / 330.0, 1e-12), "{}", r.p_value);
    }

    #[test]
    fn mann_whitney_normal_approximation_with_ties() {
        // Ties force the approximation. x = {2,2,3,3,4}, y = {1,1,2,2,3}: pooled
        // ranks (midranks): 1,1 -> 1.5; 2 x4 -> 4.5; 3 x3 -> 8; 4 -> 10.
        // R_x = 4.5+4.5+8+8+10 = 35, U = 35 - 15 = 20. Tie term: (8-2)+(64-4)+(27-3) = 90.
        // var = 25/12 * (11 - 90/90) = 20.8333; z = (20 - 12.5 - 0.5)/4.5644 = 1.5336.
        let r = mann_whitney_greater(&[2.0, 2.0, 3.0, 3.0, 4.0], &[1.0, 1.0, 2.0, 2.0, 3.0]);
        assert_eq!(r.u, 20.0);
        assert!(!r.exact);
        assert!(close(r.z, 7.0 / (25.0f64 / 12.0 * 10.0).sqrt(), 1e-9), "{}", r.z);
        assert!(close(r.p_value, normal_sf(1.533_6), 1e-4));
        // All values tied: no evidence at all.
        let r = mann_whitney_greater(&[1.0; 30], &[1.0; 30]);
        assert_eq!(r.p_value, 1.0);
    }

    #[test]
    fn hodges_lehmann_shift() {
        // Differences of {3, 5} - {1, 2}: {2, 1, 4, 3} -> median 2.5.
        assert_eq!(hodges_lehmann(&[3.0, 5.0], &[1.0, 2.0], 100), 2.5);
        assert_eq!(hodges_lehmann(&[3.0, 5.0, 10.0], &[1.0], 100), 4.0);
        // Above the pair budget: difference of medians.
        assert_eq!(hodges_lehmann(&[3.0, 5.0, 10.0], &[1.0, 2.0], 2), 5.0 - 1.5);
    }

    #[test]
    fn fisher_exact_textbook_values() {
        // Fisher's lady tasting tea: [[3, 1], [1, 3]], one-sided p = 17/70.
        assert!(close(fisher_greater(3, 4, 1, 4), 17.0 / 70.0, 1e-12));
        // [[4, 0], [0, 4]]: p = 1/70.
        assert!(close(fisher_greater(4, 4, 0, 4), 1.0 / 70.0, 1e-12));
        // No excess: p = 1.
        assert!(close(fisher_greater(0, 10, 3, 10), 1.0, 1e-12));
        // [[7, 3], [2, 8]] (n = 20): P(X >= 7) with K = 9 failures, n1 = 10:
        // (C(9,7)C(11,3) + C(9,8)C(11,2) + C(9,9)C(11,1)) / C(20,10)
        // = (36*165 + 9*55 + 1*11) / 184756 = 6446 / 184756.
        assert!(close(fisher_greater(7, 10, 2, 10), 6446.0 / 184_756.0, 1e-12));
        assert!(close(ln_gamma(10.0), (362_880.0f64).ln(), 1e-12));
        // More failures than one arm holds (K + n1 > N): [[9, 1], [8, 2]],
        // K = 17: (C(17,9)C(3,1) + C(17,10)C(3,0)) / C(20,10) = 92378 / 184756.
        assert!(close(fisher_greater(9, 10, 8, 10), 92_378.0 / 184_756.0, 1e-12));
        assert!(fisher_greater(11, 10, 0, 10).is_nan());
    }

    #[test]
    fn two_proportion_z_by_hand() {
        // 20/100 vs 10/100: pooled 0.15, se = sqrt(0.15*0.85*0.02) = 0.0504975;
        // corrected difference 0.1 - 0.5*(0.01 + 0.01) = 0.09;
        // z = 0.09 / 0.0504975 = 1.782266, p = 0.037353.
        let (z, p) = two_proportion_greater(20, 100, 10, 100);
        assert!(close(z, 1.782_266, 1e-5), "{z}");
        assert!(close(p, 0.037_353, 1e-5), "{p}");
        let (z, p) = two_proportion_greater(10, 100, 20, 100);
        assert!(z < 0.0 && p > 0.5);
        assert!(small_counts(1, 100, 2, 100));
        assert!(!small_counts(20, 100, 10, 100));
    }

    #[test]
    fn alpha_spending_sums_to_alpha_and_saves_the_budget_for_the_end() {
        for looks in [1, 2, 5, 12] {
            let total: f64 = (1..=looks).map(|k| alpha_spent_at(0.01, k, looks)).sum();
            assert!(close(total, 0.01, 1e-12), "{looks}: {total}");
            for k in 2..=looks {
                assert!(alpha_spent_at(0.01, k, looks) >= alpha_spent_at(0.01, k - 1, looks));
            }
        }
        assert!(close(alpha_spent_at(0.05, 1, 1), 0.05, 1e-15));
        // O'Brien-Fleming: the first of five looks spends almost nothing.
        assert!(alpha_spent_at(0.01, 1, 5) < 1e-5);
    }
}
