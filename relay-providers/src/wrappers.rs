//! Wrappers that add behaviour around any provider: [`Faulty`] injects
//! errors, [`Latency`] adds delay, [`RateLimited`] keeps calls under a
//! request rate. All wrap every seam the same way, through one forwarding
//! implementation per seam.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use relay_core::{
    clock::UnixMillis,
    rng::SeededRng,
    state::{CommandWaker, CommandWatch},
    Artifact, ArtifactPolicy, ArtifactRef, ArtifactStore, Capabilities, Error, HealthProbe, Lease, ProbeQuery, Result,
    RevisionId, RevisionSpec, RolloutCommand, RolloutRecord, Sample, SecretRef, SecretStore, SecretValue, StateStore,
    Target, TargetState, TrafficSplit,
};

/// Something done around each wrapped call: delay it or fail it before,
/// see how it ended after.
#[async_trait]
pub trait Interceptor: Send + Sync + fmt::Debug + 'static {
    /// Runs before operation `op` (`route`, `fetch`, `sample`, ...); an error
    /// is returned instead of calling the wrapped provider.
    async fn before(&self, op: &'static str) -> Result<()>;

    /// Runs once the wrapped provider's `op` returned, with how it ended:
    /// what a metric per call or a circuit breaker counts. Not for a call
    /// [`Self::before`] failed, nor for one dropped before it returned (a
    /// watch the engine stopped waiting on). Nothing by default.
    fn after(&self, op: &'static str, outcome: std::result::Result<(), &Error>) {
        let _ = (op, outcome);
    }
}

/// A provider `T` with a [`Interceptor`] in front of every call. [`Faulty`],
/// [`Latency`] and [`RateLimited`] are wrappers with relay's interceptors; an
/// application's own interceptor (a metric per call, a circuit breaker) wraps any
/// seam the same way.
#[derive(Debug)]
pub struct Wrapped<L, T> {
    interceptor: L,
    inner: T,
}

impl<L, T> Wrapped<L, T> {
    /// `inner` with `interceptor` in front of every call.
    pub fn with(interceptor: L, inner: T) -> Self {
        Wrapped { interceptor, inner }
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// The interceptor.
    pub fn interceptor(&self) -> &L {
        &self.interceptor
    }
}

impl<L: Interceptor, T> Wrapped<L, T> {
    /// The wrapped provider's `call`, made only once the interceptor let it
    /// through, with the interceptor around it.
    async fn call<R, F>(&self, op: &'static str, call: impl FnOnce() -> F) -> Result<R>
    where
        F: std::future::Future<Output = Result<R>>,
    {
        self.interceptor.before(op).await?;
        let result = call().await;
        self.interceptor.after(op, result.as_ref().map(|_| ()));
        result
    }
}

/// What kind of error [`Faulty`] injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// [`Error::Unavailable`] (retryable).
    Unavailable,
    /// [`Error::RateLimited`] (retryable).
    RateLimited,
    /// [`Error::Timeout`] (retryable).
    Timeout,
    /// [`Error::PermissionDenied`] (terminal).
    PermissionDenied,
    /// The call never returns (the retry policy's attempt timeout must end it).
    Hang,
}

/// Seeded error injection.
#[derive(Debug)]
pub struct FaultInjector {
    rng: SeededRng,
    kind: FaultKind,
    rate_ppm: u32,
    only: Option<BTreeSet<&'static str>>,
    forced: AtomicU32,
    injected: AtomicU64,
}

#[async_trait]
impl Interceptor for FaultInjector {
    async fn before(&self, op: &'static str) -> Result<()> {
        if self.only.as_ref().is_some_and(|o| !o.contains(op)) {
            return Ok(());
        }
        let forced = self
            .forced
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        // Draw on every call so a schedule depends only on the seed and the call sequence.
        let roll = (self.rng.next_u64() % 1_000_000) as u32;
        if !forced && roll >= self.rate_ppm {
            return Ok(());
        }
        self.injected.fetch_add(1, Ordering::Relaxed);
        let provider = "faulty".to_owned();
        Err(match self.kind {
            FaultKind::Unavailable => Error::Unavailable {
                provider,
                reason: format!("injected fault in {op}"),
            },
            FaultKind::RateLimited => Error::RateLimited { provider },
            FaultKind::Timeout => Error::Timeout {
                what: format!("injected timeout in {op}"),
            },
            FaultKind::PermissionDenied => Error::PermissionDenied {
                what: format!("injected denial of {op}"),
            },
            FaultKind::Hang => return std::future::pending().await,
        })
    }
}

/// A provider that fails some calls: at a seeded rate, on chosen operations,
/// or for the next `n` calls. Wraps any target, store or probe.
///
/// ```
/// # mod relay { pub use relay_core::*; pub mod providers { pub use relay_providers::*; } }
/// use relay::providers::{FaultKind, Faulty};
/// use relay::providers::sim::MemorySecretStore;
/// let store = Faulty::new(MemorySecretStore::new(), 42).with_rate(FaultKind::Unavailable, 0.2);
/// store.fail_next(1);
/// ```
pub type Faulty<T> = Wrapped<FaultInjector, T>;

impl<T> Faulty<T> {
    /// Wrap `inner`; no fault is injected until a rate or `fail_next` is set.
    pub fn new(inner: T, seed: u64) -> Self {
        Wrapped {
            interceptor: FaultInjector {
                rng: SeededRng::new(seed),
                kind: FaultKind::Unavailable,
                rate_ppm: 0,
                only: None,
                forced: AtomicU32::new(0),
                injected: AtomicU64::new(0),
            },
            inner,
        }
    }

