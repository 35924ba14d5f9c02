//! Counting the API requests the AWS providers send.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// A [`crate::RequestCounter`] is an SDK interceptor counting the requests
/// each AWS client sends by `Service.Operation` (retries count: it sees
/// every attempt on the wire).
///
/// Clones share the counts, so one counter can watch every client of a
/// process. Attach it with the client's config builder:
///
/// ```
/// # mod relay { pub use relay_core::*; pub mod providers { pub use relay_providers::*; } }
/// # async fn f(sdk: &relay_providers::aws::sdk::config::SdkConfig) {
/// use relay::providers::{aws::sdk::ecs, RequestCounter};
/// let calls = RequestCounter::default();
/// let ecs = ecs::Client::from_conf(
///     ecs::config::Builder::from(sdk).interceptor(calls.clone()).build(),
/// );
/// # }
/// ```
impl Intercept for crate::RequestCounter {
    fn name(&self) -> &'static str {
        "relay.RequestCounter"
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
        self.record(name);
        Ok(())
    }
}
