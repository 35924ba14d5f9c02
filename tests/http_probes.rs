//! The HTTP probe against endpoints this test serves, and the Prometheus
//! probe against a real Prometheus (`scripts/test.sh` starts it on
//! 127.0.0.1 scraping `RELAY_TEST_METRICS_ADDR` every second and exports its
//! URL as `RELAY_TEST_PROMETHEUS_URL`), which scrapes a metrics endpoint this
//! test serves: stable and candidate revisions with different error rates;
//! and the webhook gate against hooks this test serves.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay::providers::http::{HttpProbe, PrometheusProbe, WebhookGate, ERROR_RATE, LATENCY_MS};
use relay::providers::sim::{MemoryArtifactStore, RevisionBehavior, SimTarget};
use relay::strategies::{AllAtOnceStrategy, CanaryStrategy, ThresholdJudge};
use relay::{
    AnalysisSpec, Check, EngineConfig, Error, HealthProbe, Outcome, ProbeQuery, Relay, Release, RevisionId,
    RolloutSpec, Scope,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Error rate per revision, and when the revision started serving.
type Revisions = Arc<Mutex<BTreeMap<String, (f64, tokio::time::Instant)>>>;

/// Serves `/metrics` (request counters per revision, 100 requests/s at the
/// revision's error rate, none at a NaN rate), `/health/<revision>` (500 when the revision's
/// error rate is above one half) and `/slow` (answers after 3 s).
fn serve(listener: TcpListener, revisions: Revisions) {
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let revisions = revisions.clone();
            tokio::spawn(async move {
                let (head, body) = read_request(&mut conn).await;
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let (status, body) = if path == "/hook/ok" {
                    let signature = head
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("x-relay-signature-256: ")
                                .or_else(|| l.strip_prefix("X-Relay-Signature-256: "))
                        })
                        .unwrap_or("")
                        .trim()
                        .to_owned();
                    let sent: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    if !relay::gate::verify_webhook_signature(HOOK_KEY.as_bytes(), &body, &signature) {
                        (401, "bad signature".to_owned())
                    } else if sent["target"] != "web"
                        || sent["candidate"].as_str().is_none_or(|c| !c.starts_with("rev-"))
                    {
                        (400, format!("unexpected context {sent}"))
                    } else {
                        (200, "go".to_owned())
                    }
                } else if path == "/hook/fail" {
                    (503, "change freeze in effect".to_owned())
                } else if path == "/metrics" {
                    let mut body = String::from("# TYPE http_requests_total counter\n");
                    for (rev, (rate, since)) in revisions.lock().unwrap().iter() {
                        // A NaN rate: a revision that serves nothing.
                        let total = if rate.is_nan() {
                            0
                        } else {
                            since.elapsed().as_millis() as u64 / 10
                        };
                        let errors = if rate.is_nan() { 0 } else { (total as f64 * rate) as u64 };
                        body += &format!(
                            "http_requests_total{{revision=\"{rev}\",code=\"200\"}} {}\n\
                             http_requests_total{{revision=\"{rev}\",code=\"500\"}} {errors}\n",
                            total - errors
                        );
                    }
                    (200, body)
                } else if path == "/slow" {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    (200, "late".to_owned())
                } else if let Some(rev) = path.strip_prefix("/health/") {
                    match revisions.lock().unwrap().get(rev) {
                        Some((rate, _)) if *rate <= 0.5 => (200, "ok".to_owned()),
                        _ => (500, "failing".to_owned()),
                    }
                } else {
                    (404, String::new())
                };
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
}

const HOOK_KEY: &str = "hook-signing-key";

/// The request line and headers, and the body (by Content-Length).
async fn read_request(conn: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_string();
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0usize);
            while data.len() < end + 4 + length {
                let n = conn.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            let body = data[end + 4..].to_vec();
            return (head, body);
        }
    }
    (String::from_utf8_lossy(&data).to_string(), Vec::new())
}

fn revisions(entries: &[(&str, f64)]) -> Revisions {
    let now = tokio::time::Instant::now();
    Arc::new(Mutex::new(
        entries.iter().map(|(r, e)| ((*r).to_owned(), (*e, now))).collect(),
    ))
}

