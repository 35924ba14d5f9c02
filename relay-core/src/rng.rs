//! A small seeded random number generator (SplitMix64) for every random choice
//! relay makes: retry jitter, simulated traffic, fault injection. Its output
//! depends only on the seed, on every platform and version, so a failing
//! simulation reproduces from its seed.

use std::sync::atomic::{AtomicU64, Ordering};

/// SplitMix64's increment.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output of a state.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What every generator here draws from its 64-bit values: a shared
/// [`SeededRng`] (as `&SeededRng`), or a [`Batch`] of its sequence.
pub trait Draw {
    /// The next 64 random bits.
    fn next_u64(&mut self) -> u64;

    /// A uniform float in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal variate (Marsaglia's polar method).
    fn next_normal(&mut self) -> f64 {
        loop {
            let u = 2.0 * self.next_f64() - 1.0;
            let v = 2.0 * self.next_f64() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                return u * (-2.0 * s.ln() / s).sqrt();
            }
        }
    }
}

/// A seeded, thread-safe SplitMix64 generator.
#[derive(Debug)]
pub struct SeededRng {
    state: AtomicU64,
}

impl SeededRng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        SeededRng {
            state: AtomicU64::new(seed),
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        mix(self.state.fetch_add(GAMMA, Ordering::Relaxed).wrapping_add(GAMMA))
    }

    /// A uniform float in `[0, 1)`.
    pub fn next_f64(&self) -> f64 {
        Draw::next_f64(&mut &*self)
    }

    /// A standard normal variate (Marsaglia's polar method).
    pub fn next_normal(&self) -> f64 {
        Draw::next_normal(&mut &*self)
    }

    /// A binomial variate: successes in `n` trials of probability `p`.
    /// Exact by inversion of the distribution function (one uniform draw)
    /// while the mean is below 30; normal approximation above, where the
    /// variance is at least 15. [`Binomial`] draws many with one set-up.
    pub fn binomial(&self, n: u64, p: f64) -> u64 {
        Binomial::new(n, p).sample(&mut &*self)
    }

    /// Run `f` on a [`Batch`] of this generator's sequence: the values `f`
    /// draws are the ones it would have drawn from the generator itself,
    /// without an atomic step for each (a simulated target draws thousands
    /// for a measurement). `f` must do nothing but compute its result: if
    /// another thread draws meanwhile, `f` runs again on the values that
    /// follow that thread's.
    pub fn batch<R>(&self, mut f: impl FnMut(&mut Batch) -> R) -> R {
        let mut start = self.state.load(Ordering::Relaxed);
        loop {
            let mut batch = Batch { state: start };
            let result = f(&mut batch);
            match self
                .state
                .compare_exchange(start, batch.state, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return result,
                Err(now) => start = now,
            }
        }
    }
}

impl Draw for &SeededRng {
    fn next_u64(&mut self) -> u64 {
        SeededRng::next_u64(self)
    }
}

/// A run of a [`SeededRng`]'s sequence, drawn inside [`SeededRng::batch`].
#[derive(Debug)]
pub struct Batch {
    state: u64,
}

impl Draw for Batch {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix(self.state)
    }
}

/// A binomial distribution, set up once for many draws of the same `n` and
/// `p` (a simulated target draws one per second of every window; the set-up
/// is a `powf`, the draw mostly a few multiplications).
#[derive(Clone, Copy, Debug)]
pub struct Binomial {
    n: u64,
    /// Draws count failures of the complement (`p` above one half).
    flip: bool,
    method: Method,
}

#[derive(Clone, Copy, Debug)]
enum Method {
    /// Always this many successes (`p` of 0 or 1, or no trials).
    Fixed(u64),
    /// Normal approximation: mean and standard deviation.
    Normal { mean: f64, sd: f64 },
    /// Inversion (BINV): P(X = 0) and the ratio p / q; `gaps` holds ln q
    /// where the mean is at most [`GAPS_MEAN`], for [`Binomial::add_each`].
    Inversion { p0: f64, ratio: f64, gaps: Option<f64> },
}

