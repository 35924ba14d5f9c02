//! Scale: many simulated canaries in one process, memory per rollout,
//! scheduling lag, and memory over a long run (issue 9).
//!
//! ```text
//! cargo bench --bench scale -- virtual 10000     # N concurrent canaries, virtual time
//! cargo bench --bench scale -- realtime 10000    # N concurrent canaries, multi-thread runtime, real time
//! cargo bench --bench scale -- sequential 1000000  # M rollouts one after another, RSS sampled
//! cargo bench --bench scale -- latency 20        # R rollouts, 1 ms per provider call, real time
//! cargo bench --bench scale -- canaries 60 [K]   # N of the rollouts bench's 60 s canaries in a row (K at once)
//! cargo bench --bench scale -- wakes 60000 200000 # N sleeps of MS on the paused clock, nothing else
//! cargo bench --bench scale -- cold 8            # fixed work after a 1 ms thread sleep, and warm
//! cargo bench --bench scale -- --test            # all seven, tiny (CI)
//! ```
//!
//! Every canary is ten steps (five weights, each followed by an analysis);
//! one in ten candidates fails 20% of requests and must be rolled back, the
//! others promoted: a wrong outcome aborts the run. The concurrent runs keep
//! state in memory and append audit to a file (`RELAY_SCALE_STORES=memory`
//! keeps audit in memory too, where every entry stays). RSS comes from
//! `/proc/self/status`, sampled every 5 ms by a thread of its own.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::providers::sim::{metrics, MemoryArtifactStore, RevisionBehavior, SimProbe, SimTarget};
use relay::providers::Wrapped;
use relay::strategies::{AllAtOnceStrategy, CanaryStrategy, ThresholdJudge};
use relay::{AnalysisSpec, Check, EngineConfig, EventKind, Outcome, Relay, Release, RolloutSpec};