    /// Fail this fraction (0.0 to 1.0) of calls with `kind`.
    pub fn with_rate(mut self, kind: FaultKind, rate: f64) -> Self {
        self.interceptor.kind = kind;
        self.interceptor.rate_ppm = (rate.clamp(0.0, 1.0) * 1_000_000.0) as u32;
        self
    }

    /// Inject only into these operations (`stage`, `scale`, `route`,
    /// `promote`, `retire`, `observe`, `fetch`, `resolve`, `sample`, `put`,
    /// `get`, ...).
    pub fn only_operations(mut self, ops: &[&'static str]) -> Self {
        self.interceptor.only = Some(ops.iter().copied().collect());
        self
    }

    /// Fail the next `n` matching calls regardless of the rate.
    pub fn fail_next(&self, n: u32) {
        self.interceptor.forced.store(n, Ordering::SeqCst);
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        self.interceptor.injected.load(Ordering::Relaxed)
    }
}

/// A fixed delay before every call.
#[derive(Debug)]
pub struct Delay {
    delay: Duration,
}

#[async_trait]
impl Interceptor for Delay {
    async fn before(&self, _op: &'static str) -> Result<()> {
        tokio::time::sleep(self.delay).await;
        Ok(())
    }
}

/// A provider whose every call takes `delay` longer (in tokio time, so it is
/// free under a paused clock).
pub type Latency<T> = Wrapped<Delay, T>;

impl<T> Latency<T> {
    /// Wrap `inner` with `delay` per call.
    pub fn new(inner: T, delay: Duration) -> Self {
        Wrapped {
            interceptor: Delay { delay },
            inner,
        }
    }
}

/// A token bucket (as a generic cell rate algorithm) in tokio time: at most
/// `burst` calls at once, then `per_second` calls a second. Clones share the
/// bucket, so one limiter can guard every provider that talks to the same
/// API (one AWS account, one API server) across all rollouts of a process.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    inner: std::sync::Arc<std::sync::Mutex<Gcra>>,
    granted: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Debug)]
struct Gcra {
    interval: Duration,
    burst: u32,
    /// Theoretical arrival time of the next call.
    tat: Option<tokio::time::Instant>,
}

impl RateLimiter {
    /// A limiter of `per_second` calls a second with bursts of `burst`.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] for a rate that is not positive and finite, or
    /// a burst of 0.
    pub fn new(per_second: f64, burst: u32) -> Result<Self> {
        if !(per_second.is_finite() && per_second > 0.0) {
            return Err(Error::invalid(
                "rate_limit.per_second",
                format!("{per_second} must be a positive number"),
            ));
        }
        if burst == 0 {
            return Err(Error::invalid("rate_limit.burst", "must be at least 1"));
        }
        let interval = Duration::from_secs_f64(1.0 / per_second);
        Ok(RateLimiter {
            inner: std::sync::Arc::new(std::sync::Mutex::new(Gcra {
                interval,
                burst,
                tat: None,
            })),
            granted: Default::default(),
        })
    }