/// The largest mean for which [`Binomial::add_each`] draws the gaps
/// between events rather than each count: a gap costs a uniform and a
/// logarithm, a count a uniform, so the gaps are cheaper while there are
/// fewer than about one event in four counts.
const GAPS_MEAN: f64 = 0.25;

impl Binomial {
    /// Successes in `n` trials of probability `p` (clamped to `[0, 1]`; not
    /// a number counts as 0).
    pub fn new(n: u64, p: f64) -> Self {
        let p = if p.is_finite() { p.clamp(0.0, 1.0) } else { 0.0 };
        let fixed = |k| Binomial {
            n,
            flip: false,
            method: Method::Fixed(k),
        };
        if n == 0 || p == 0.0 {
            return fixed(0);
        }
        if p == 1.0 {
            return fixed(n);
        }
        let (flip, p) = if p > 0.5 { (true, 1.0 - p) } else { (false, p) };
        let (nf, q) = (n as f64, 1.0 - p);
        let method = if nf * p >= 30.0 {
            Method::Normal {
                mean: nf * p,
                sd: (nf * p * q).sqrt(),
            }
        } else {
            Method::Inversion {
                p0: q.powf(nf),
                ratio: p / q,
                gaps: (nf * p <= GAPS_MEAN).then(|| (-p).ln_1p()),
            }
        };
        Binomial { n, flip, method }
    }

    /// One draw from `rng`.
    pub fn sample(&self, rng: &mut impl Draw) -> u64 {
        let n = self.n;
        let x = match self.method {
            Method::Fixed(k) => return k,
            Method::Normal { mean, sd } => (mean + sd * rng.next_normal()).round().clamp(0.0, n as f64) as u64,
            Method::Inversion { p0, ratio, .. } => {
                // Walk the probabilities P(X = x) up from x = 0, each from
                // the last by the ratio (n - x + 1) p / (x q).
                let (mut prob, mut u, mut x) = (p0, rng.next_f64(), 0u64);
                while u > prob && x < n {
                    u -= prob;
                    x += 1;
                    prob *= ratio * (n - x + 1) as f64 / x as f64;
                }
                x
            }
        };
        if self.flip {
            n - x
        } else {
            x
        }
    }

