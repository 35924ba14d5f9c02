//! Counting the requests a kube client sends.

use std::task::{Context, Poll};

use http::Request;
use tower_layer::Layer;
use tower_service::Service;

pub use crate::RequestCounter;

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

/// A kube client layer: `ClientBuilder::try_from(config)?.with_layer(&counter)`.
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
        self.counter.record(operation(req.method(), req.uri().path()));
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
