//! Classification of SDK errors into relay's error kinds, in one place for
//! every AWS client.

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use relay_core::Error;

/// Error codes that mean "slow down".
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
];

/// Error codes that mean the thing asked for does not exist.
const NOT_FOUND: &[&str] = &[
    "ResourceNotFoundException",
    "RepositoryNotFoundException",
    "ImageNotFoundException",
    "NotFoundException",
    "NoSuchEntity",
    // ECS
    "ClusterNotFoundException",
    "ServiceNotFoundException",
    "TaskSetNotFoundException",
    // ELBv2
    "ListenerNotFound",
    "LoadBalancerNotFound",
    "TargetGroupNotFound",
    "RuleNotFound",
    // CloudWatch
    "ResourceNotFound",
];

/// Error codes that mean the caller may not do this.
const DENIED: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredTokenException",
    "SignatureDoesNotMatch",
];

/// Map an SDK error from `provider` doing `what` (`GetSecretValue prod/db`)
/// into relay's kinds. `what` must not hold secret values.
pub(crate) fn classify<E>(provider: &str, what: &str, err: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::TimeoutError(_) => Error::Timeout {
            what: format!("{provider} {what}"),
        },
        SdkError::DispatchFailure(d) => {
            // Connection refused, reset, DNS: the service may come back.
            let retryable = d.is_io() || d.is_timeout() || !d.is_user();
            let msg = format!("{what}: could not reach the service ({err})");
            Error::provider_caused(provider, retryable, msg, err)
        }
        SdkError::ResponseError(_) => Error::Unavailable {
            provider: provider.to_owned(),
            reason: format!("{what}: unreadable response"),
        },
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("");
            let message = service.err().message().unwrap_or("");
            let status = service.raw().status().as_u16();
            if THROTTLING.contains(&code) || status == 429 {
                Error::RateLimited {
                    provider: provider.to_owned(),
                }
            } else if NOT_FOUND.contains(&code) || status == 404 {
                Error::NotFound {
                    what: format!("{provider} {what}: {message}"),
                }
            } else if DENIED.contains(&code) || status == 403 {
                Error::PermissionDenied {
                    what: format!("{provider} {what}: {code}"),
                }
            } else if status >= 500 {
                Error::Unavailable {
                    provider: provider.to_owned(),
                    reason: format!("{what}: {code} {message}"),
                }
            } else {
                // Validation and every other client error: retrying the same
                // request cannot succeed.
                let msg = format!("{what}: {code} {message}");
                Error::provider_caused(provider, false, msg, err)
            }
        }
        _ => {
            let msg = format!("{what}: {err}");
            Error::provider_caused(provider, false, msg, err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    fn service(code: &str, status: u16) -> Error {
        let err = GetSecretValueError::generic(ErrorMetadata::builder().code(code).message("m").build());
        let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        classify("sm", "GetSecretValue x", SdkError::service_error(err, raw))
    }

    #[test]
    fn service_errors_map_to_kinds() {
        assert!(matches!(service("ThrottlingException", 400), Error::RateLimited { .. }));
        assert!(matches!(service("Whatever", 429), Error::RateLimited { .. }));
        for missing in [
            "ResourceNotFoundException",
            "ServiceNotFoundException",
            "TargetGroupNotFound",
        ] {
            assert!(matches!(service(missing, 400), Error::NotFound { .. }), "{missing}");
        }
        assert!(matches!(
            service("AccessDeniedException", 400),
            Error::PermissionDenied { .. }
        ));
        assert!(matches!(
            service("InternalServiceError", 500),
            Error::Unavailable { .. }
        ));
        let validation = service("ValidationException", 400);
        assert!(
            matches!(validation, Error::Provider { retryable: false, .. }),
            "{validation:?}"
        );
        // The SDK's own error is reachable through source(), code and all.
        let sdk = std::iter::successors(std::error::Error::source(&validation), |e| e.source())
            .find_map(|e| e.downcast_ref::<SdkError<GetSecretValueError, HttpResponse>>())
            .expect("the SDK error in the source chain");
        assert_eq!(
            sdk.as_service_error().and_then(|e| e.code()),
            Some("ValidationException")
        );
        for retryable in ["ThrottlingException", "InternalServiceError"] {
            let status = if retryable.starts_with("Internal") { 503 } else { 400 };
            assert!(service(retryable, status).is_retryable(), "{retryable}");
        }
        for terminal in [
            ("ResourceNotFoundException", 400),
            ("AccessDeniedException", 403),
            ("ValidationException", 400),
        ] {
            assert!(!service(terminal.0, terminal.1).is_retryable(), "{}", terminal.0);
        }
    }

    #[test]
    fn transport_errors_are_retryable() {
        let timeout: SdkError<GetSecretValueError, HttpResponse> = SdkError::timeout_error("slow");
        assert!(matches!(classify("sm", "x", timeout), Error::Timeout { .. }));
        let io = ConnectorError::io("connection refused".into());
        let dispatch: SdkError<GetSecretValueError, HttpResponse> = SdkError::dispatch_failure(io);
        assert!(classify("sm", "x", dispatch).is_retryable());
        let user = ConnectorError::user("bad endpoint".into());
        let dispatch: SdkError<GetSecretValueError, HttpResponse> = SdkError::dispatch_failure(user);
        assert!(!classify("sm", "x", dispatch).is_retryable());
    }
}