    /// Add one draw to each of `counts`, all independent and each as
    /// [`sample`](Self::sample) draws it. Where events are rare (a mean of
    /// at most a quarter) the counts' trials are walked as one run, drawing
    /// the gap between one event and the next: a uniform and a logarithm
    /// per event instead of a uniform per count (a simulated minute at
    /// 0.1% errors is a few events in sixty counts).
    pub fn add_each(&self, rng: &mut impl Draw, counts: &mut [u64]) {
        let n = self.n;
        let (Method::Inversion { gaps: Some(ln_q), .. }, Some(trials)) =
            (self.method, n.checked_mul(counts.len() as u64))
        else {
            for c in counts.iter_mut() {
                *c += self.sample(rng);
            }
            return;
        };
        if self.flip {
            // Events counted are the complement's: each count is n less them.
            counts.iter_mut().for_each(|c| *c += n);
        }
        // Trials before the next event: geometric, P(gap >= k) = q^k, by
        // inversion of a uniform in (0, 1].
        let mut at = 0u64;
        loop {
            let gap = (1.0 - rng.next_f64()).ln() / ln_q;
            // Past the last trial (or no number: no event ever).
            if gap.is_nan() || gap >= (trials - at) as f64 {
                return;
            }
            at += gap as u64;
            let count = &mut counts[(at / n) as usize];
            if self.flip {
                *count -= 1;
            } else {
                *count += 1;
            }
            at += 1;
            if at == trials {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_draws_the_generators_own_sequence() {
        let (shared, alone) = (SeededRng::new(3), SeededRng::new(3));
        let drawn: Vec<u64> = shared.batch(|b| (0..5).map(|_| b.next_u64()).collect());
        let expect: Vec<u64> = (0..5).map(|_| alone.next_u64()).collect();
        assert_eq!(drawn, expect);
        assert_eq!(
            shared.next_u64(),
            alone.next_u64(),
            "the generator continues after the batch"
        );
        // A draw from elsewhere during a batch: the batch runs again on the
        // values that follow, so no value is handed out twice.
        let mut runs = 0;
        let got = shared.batch(|b| {
            runs += 1;
            if runs == 1 {
                shared.next_u64();
            }
            b.next_u64()
        });
        alone.next_u64();
        assert_eq!((runs, got), (2, alone.next_u64()));
        assert_eq!(shared.next_u64(), alone.next_u64());
    }

    #[test]
    fn add_each_adds_independent_draws_of_the_distribution() {
        let rng = SeededRng::new(11);
        // Rare events (drawn by gaps), rare events of the complement
        // (gaps, flipped), neither (one draw a count, by inversion and by
        // the normal approximation), one trial a count.
        for (n, p) in [
            (10u64, 0.001),
            (90, 0.002),
            (10, 0.9995),
            (20, 0.1),
            (100, 0.3),
            (1, 0.2),
            (3, 0.05),
        ] {
            let b = Binomial::new(n, p);
            let (rounds, len) = (2_000, 60);
            let mut all = Vec::with_capacity(rounds * len);
            let mut halves = [0u64; 2];
            for _ in 0..rounds {
                // Counts that already hold something: a draw is added to it.
                let mut counts = vec![7u64; len];
                rng.batch(|r| b.add_each(r, &mut counts));
                for (i, c) in counts.iter().enumerate() {
                    let drawn = c - 7;
                    assert!(drawn <= n, "n={n} p={p}: {drawn} of {n}");
                    halves[i * 2 / len] += drawn;
                    all.push(drawn as f64);
                }
            }
            let size = all.len() as f64;
            let mean = all.iter().sum::<f64>() / size;
            let var = all.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / size;
            let (em, ev) = (n as f64 * p, n as f64 * p * (1.0 - p));
            // Five standard errors: a wrong rate, or events landing in the
            // wrong counts, is far outside.
            assert!(
                (mean - em).abs() < 5.0 * (ev / size).sqrt(),
                "n={n} p={p}: mean {mean} vs {em}"
            );
            assert!((var - ev).abs() < 0.1 * ev, "n={n} p={p}: variance {var} vs {ev}");
            let half_sd = (ev * size / 2.0).sqrt();
            assert!(
                (halves[0] as f64 - halves[1] as f64).abs() < 5.0 * half_sd * 2f64.sqrt(),
                "n={n} p={p}: first and second half of the counts {halves:?}"
            );
        }
        // More trials than a u64 holds over all the counts: one draw each.
        let huge = Binomial::new(u64::MAX / 2, 1e-20);
        let mut counts = [0u64; 3];
        huge.add_each(&mut &rng, &mut counts);
        assert!(counts.iter().all(|c| *c < 10), "{counts:?}");
    }

    #[test]
    fn same_seed_same_sequence() {
        let a = SeededRng::new(7);
        let b = SeededRng::new(7);
        let c = SeededRng::new(8);
        let xa: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let xb: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        let xc: Vec<u64> = (0..5).map(|_| c.next_u64()).collect();
        assert_eq!(xa, xb);
        assert_ne!(xa, xc);
        let mean: f64 = (0..10_000).map(|_| a.next_f64()).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        let normals: Vec<f64> = (0..20_000).map(|_| a.next_normal()).collect();
        let m = normals.iter().sum::<f64>() / normals.len() as f64;
        let var = normals.iter().map(|x| (x - m).powi(2)).sum::<f64>() / normals.len() as f64;
        assert!(m.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {m}, variance {var}");
        for (n, p) in [(10u64, 0.3), (1000, 0.01), (5000, 0.2), (200, 0.9)] {
            let draws: Vec<f64> = (0..4000).map(|_| a.binomial(n, p) as f64).collect();
            let mean = draws.iter().sum::<f64>() / draws.len() as f64;
            let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / draws.len() as f64;
            let (em, ev) = (n as f64 * p, n as f64 * p * (1.0 - p));
            assert!(
                (mean - em).abs() < 0.05 * em.max(1.0),
                "n={n} p={p}: mean {mean} vs {em}"
            );
            assert!(
                (var - ev).abs() < 0.15 * ev.max(1.0),
                "n={n} p={p}: variance {var} vs {ev}"
            );
        }
    }
}
