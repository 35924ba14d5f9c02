//! Counting the requests a kube client sends.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::Request;
use tower_layer::Layer;
use tower_service::Service;

/// A client layer that counts API requests by operation (`GET
/// deployments`, `LIST replicasets`, `PATCH deployments`, `PATCH
/// pods/status`...). Clones share the counts.
///
/// ```no_run
/// # async fn f(config: relay_providers::kubernetes::sdk::kube::Config) -> Result<(), Box<dyn std::error::Error>> {
/// use relay_providers::kubernetes::sdk::kube::client::ClientBuilder;
/// use relay_providers::kubernetes::RequestCounter;
/// let calls = RequestCounter::default();
/// let client = ClientBuilder::try_from(config)?.with_layer(&calls).build();
/// // ... use `client`; then:
/// println!("{} requests: {:?}", calls.total(), calls.counts());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct RequestCounter {
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl RequestCounter {
    /// Requests so far, by operation.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// All requests so far.
    pub fn total(&self) -> u64 {
        self.counts().values().sum()
    }

    /// Forget the counts.
    pub fn reset(&self) {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// `GET /apis/apps/v1/namespaces/ns/deployments/web` → `GET deployments`;
/// a GET without a name is a `LIST`; subresources follow a slash.
pub(crate) fn operation(method: &http::Method, path: &str) -> String {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let rest = match segs.first() {
        Some(&"api") => segs.get(2..),
        Some(&"apis") => segs.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    let rest = match rest {
        ["namespaces", _, resource, tail @ ..] => {
            let mut r = vec![*resource];
            r.extend_from_slice(tail);
            r
        }
        other => other.to_vec(),
    };
    let (resource, named, sub) = match rest[..] {
        [] => ("", false, None),
        [r] => (r, false, None),
        [r, _] => (r, true, None),
        [r, _, s, ..] => (r, true, Some(s)),
    };
    let verb = match (method.as_str(), named) {
        ("GET", false) => "LIST",
        (m, _) => m,
    };
    match sub {
        Some(s) => format!("{verb} {resource}/{s}"),
        None => format!("{verb} {resource}"),
    }
}

impl<S> Layer<S> for RequestCounter {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            counter: self.clone(),
        }
    }
}

/// The service [`RequestCounter`] wraps a client's stack in.
#[derive(Clone, Debug)]
pub struct Counted<S> {
    inner: S,
    counter: RequestCounter,
}

impl<S, B> Service<Request<B>> for Counted<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let op = operation(req.method(), req.uri().path());
        *self
            .counter
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(op)
            .or_insert(0) += 1;
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn paths_name_their_operation() {
        for (m, path, op) in [
            (
                Method::GET,
                "/apis/apps/v1/namespaces/ns/deployments/web",
                "GET deployments",
            ),
            (
                Method::GET,
                "/apis/apps/v1/namespaces/ns/replicasets",
                "LIST replicasets",
            ),
            (
                Method::PATCH,
                "/apis/apps/v1/namespaces/ns/deployments/web",
                "PATCH deployments",
            ),
            (
                Method::PATCH,
                "/api/v1/namespaces/ns/pods/p-1/status",
                "PATCH pods/status",
            ),
            (Method::GET, "/api/v1/namespaces/ns/secrets/db", "GET secrets"),
            (Method::GET, "/api/v1/namespaces", "LIST namespaces"),
            (Method::POST, "/api/v1/namespaces", "POST namespaces"),
        ] {
            assert_eq!(operation(&m, path), op, "{path}");
        }
    }
}