fn query(metric: &str, scope: Scope) -> ProbeQuery {
    ProbeQuery {
        metric: metric.into(),
        scope,
        window: Duration::from_secs(5),
        target: String::new(),
        context: None,
    }
}

fn rev(id: &str) -> Scope {
    Scope::Revision(RevisionId::from(id))
}

#[tokio::test]
async fn the_http_probe_counts_statuses_timeouts_and_refusals_as_failed_requests() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve(listener, revisions(&[("good", 0.0), ("bad", 0.9)]));
    let probe = HttpProbe::builder()
        .revision_url(format!("http://{addr}/health/{{{{revision}}}}"))
        .target_url(format!("http://{addr}/slow"))
        .requests_per_sample(4)
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let good = probe.sample(&query(ERROR_RATE, rev("good"))).await.unwrap();
    assert_eq!(good.values, [0.0; 4]);
    assert_eq!(good.counts.map(|c| (c.failures, c.total)), Some((0, 4)));
    let latency = probe.sample(&query(LATENCY_MS, rev("good"))).await.unwrap();
    assert_eq!(latency.values.len(), 4);
    assert!(latency.values.iter().all(|ms| *ms > 0.0 && *ms < 300.0), "{latency:?}");
    relay::testing::health_probe_conformance(
        &probe,
        &query(ERROR_RATE, rev("good")),
        None,
        Some(&query("throughput", rev("good"))),
    )
    .await;
    let bad = probe.sample(&query(ERROR_RATE, rev("bad"))).await.unwrap();
    assert_eq!(bad.values, [1.0; 4]);
    assert!(bad.source.contains("status 500"), "{}", bad.source);

    let slow = probe.sample(&query(ERROR_RATE, Scope::Target)).await.unwrap();
    assert_eq!(slow.values, [1.0; 4], "timeouts are failed requests");
    assert!(slow.source.contains("timed out"), "{}", slow.source);

    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let refused = HttpProbe::builder()
        .target_url(format!("http://{closed}/health"))
        .requests_per_sample(2)
        .build()
        .unwrap()
        .sample(&query(ERROR_RATE, Scope::Target))
        .await
        .unwrap();
    assert_eq!(refused.values, [1.0; 2], "refused connections are failed requests");
    assert!(refused.source.contains("could not connect"), "{}", refused.source);

    let e = HttpProbe::builder()
        .target_url(format!("http://{addr}/slow"))
        .build()
        .unwrap()
        .sample(&query(ERROR_RATE, rev("good")))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidSpec { path, .. } if path == "http.url"),
        "{e:?}"
    );
    let e = HttpProbe::builder().build().unwrap_err();
    assert!(e.to_string().contains("http.url"), "{e}");
}

