//! Classification of Kubernetes API errors into relay's error kinds.

use relay_core::Error;

const PROVIDER: &str = "kubernetes";

/// Map an error from `what` (`get Secret shop/db`) into relay's kinds: 404
/// not found; 401/403 permission denied; 409 conflict; 400/422 invalid
/// (terminal); 429 rate limited; 5xx, timeouts and connection failures
/// retryable. `what` must not hold secret values.
pub(crate) fn classify(what: &str, err: kube::Error) -> Error {
    match err {
        kube::Error::Api(status) => match status.code {
            404 => Error::NotFound {
                what: format!("{what}: {}", status.message),
            },
            401 | 403 => Error::PermissionDenied {
                what: format!("{what}: {}", status.message),
            },
            409 => Error::Conflict {
                what: format!("{what}: {}", status.message),
            },
            429 => Error::RateLimited {
                provider: PROVIDER.to_owned(),
            },
            code if code >= 500 => Error::Unavailable {
                provider: PROVIDER.to_owned(),
                reason: format!("{what}: {code} {}", status.message),
            },
            code => {
                let msg = format!("{what}: {code} {} {}", status.reason, status.message);
                Error::provider_caused(PROVIDER, false, msg, kube::Error::Api(status))
            }
        },
        // The connection failed or timed out: the server may come back.
        e @ (kube::Error::HyperError(_) | kube::Error::Service(_)) => {
            let msg = format!("{what}: {e}");
            Error::provider_caused(PROVIDER, true, msg, e)
        }
        other => {
            let msg = format!("{what}: {other}");
            Error::provider_caused(PROVIDER, false, msg, other)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api(code: u16) -> Error {
        let status = Status::failure("m", "Reason").with_code(code);
        classify("get Secret ns/x", kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn status_codes_map_to_kinds() {
        assert!(matches!(api(404), Error::NotFound { .. }));
        assert!(matches!(api(403), Error::PermissionDenied { .. }));
        assert!(matches!(api(409), Error::Conflict { .. }));
        assert!(matches!(api(429), Error::RateLimited { .. }));
        assert!(matches!(api(503), Error::Unavailable { .. }));
        for retryable in [429, 500, 503] {
            assert!(api(retryable).is_retryable(), "{retryable}");
        }
        for terminal in [400, 403, 404, 409, 422] {
            assert!(!api(terminal).is_retryable(), "{terminal}");
        }
        // The client's own error is reachable through source().
        let invalid = api(422);
        let status = std::iter::successors(std::error::Error::source(&invalid), |e| e.source())
            .find_map(|e| e.downcast_ref::<kube::Error>())
            .expect("the kube error in the source chain");
        assert!(matches!(status, kube::Error::Api(s) if s.code == 422), "{status:?}");
    }
}
