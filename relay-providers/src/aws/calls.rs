//! Counting the API requests the AWS providers send.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// An SDK interceptor that counts the requests each client sends, by
/// `Service.Operation` (retries count: it sees every attempt on the wire).
///
/// Clones share the counts, so one counter can watch every client of a
/// process. Attach it with the client's config builder:
///
/// ```
/// # async fn f(sdk: &relay_providers::aws::sdk::config::SdkConfig) {
/// use relay_providers::aws::{sdk::ecs, ApiCallCounter};
/// let calls = ApiCallCounter::default();
/// let ecs = ecs::Client::from_conf(
///     ecs::config::Builder::from(sdk).interceptor(calls.clone()).build(),
/// );
/// # }
/// ```
#[derive(Clone, Default)]
pub struct ApiCallCounter {
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl ApiCallCounter {
    /// Requests sent so far, by `Service.Operation`.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// All requests sent so far.
    pub fn total(&self) -> u64 {
        self.counts().values().sum()
    }

    /// Forget the counts.
    pub fn reset(&self) {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl fmt::Debug for ApiCallCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiCallCounter")
            .field("counts", &self.counts())
            .finish()
    }
}

impl Intercept for ApiCallCounter {
    fn name(&self) -> &'static str {
        "relay.ApiCallCounter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let name = cfg
            .load::<Metadata>()
            .map_or_else(|| "unknown".to_owned(), |m| format!("{}.{}", m.service(), m.name()));
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name)
            .or_default() += 1;
        Ok(())
    }
}