const ERRORS: &str = "sum(rate(http_requests_total{revision=\"{{revision}}\",code=\"500\"}[5s])) \
                      / sum(rate(http_requests_total{revision=\"{{revision}}\"}[5s]))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_judged_through_prometheus_promotes_the_good_release_and_rolls_back_the_bad() {
    let prometheus = std::env::var("RELAY_TEST_PROMETHEUS_URL")
        .expect("RELAY_TEST_PROMETHEUS_URL is not set: run the suite with scripts/test.sh, which starts Prometheus");
    let metrics_addr = std::env::var("RELAY_TEST_METRICS_ADDR").unwrap();
    let probe = PrometheusProbe::new(&prometheus, Duration::from_secs(5))
        .unwrap()
        .query("error_rate", ERRORS)
        .range_query("error_rate_over_time", ERRORS, Duration::from_secs(1));

    let artifacts = MemoryArtifactStore::new();
    artifacts.push("shop/web", "v1", b"build 1", BTreeMap::new());
    artifacts.push("shop/web", "v2", b"build 2", BTreeMap::new());
    artifacts.push("shop/web", "v3", b"build 3", BTreeMap::new());
    let target = Arc::new(SimTarget::new("web").default_behavior(RevisionBehavior {
        readiness_delay: Duration::from_millis(20),
        ..Default::default()
    }));
    // The engine's probe is recorded: Prometheus works under the recorder
    // unchanged.
    let recorded = Arc::new(relay::recording::MemoryRecording::new());
    let relay = Relay::builder()
        .target(target)
        .probe(Arc::new(relay::recording::RecordingProbe::new(
            probe.clone(),
            recorded.clone(),
        )))
        .artifacts(Arc::new(artifacts))
        .config(EngineConfig {
            poll_interval: Duration::from_millis(10),
            ..Default::default()
        })
        .build()
        .unwrap();
    let release = |tag: &str| Release::new(format!("shop/web:{tag}").parse().unwrap()).replicas(2);
    let outcome = relay
        .start(RolloutSpec::new("web", release("v1"), AllAtOnceStrategy))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(outcome.is_success(), "{outcome}");
    let analysis = AnalysisSpec::new(vec![Check::new("errors", "error_rate", ThresholdJudge::below(0.05))])
        .every(Duration::from_secs(1), 3);
    let canary = || CanaryStrategy::new().set_weight(50).analyze(analysis.clone());
    let id = |tag: &str| {
        let relay = &relay;
        let spec = RolloutSpec::new("web", release(tag), canary());
        async move { relay.plan(&spec).await.unwrap().candidate.id.to_string() }
    };
    let (v1, v2, v3) = (
        relay
            .plan(&RolloutSpec::new("web", release("v1"), AllAtOnceStrategy))
            .await
            .unwrap()
            .candidate
            .id
            .to_string(),
        id("v2").await,
        id("v3").await,
    );
    let listener = TcpListener::bind(&metrics_addr).await.unwrap();
    serve(
        listener,
        revisions(&[(&v1, 0.01), (&v2, 0.01), (&v3, 0.3), ("idle", f64::NAN)]),
    );

    // Wait for Prometheus to have scraped enough for a 5 s rate.
    let mut ready = false;
    for _ in 0..60 {
        let s = probe.sample(&query("error_rate", rev(&v3))).await.unwrap();
        if s.values.first().is_some_and(|v| v.is_finite()) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(ready, "Prometheus never had the candidate's rate");
    // A few more scrapes, so the last 5 s hold a rate at every step.
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Range queries give one value per step over the window.
    let range = probe.sample(&query("error_rate_over_time", rev(&v3))).await.unwrap();
    assert!(range.values.len() >= 2, "{range:?}");
    assert!(range.values.iter().all(|v| (v - 0.3).abs() < 0.05), "{range:?}");

    relay::testing::health_probe_conformance(
        &probe,
        &query("error_rate", rev(&v3)),
        Some(&query("error_rate", rev("absent"))),
        None,
    )
    .await;

    // No traffic: 0/0 is NaN, kept so the judge calls it no data.
    let idle = probe.sample(&query("error_rate", rev("idle"))).await.unwrap();
    assert!(
        idle.values.iter().all(|v| v.is_nan()) && idle.source.contains("NaN"),
        "{idle:?}"
    );
    // No series at all, and a query Prometheus refuses: no values, and why.
    let none = probe.sample(&query("error_rate", rev("absent"))).await.unwrap();
    assert!(
        none.values.is_empty() && none.source.contains("empty result"),
        "{none:?}"
    );
    let broken = probe.sample(&query("sum(rate(", Scope::Target)).await.unwrap();
    assert!(
        broken.values.is_empty() && broken.source.contains("query error") && broken.source.contains("sum(rate("),
        "{broken:?}"
    );

    let good = relay
        .start(RolloutSpec::new("web", release("v2"), canary()))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(good.is_success(), "{good}");
    let bad = relay
        .start(RolloutSpec::new("web", release("v3"), canary()))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(
        matches!(&bad, Outcome::RolledBack { cause } if cause.contains("errors")),
        "{bad}"
    );
    let recording = recorded.recording("canaries");
    let of_v3: Vec<_> = recording
        .samples
        .iter()
        .filter(|s| s.source.contains(&v3) && s.step.is_some())
        .collect();
    assert!(!of_v3.is_empty(), "{recording:?}");
    assert!(
        of_v3
            .iter()
            .all(|s| s.metric == "error_rate" && s.role == Some(relay::Role::Candidate)),
        "{of_v3:?}"
    );
    assert!(
        of_v3.iter().any(|s| s.values.iter().any(|v| (v - 0.3).abs() < 0.05)),
        "{of_v3:?}"
    );

    // The server's history of the last ten seconds, v2 and v3 each beside
    // v1, as recordings: a backtest of the same analysis catches v3 and
    // lets v2 through.
    #[cfg(feature = "backtest")]
    {
        use relay::providers::http::History;
        use relay::recording::Label;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let history = |candidate: &str| History {
            candidate: candidate.to_owned(),
            stable: v1.clone(),
            start_ms: now - 10_000,
            end_ms: now,
            step: Duration::from_secs(1),
        };
        let good = probe.history("v2", &["error_rate"], &history(&v2)).await.unwrap();
        let bad = probe.history("v3", &["error_rate"], &history(&v3)).await.unwrap();
        let of = |r: &relay::recording::Recording, role: relay::Role| {
            r.samples.iter().filter(|s| s.role == Some(role)).count()
        };
        assert!(
            of(&bad, relay::Role::Candidate) >= 8 && of(&bad, relay::Role::Stable) >= 8,
            "{bad:?}"
        );
        let spec = RolloutSpec::new("web", release("v2"), canary());
        let report = relay::backtest(&spec, &[good.labelled(Label::Good), bad.labelled(Label::Bad)]).unwrap();
        let s = report.summary().overall;
        assert_eq!((s.caught, s.missed, s.false_alarms), (1, 0, 0), "{report}");
        let e = probe.history("x", &["sum(up)"], &history(&v2)).await.unwrap_err();
        assert!(e.to_string().contains("{{revision}}"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_gate_passes_on_2xx_and_fails_on_errors_and_timeouts() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve(listener, revisions(&[]));
    let hook = |name: &str, path: &str, key: &str| {
        Arc::new(
            WebhookGate::new(name, format!("http://{addr}{path}"), Duration::from_millis(500))
                .unwrap()
                .signing_key(key.to_owned().into()),
        ) as Arc<dyn relay::Gate>
    };
    let artifacts = MemoryArtifactStore::new();
    for tag in ["v1", "v2"] {
        artifacts.push("shop/web", tag, tag.as_bytes(), BTreeMap::new());
    }
    let target = Arc::new(SimTarget::new("web").default_behavior(RevisionBehavior {
        readiness_delay: Duration::from_millis(20),
        ..Default::default()
    }));
    let relay = Relay::builder()
        .target(target)
        .artifacts(Arc::new(artifacts))
        .gate(hook("signed", "/hook/ok", HOOK_KEY))
        .gate(hook("wrong-key", "/hook/ok", "not-the-key"))
        .gate(hook("failing", "/hook/fail", HOOK_KEY))
        .gate(hook("slow", "/slow", HOOK_KEY))
        .config(EngineConfig {
            poll_interval: Duration::from_millis(10),
            ..Default::default()
        })
        .build()
        .unwrap();
    let run = |gate: &'static str, tag: &'static str| {
        let relay = relay.clone();
        async move {
            let release = Release::new(format!("shop/web:{tag}").parse().unwrap()).replicas(2);
            let spec = RolloutSpec::new("web", release, AllAtOnceStrategy).gate_before_promotion(gate);
            relay.start(spec).await.unwrap().wait().await.unwrap()
        }
    };
    assert!(run("signed", "v1").await.is_success());
    for (gate, says) in [
        ("wrong-key", "answered 401: bad signature"),
        ("failing", "answered 503: change freeze in effect"),
        ("slow", "did not answer within 500ms"),
    ] {
        match run(gate, "v2").await {
            Outcome::RolledBack { cause } => assert!(cause.contains(says), "{gate}: {cause}"),
            other => panic!("{gate}: {other}"),
        }
    }
    let shown = format!("{:?}", hook("signed", "/hook/ok", HOOK_KEY));
    assert!(!shown.contains(HOOK_KEY), "{shown}");
}