/// Resident set size now, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Samples RSS every 5 ms until dropped; `peak()` is the highest seen.
struct Sampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start() -> Self {
        let (peak, stop) = (Arc::new(AtomicU64::new(rss_kib())), Arc::new(AtomicBool::new(false)));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Sampler {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn peak(&self) -> u64 {
        self.peak.fetch_max(rss_kib(), Ordering::Relaxed).max(rss_kib())
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn canary(interval: Duration, count: u32) -> CanaryStrategy {
    let check = Check::new(
        "errors",
        metrics::ERROR_RATE,
        ThresholdJudge::below(0.05).min_samples(1),
    );
    let analysis = AnalysisSpec::new(vec![check]).every(interval, count);
    let mut c = CanaryStrategy::new();
    for w in [10, 25, 50, 75, 100] {
        c = c.set_weight(w).analyze(analysis.clone());
    }
    c
}

/// Where an engine keeps state and audit.
#[derive(Clone, Copy)]
enum Stores<'a> {
    /// Both in memory (they keep every record and entry: they grow with
    /// every rollout by design).
    Memory,
    /// State in memory, audit appended to a file in the directory (not
    /// synced per entry), as a long-running service would keep it.
    AuditFile(&'a std::path::Path),
    /// As [`lean_stores`] sets them.
    Lean,
}

/// State in memory keeping the latest 16 finished records per target (the
/// default keeps every one, by design), audit appended unsynced to
/// `RELAY_SCALE_AUDIT` (default `/dev/null`: a million rollouts write about
/// 12 GB of audit), as a service running rollouts for months would keep
/// them, so what could grow in memory is the engine's own.
fn lean_stores(b: relay::RelayBuilder) -> relay::RelayBuilder {
    let audit = std::env::var("RELAY_SCALE_AUDIT").unwrap_or_else(|_| "/dev/null".into());
    b.state(Arc::new(relay::MemoryStateStore::new().keep_finished(16)))
        .audit(Arc::new(
            relay::JsonlAuditSink::open(audit).unwrap().sync_each_append(false),
        ))
}

/// The value at fraction `p` of `sorted` (the default when it is empty).
fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or_default()
}

/// An engine over `n` simulated targets `t0..`, each with v1 stable, its own
/// probe and `rps` synthetic requests a second; every tenth target's v2
/// fails 20% of requests.
async fn fleet(n: usize, readiness: Duration, rps: f64, config: EngineConfig, stores: Stores<'_>) -> Relay {
    let artifacts = Arc::new(MemoryArtifactStore::new());
    artifacts.push("app", "v1", b"1", Default::default());
    let v2 = artifacts.push("app", "v2", b"2", Default::default());
    let behavior = RevisionBehavior {
        readiness_delay: readiness,
        ..RevisionBehavior::healthy()
    };
    let mut b = Relay::builder().artifacts(artifacts).config(config);
    match stores {
        Stores::Memory => {}
        Stores::AuditFile(dir) => {
            b = b.audit(Arc::new(
                relay::JsonlAuditSink::open(dir.join("audit.jsonl"))
                    .unwrap()
                    .sync_each_append(false),
            ));
        }
        Stores::Lean => b = lean_stores(b),
    }
    for i in 0..n {
        let t = Arc::new(
            SimTarget::new(format!("t{i}"))
                .seed(i as u64)
                .requests_per_second(rps)
                .default_behavior(behavior.clone()),
        );
        if i % 10 == 9 {
            t.behavior(&v2.digest, RevisionBehavior::failing(0.2));
        }
        b = b
            .target(t.clone())
            .probe_for(format!("t{i}"), Arc::new(SimProbe::new(t)));
    }
    let relay = b.build().unwrap();
    // v1 on every target, in batches: in real time, one after another would
    // take n readiness delays, and all at once would leave a heap high-water
    // mark that the measured run then reuses, hiding its own memory.
    for batch in (0..n).step_by(100) {
        let mut handles = Vec::with_capacity(100);
        for i in batch..(batch + 100).min(n) {
            let spec = RolloutSpec::new(
                format!("t{i}"),
                Release::new("app:v1".parse().unwrap()).replicas(4),
                AllAtOnceStrategy,
            );
            handles.push(relay.start(spec).await.unwrap());
        }
        for h in handles {
            assert!(h.wait().await.unwrap().is_success());
        }
    }
    relay
}

fn check(i: usize, outcome: &Outcome) {
    let want_rollback = i % 10 == 9;
    match outcome {
        Outcome::Promoted { .. } if !want_rollback => {}
        Outcome::RolledBack { .. } if want_rollback => {}
        other => panic!("target t{i}: wrong outcome {other}"),
    }
}

/// `n` canaries at once; returns (per-rollout KiB, lag p50/p99/max ms).
async fn concurrent(n: usize, interval: Duration, count: u32, readiness: Duration) -> (f64, [u64; 3]) {
    let defaults = EngineConfig::default();
    let config = EngineConfig {
        poll_interval: Duration::from_millis(100),
        event_buffer: std::env::var("RELAY_SCALE_EVENT_BUFFER")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(defaults.event_buffer),
        ..defaults
    };
    let dir = tempfile::tempdir().unwrap();
    let stores = if std::env::var("RELAY_SCALE_STORES").as_deref() == Ok("memory") {
        Stores::Memory
    } else {
        Stores::AuditFile(dir.path())
    };
    // 6,000 requests per analysis interval at full weight (100 a second for
    // a minute): short real-time intervals need as many for a steady
    // verdict.
    let rps = (6000.0 / interval.as_secs_f64()).max(100.0);
    let relay = fleet(n, readiness, rps, config, stores).await;
    let baseline = rss_kib();
    let sampler = Sampler::start();
    let strategy = canary(interval, count);
    let started = Instant::now();
    let mut waits = Vec::with_capacity(n);
    for i in 0..n {
        let spec = RolloutSpec::new(
            format!("t{i}"),
            Release::new("app:v2".parse().unwrap()).replicas(4),
            strategy.clone(),
        );
        let handle = relay.start(spec).await.unwrap();
        let mut events = handle.events();
        let lag = tokio::spawn(async move {
            // Lag of each measurement: when its verdict came, against one
            // interval after the previous measurement (or the step start).
            let (mut last, mut lags) = (None, Vec::new());
            while let Some(e) = events.next().await {
                match e.kind {
                    EventKind::StepStarted { .. } => last = Some(e.at_ms),
                    EventKind::Verdict { .. } => {
                        if let Some(l) = last {
                            lags.push((e.at_ms - l - interval.as_millis() as i64).max(0) as u64);
                        }
                        last = Some(e.at_ms);
                    }
                    EventKind::Finished { .. } => break,
                    _ => {}
                }
            }
            lags
        });
        waits.push((i, handle, lag));
    }
    let mut lags = Vec::new();
    for (i, handle, lag) in waits {
        check(i, &handle.wait().await.unwrap());
        lags.extend(lag.await.unwrap());
    }
    let peak = sampler.peak();
    drop(sampler);
    lags.sort_unstable();
    let pct = |p: f64| percentile(&lags, p);
    let per = (peak.saturating_sub(baseline)) as f64 / n as f64;
    eprintln!(
        "{n} concurrent canaries: {:.1} s wall, RSS {baseline} KiB before, peak {peak} KiB: {per:.1} KiB per rollout; {} measurements, lag p50 {} ms, p99 {} ms, max {} ms",
        started.elapsed().as_secs_f64(),
        lags.len(),
        pct(0.5),
        pct(0.99),
        lags.last().copied().unwrap_or(0)
    );
    (per, [pct(0.5), pct(0.99), lags.last().copied().unwrap_or(0)])
}

/// `m` canaries one after another on one target, RSS every `every`, on
/// [`lean_stores`].
async fn sequential(m: usize, every: usize) -> Vec<u64> {
    let relay = fleet(1, Duration::ZERO, 100.0, EngineConfig::default(), Stores::Lean).await;
    let strategy = canary(Duration::from_secs(60), 2);
    let mut samples = Vec::new();
    let started = Instant::now();
    for k in 0..m {
        // Alternate v2 and v1 so every rollout changes something.
        let tag = if k % 2 == 0 { "app:v2" } else { "app:v1" };
        let spec = RolloutSpec::new("t0", Release::new(tag.parse().unwrap()).replicas(4), strategy.clone());
        let outcome = relay.start(spec).await.unwrap().wait().await.unwrap();
        assert!(outcome.is_success(), "rollout {k}: {outcome}");
        if (k + 1) % every == 0 {
            samples.push(rss_kib());
            eprintln!(
                "{:>9} rollouts: RSS {} KiB ({:.0} s)",
                k + 1,
                rss_kib(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    samples
}

/// A wait of `RELAY_SCALE_LATENCY_US` (default 1 ms, in tokio time) before
/// every provider call; notes how long the calls took (the wait and the
/// provider's own work) and the gaps between one call's end and the next
/// call's start (the engine's own time). With `RELAY_SCALE_LATENCY_MODE=spin`
/// the wait spins on the CPU instead, with `thread` it blocks the thread:
/// how much of the engine's time between calls comes from the thread having
/// slept. Both settings are read once, not at every call.
#[derive(Debug, Clone)]
struct Slow {
    tally: Arc<std::sync::Mutex<SlowTally>>,
    wait: Duration,
    mode: WaitMode,
}

#[derive(Debug, Clone, Copy)]
enum WaitMode {
    Tokio,
    Spin,
    Thread,
}

impl Slow {
    fn from_env() -> Self {
        let us = std::env::var("RELAY_SCALE_LATENCY_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        let mode = match std::env::var("RELAY_SCALE_LATENCY_MODE").as_deref() {
            Ok("spin") => WaitMode::Spin,
            Ok("thread") => WaitMode::Thread,
            _ => WaitMode::Tokio,
        };
        Slow {
            tally: Default::default(),
            wait: Duration::from_micros(us),
            mode,
        }
    }
}

#[derive(Debug, Default)]
struct SlowTally {
    calls: u64,
    /// The calls' time, from the layer's start to the provider's return.
    in_calls: Duration,
    /// The waits' time alone.
    waited: Duration,
    /// When the call under way began.
    call_start: Option<tokio::time::Instant>,
    last_end: Option<tokio::time::Instant>,
    /// When the current rollout's first call began.
    first_start: Option<tokio::time::Instant>,
    gaps: Vec<Duration>,
}

#[async_trait::async_trait]
impl relay::providers::Interceptor for Slow {
    async fn before(&self, _op: &'static str) -> relay::Result<()> {
        let t = tokio::time::Instant::now();
        {
            let mut tally = self.tally.lock().unwrap();
            if let Some(end) = tally.last_end.take() {
                tally.gaps.push(t - end);
            }
            tally.first_start.get_or_insert(t);
            tally.call_start = Some(t);
        }
        if !self.wait.is_zero() {
            match self.mode {
                WaitMode::Spin => {
                    // The harness runs in real time: tokio's clock is the
                    // system's, read as everywhere else here.
                    let until = tokio::time::Instant::now() + self.wait;
                    while tokio::time::Instant::now() < until {
                        std::hint::spin_loop();
                    }
                }
                WaitMode::Thread => std::thread::sleep(self.wait),
                WaitMode::Tokio => tokio::time::sleep(self.wait).await,
            }
        }
        self.tally.lock().unwrap().waited += t.elapsed();
        Ok(())
    }

    fn after(&self, _op: &'static str, _outcome: Result<(), &relay::Error>) {
        let now = tokio::time::Instant::now();
        let mut tally = self.tally.lock().unwrap();
        if let Some(start) = tally.call_start.take() {
            tally.calls += 1;
            tally.in_calls += now - start;
            tally.last_end = Some(now);
        }
    }
}

/// `r` rollouts of a 100-step canary (weights only: no pauses, analysis or
/// readiness delays) one after another, in real time, on a target, probe
/// and artifact store whose every call first waits 1 ms
/// (`RELAY_SCALE_LATENCY_US` overrides), on [`lean_stores`]. Returns the
/// time beyond the providers' own (their calls, from the wait's start to
/// the provider's return: what a remote provider's latency includes), as a
/// fraction of it; the time beyond the waits alone is printed beside it.
async fn latency(r: usize) -> f64 {
    let slow = Slow::from_env();
    let sim = Arc::new(SimTarget::new("t0").default_behavior(RevisionBehavior {
        readiness_delay: Duration::ZERO,
        ..RevisionBehavior::healthy()
    }));
    let artifacts = Arc::new(MemoryArtifactStore::new());
    artifacts.push("app", "v1", b"1", Default::default());
    artifacts.push("app", "v2", b"2", Default::default());
    let relay = lean_stores(Relay::builder())
        .target(Arc::new(Wrapped::with(slow.clone(), sim.clone())))
        .probe(Arc::new(Wrapped::with(slow.clone(), SimProbe::new(sim.clone()))))
        .artifacts(Arc::new(Wrapped::with(slow.clone(), artifacts)))
        .build()
        .unwrap();
    let mut strategy = CanaryStrategy::new();
    for w in 1..=100 {
        strategy = strategy.set_weight(w);
    }
    let mut total = Duration::ZERO;
    // The engine's time before a rollout's first call and after its last.
    let (mut before, mut after) = (Duration::ZERO, Duration::ZERO);
    for k in 0..r {
        let tag = if k % 2 == 0 { "app:v1" } else { "app:v2" };
        let spec = RolloutSpec::new("t0", Release::new(tag.parse().unwrap()).replicas(4), strategy.clone());
        {
            let mut tally = slow.tally.lock().unwrap();
            (tally.last_end, tally.first_start) = (None, None);
        }
        let started = tokio::time::Instant::now();
        assert!(relay.start(spec).await.unwrap().wait().await.unwrap().is_success());
        let ended = tokio::time::Instant::now();
        total += ended - started;
        let tally = slow.tally.lock().unwrap();
        before += tally.first_start.map_or(Duration::ZERO, |t| t - started);
        after += tally.last_end.map_or(Duration::ZERO, |t| ended - t);
    }
    let mut tally = slow.tally.lock().unwrap();
    let (providers, calls) = (tally.in_calls.as_secs_f64(), tally.calls);
    let extra = (total.as_secs_f64() - providers) / providers;
    let waits = tally.waited.as_secs_f64();
    let between: Duration = tally.gaps.iter().sum();
    tally.gaps.sort_unstable();
    let gap = |p: f64| percentile(&tally.gaps, p).as_secs_f64() * 1e6;
    let per_rollout = |d: Duration| d.as_secs_f64() * 1e6 / r as f64;
    eprintln!(
        "{r} rollouts, {calls} provider calls: {:.1} ms in the providers, {:.1} ms in all: {:+.2}% beyond the providers' own time ({:.1} µs per call), {:+.2}% beyond the waits alone; \
         engine time between calls p50 {:.1} µs, p99 {:.1} µs; per rollout {:.0} µs between calls, {:.0} µs before the first, {:.0} µs after the last",
        providers * 1e3,
        total.as_secs_f64() * 1e3,
        extra * 100.0,
        (total.as_secs_f64() - providers) * 1e6 / calls as f64,
        (total.as_secs_f64() - waits) / waits * 100.0,
        gap(0.5),
        gap(0.99),
        per_rollout(between),
        per_rollout(before),
        per_rollout(after),
    );
    extra
}

/// `n` of the `rollouts` bench's ten-step canaries measured every 60 s, one
/// after another on one target (v2, v1, v2, ...), and nothing else: under
/// `valgrind --tool=callgrind` the difference between two `n` is what one
/// rollout costs (instructions, tokio's parks, task polls) without
/// criterion around it. With `at_once` above 1, the same canaries run in
/// rounds of `at_once` on as many targets (the `_at_once` bench's), all
/// started together, so their timers fall due at the same instants.
async fn canaries(n: usize, at_once: usize) {
    if at_once > 1 {
        let relay = common::fleet_with_v1(at_once, Duration::from_secs(5)).await;
        let strategy = common::ten_step_canary(Duration::from_secs(60));
        let rounds = n.div_ceil(at_once);
        let started = Instant::now();
        for k in 0..rounds {
            let tag = if k % 2 == 0 { "app:v2" } else { "app:v1" };
            common::run_all(&relay, at_once, tag, strategy.clone()).await;
        }
        let per = started.elapsed().as_secs_f64() * 1e6 / (rounds * at_once) as f64;
        eprintln!(
            "{} ten-step canaries measured every 60 s, {at_once} at a time: {per:.0} µs of wall time a rollout",
            rounds * at_once
        );
        return;
    }
    let relay = common::relay_with_v1(common::healthy_target(Duration::from_secs(5))).await;
    let strategy = common::ten_step_canary(Duration::from_secs(60));
    let started = Instant::now();
    for k in 0..n {
        let tag = if k % 2 == 0 { "v2" } else { "v1" };
        let outcome = relay
            .start(common::spec(tag, strategy.clone()))
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert!(outcome.is_success(), "canary {k}: {outcome}");
    }
    let per = started.elapsed().as_secs_f64() * 1e6 / n as f64;
    eprintln!("{n} ten-step canaries measured every 60 s, one after another: {per:.0} µs of wall time a rollout");
}

/// `n` sleeps of `ms` each by one task on the paused clock, and nothing
/// else: what tokio alone spends on each wake-up of a simulated rollout,
/// the floor under the simulation throughput.
async fn wakes(ms: u64, n: usize) {
    let started = Instant::now();
    tokio::spawn(async move {
        for _ in 0..n {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    })
    .await
    .unwrap();
    let per = started.elapsed().as_secs_f64() * 1e6 / n as f64;
    eprintln!("{n} sleeps of {ms} ms on the paused clock: {per:.2} µs of wall time a wake");
}

/// The control of the 1 ms run: a fixed piece of work that is not the
/// engine's (`lines` short lines formatted into a buffer and hashed, a few
/// small strings made and dropped), timed back to back, after a 1 ms
/// spinning wait and after the thread slept 1 ms. What the work takes
/// beyond its warm time after a sleep is what any code pays there.
fn cold(lines: u64, n: usize) {
    fn work(buf: &mut Vec<u8>, k: u64, lines: u64) -> u64 {
        use std::io::Write;
        buf.clear();
        for i in 0..lines {
            let _ = write!(buf, "{{\"k\":{k},\"i\":{i}}}");
        }
        let names: Vec<String> = (0..8).map(|i| format!("s{i}-{k}")).collect();
        let fnv = buf.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
        fnv ^ names.iter().map(|s| s.len() as u64).sum::<u64>()
    }
    let mut buf = Vec::new();
    for wait in ["none", "spin", "sleep"] {
        let mut took = Vec::with_capacity(n);
        let mut acc = 0;
        for k in 0..n as u64 {
            match wait {
                "spin" => {
                    let s = Instant::now();
                    while s.elapsed() < Duration::from_millis(1) {}
                }
                "sleep" => std::thread::sleep(Duration::from_millis(1)),
                _ => {}
            }
            let s = Instant::now();
            acc ^= work(&mut buf, k, lines);
            took.push(s.elapsed().as_secs_f64() * 1e6);
        }
        took.sort_by(f64::total_cmp);
        let (p50, p90) = (took[n / 2], took[n * 9 / 10]);
        eprintln!("{lines} lines, after {wait:>5}: p50 {p50:.2} µs, p90 {p90:.2} µs (checksum {acc:x})");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let test = args.iter().any(|a| a == "--test");
    let arg = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let paused = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let realtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    };
    let multi = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let mode = if test {
        "test"
    } else {
        args.first().map(String::as_str).unwrap_or("virtual")
    };
    match mode {
        "virtual" => {
            paused().block_on(concurrent(
                arg(1, 10_000),
                Duration::from_secs(60),
                12,
                Duration::from_secs(5),
            ));
        }
        "realtime" => {
            multi().block_on(concurrent(
                arg(1, 10_000),
                Duration::from_millis(500),
                2,
                Duration::from_millis(50),
            ));
        }
        "sequential" => {
            let m = arg(1, 1_000_000);
            let samples = paused().block_on(sequential(m, (m / 10).max(1)));
            let after_warmup = &samples[1.min(samples.len() - 1)..];
            let (lo, hi) = (
                *after_warmup.iter().min().unwrap() as f64,
                *after_warmup.iter().max().unwrap() as f64,
            );
            eprintln!(
                "RSS after warm-up: {lo} to {hi} KiB ({:+.1}% spread)",
                (hi - lo) / lo * 100.0
            );
        }
        "latency" => {
            realtime().block_on(latency(arg(1, 20)));
        }
        "canaries" => {
            paused().block_on(canaries(arg(1, 60), arg(2, 1)));
        }
        "wakes" => {
            paused().block_on(wakes(arg(1, 60_000) as u64, arg(2, 200_000)));
        }
        "cold" => {
            cold(arg(1, 8) as u64, arg(2, 3_000));
        }
        "test" => {
            realtime().block_on(latency(1));
            paused().block_on(canaries(2, 1));
            paused().block_on(canaries(4, 2));
            paused().block_on(wakes(60_000, 100));
            cold(2, 20);
            paused().block_on(concurrent(50, Duration::from_secs(60), 2, Duration::from_secs(5)));
            multi().block_on(concurrent(20, Duration::from_millis(50), 2, Duration::from_millis(5)));
            paused().block_on(sequential(200, 100));
        }
        other => {
            panic!("unknown mode {other:?}: virtual, realtime, sequential, latency, canaries, wakes, cold or --test")
        }
    }
}