    /// Wait until a call may start.
    pub async fn acquire(&self) {
        let start = {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let now = tokio::time::Instant::now();
            let tat = g.tat.map_or(now, |t| t.max(now));
            // Up to `burst` calls may run ahead of the steady schedule.
            let slack = g.interval * (g.burst - 1);
            let start = tat.checked_sub(slack).map_or(now, |s| s.max(now));
            g.tat = Some(tat + g.interval);
            start
        };
        tokio::time::sleep_until(start).await;
        self.granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Calls let through so far, by every clone of this limiter: compare it
    /// with a provider's request count to check that none bypassed it.
    pub fn granted(&self) -> u64 {
        self.granted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[async_trait]
impl Interceptor for RateLimiter {
    async fn before(&self, _op: &'static str) -> Result<()> {
        self.acquire().await;
        Ok(())
    }
}

/// A provider whose calls wait for a shared [`RateLimiter`].
///
/// ```
/// # mod relay { pub use relay_core::*; pub mod providers { pub use relay_providers::*; } }
/// use relay::providers::{RateLimited, RateLimiter};
/// use relay::providers::sim::SimTarget;
/// let aws = RateLimiter::new(20.0, 5).unwrap();
/// let target = RateLimited::new(SimTarget::new("web"), aws.clone());
/// ```
pub type RateLimited<T> = Wrapped<RateLimiter, T>;

impl<T> RateLimited<T> {
    /// Wrap `inner` behind `limiter` (clone one limiter to share it).
    pub fn new(inner: T, limiter: RateLimiter) -> Self {
        Wrapped {
            interceptor: limiter,
            inner,
        }
    }
}

#[async_trait]
impl<L: Interceptor, T: Target> Target for Wrapped<L, T> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn observe(&self) -> Result<TargetState> {
        self.call("observe", || self.inner.observe()).await
    }
    async fn stage(&self, revision: &RevisionSpec, replicas: u32) -> Result<()> {
        self.call("stage", || self.inner.stage(revision, replicas)).await
    }
    async fn scale(&self, revision: &RevisionId, replicas: u32) -> Result<()> {
        self.call("scale", || self.inner.scale(revision, replicas)).await
    }
    async fn route(&self, split: &TrafficSplit) -> Result<()> {
        self.call("route", || self.inner.route(split)).await
    }
    async fn promote(&self, revision: &RevisionId) -> Result<()> {
        self.call("promote", || self.inner.promote(revision)).await
    }
    async fn retire(&self, revision: &RevisionId) -> Result<()> {
        self.call("retire", || self.inner.retire(revision)).await
    }
    async fn describe(&self, revision: &RevisionId) -> Result<Option<relay_core::RunningRevision>> {
        self.call("describe", || self.inner.describe(revision)).await
    }
    async fn changed(&self) -> Result<()> {
        self.call("changed", || self.inner.changed()).await
    }
    fn manual(&self, action: &relay_core::runbook::ManualAction) -> Option<Vec<String>> {
        self.inner.manual(action)
    }
}

#[async_trait]
impl<L: Interceptor, T: SecretStore> SecretStore for Wrapped<L, T> {
    async fn fetch(&self, reference: &SecretRef) -> Result<SecretValue> {
        self.call("fetch", || self.inner.fetch(reference)).await
    }
}

#[async_trait]
impl<L: Interceptor, T: ArtifactStore> ArtifactStore for Wrapped<L, T> {
    async fn resolve(&self, reference: &ArtifactRef) -> Result<Artifact> {
        self.call("resolve", || self.inner.resolve(reference)).await
    }
    async fn verify(&self, reference: &ArtifactRef, artifact: &Artifact, policy: &ArtifactPolicy) -> Result<()> {
        self.call("verify", || self.inner.verify(reference, artifact, policy))
            .await
    }
    async fn attachment(&self, digest: &relay_core::Digest, kind: &str) -> Result<Option<Vec<u8>>> {
        self.call("attachment", || self.inner.attachment(digest, kind)).await
    }
}

#[async_trait]
impl<L: Interceptor, T: HealthProbe> HealthProbe for Wrapped<L, T> {
    async fn sample(&self, query: &ProbeQuery) -> Result<Sample> {
        self.call("sample", || self.inner.sample(query)).await
    }
}

/// Leases are not [held](StateStore::hold_lease) through an interceptor: the
/// engine renews them, through the interceptor, so its faults, latency and limits
/// reach renewals as they reach every other call.
#[async_trait]
impl<L: Interceptor, T: StateStore> StateStore for Wrapped<L, T> {
    async fn get(&self, id: &str) -> Result<Option<RolloutRecord>> {
        self.call("get", || self.inner.get(id)).await
    }
    async fn put(&self, record: &RolloutRecord, expected_version: Option<u64>) -> Result<u64> {
        self.call("put", || self.inner.put(record, expected_version)).await
    }
    async fn list_active(&self) -> Result<Vec<RolloutRecord>> {
        self.call("list_active", || self.inner.list_active()).await
    }
    async fn list_target(&self, target: &str) -> Result<Vec<RolloutRecord>> {
        self.call("list_target", || self.inner.list_target(target)).await
    }
    async fn list_all(&self) -> Result<Vec<RolloutRecord>> {
        self.call("list_all", || self.inner.list_all()).await
    }
    async fn lease(&self, target: &str) -> Result<Option<Lease>> {
        self.call("lease", || self.inner.lease(target)).await
    }
    async fn send_command(&self, id: &str, command: &RolloutCommand) -> Result<u64> {
        self.call("send_command", || self.inner.send_command(id, command)).await
    }
    async fn commands(&self, id: &str, after: u64) -> Result<Vec<(u64, RolloutCommand)>> {
        self.call("commands", || self.inner.commands(id, after)).await
    }
    fn watch_commands(&self, id: &str, wake: CommandWaker) -> Option<CommandWatch> {
        self.inner.watch_commands(id, wake)
    }
    fn command_poll(&self) -> Option<Duration> {
        self.inner.command_poll()
    }
    async fn acquire_lease(&self, target: &str, holder: &str, ttl: Duration, now_ms: UnixMillis) -> Result<Lease> {
        self.call("acquire_lease", || {
            self.inner.acquire_lease(target, holder, ttl, now_ms)
        })
        .await
    }
    async fn renew_lease(&self, lease: &Lease, ttl: Duration, now_ms: UnixMillis) -> Result<Lease> {
        self.call("renew_lease", || self.inner.renew_lease(lease, ttl, now_ms))
            .await
    }
    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        self.call("release_lease", || self.inner.release_lease(lease)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{MemorySecretStore, SimTarget};

    /// A simulated target running one revision, and the split that sends
    /// all traffic to it.
    async fn serving(name: &str) -> (SimTarget, TrafficSplit) {
        let artifact = Artifact {
            repository: "app".into(),
            tag: None,
            digest: relay_core::Digest::of(b"1"),
            metadata: std::collections::BTreeMap::new(),
        };
        let spec = RevisionSpec::new(artifact, Default::default(), Default::default());
        let target = SimTarget::new(name);
        target.stage(&spec, 1).await.unwrap();
        (target, TrafficSplit::all(&spec.id))
    }

    async fn pattern(seed: u64) -> Vec<bool> {
        let store = Faulty::new(MemorySecretStore::new(), seed).with_rate(FaultKind::Unavailable, 0.3);
        store.inner().put("a", "x".to_string().into());
        let r: SecretRef = "mem://a".parse().unwrap();
        let mut out = Vec::new();
        for _ in 0..200 {
            out.push(store.fetch(&r).await.is_err());
        }
        out
    }

    #[tokio::test]
    async fn fault_schedules_depend_only_on_the_seed() {
        let (a, b, c) = (pattern(5).await, pattern(5).await, pattern(6).await);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let rate = a.iter().filter(|x| **x).count() as f64 / a.len() as f64;
        assert!((0.2..0.4).contains(&rate), "{rate}");
    }

    #[tokio::test]
    async fn faults_have_the_configured_kind_and_scope() {
        let (sim, split) = serving("t").await;
        let t = Faulty::new(sim, 1)
            .with_rate(FaultKind::PermissionDenied, 0.0)
            .only_operations(&["route"]);
        t.fail_next(1);
        assert!(t.observe().await.is_ok(), "observe is not in scope");
        let e = t.route(&split).await.unwrap_err();
        assert!(matches!(e, Error::PermissionDenied { .. }) && !e.is_retryable());
        assert!(t.route(&split).await.is_ok(), "only the next call was forced");
        assert_eq!(t.injected(), 1);
    }

    /// Records when each call reaches the wrapped provider.
    #[derive(Debug, Default)]
    struct Stamps(std::sync::Mutex<Vec<tokio::time::Instant>>);

    #[async_trait]
    impl SecretStore for Stamps {
        async fn fetch(&self, _r: &SecretRef) -> Result<SecretValue> {
            self.0.lock().unwrap().push(tokio::time::Instant::now());
            Ok(SecretValue::new("x".to_string().into(), "1"))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_shared_rate_limit_is_never_exceeded_by_concurrent_callers() {
        let limiter = RateLimiter::new(50.0, 10).unwrap();
        let stamps = std::sync::Arc::new(Stamps::default());
        // Two providers sharing one limiter, 500 concurrent callers each.
        let a = std::sync::Arc::new(RateLimited::new(stamps.clone(), limiter.clone()));
        let b = std::sync::Arc::new(RateLimited::new(stamps.clone(), limiter.clone()));
        let r: SecretRef = "mem://x".parse().unwrap();
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for i in 0..1000 {
            let (p, r) = (if i % 2 == 0 { a.clone() } else { b.clone() }, r.clone());
            tasks.push(tokio::spawn(async move { p.fetch(&r).await.unwrap() }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut times: Vec<Duration> = stamps.0.lock().unwrap().iter().map(|t| *t - start).collect();
        times.sort();
        assert_eq!(times.len(), 1000);
        assert_eq!(limiter.granted(), 1000, "clones share one count");
        // In any one-second window: at most the burst plus the rate.
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_secs(1))
                .count();
            assert!(in_window <= 60, "{in_window} calls in the second after {t:?}");
        }
        // And no slower than the schedule: (1000 - burst) / rate seconds.
        let last = *times.last().unwrap();
        assert!(
            last >= Duration::from_millis(19_790) && last <= Duration::from_millis(19_810),
            "{last:?}"
        );
        assert!(RateLimiter::new(0.0, 1).is_err() && RateLimiter::new(1.0, 0).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn latency_delays_every_call_in_tokio_time() {
        let (sim, split) = serving("t").await;
        let t = Latency::new(sim, Duration::from_millis(250));
        let start = tokio::time::Instant::now();
        t.observe().await.unwrap();
        t.route(&split).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        assert_eq!(t.name(), "t");
    }

    /// Fails the calls it is told to, and notes how each call it let through ended.
    #[derive(Debug, Default)]
    struct Outcomes {
        refuse: std::sync::atomic::AtomicBool,
        seen: std::sync::Mutex<Vec<(&'static str, Option<String>)>>,
    }

    #[async_trait]
    impl Interceptor for Outcomes {
        async fn before(&self, op: &'static str) -> Result<()> {
            if self.refuse.load(Ordering::SeqCst) {
                return Err(Error::PermissionDenied { what: op.to_owned() });
            }
            Ok(())
        }
        fn after(&self, op: &'static str, outcome: std::result::Result<(), &Error>) {
            self.seen
                .lock()
                .unwrap()
                .push((op, outcome.err().map(|e| e.to_string())));
        }
    }

    #[tokio::test]
    async fn an_interceptor_sees_how_each_call_it_let_through_ended() {
        let t = Wrapped::with(Outcomes::default(), SimTarget::new("t"));
        t.observe().await.unwrap();
        let unknown = RevisionId::from("nowhere");
        t.route(&TrafficSplit::all(&unknown)).await.unwrap_err();
        t.interceptor().refuse.store(true, Ordering::SeqCst);
        t.route(&TrafficSplit::default()).await.unwrap_err();
        let seen = t.interceptor().seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "a call the interceptor refused has no outcome: {seen:?}");
        assert_eq!(seen[0], ("observe", None));
        assert_eq!(seen[1].0, "route");
        assert!(seen[1].1.as_deref().is_some_and(|e| e.contains("nowhere")), "{seen:?}");
    }
}
