//! Emulator configuration and fixtures shared by the AWS tests.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use relay::providers::aws::sdk::config::{
    retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Region, SdkConfig,
};
use relay::providers::aws::sdk::{ecr, secretsmanager};
use relay::Digest;

pub const PLANTED: &str = "moto-planted-secret-3c9e1";

pub fn endpoint() -> String {
    std::env::var("RELAY_TEST_MOTO_ENDPOINT")
        .expect("RELAY_TEST_MOTO_ENDPOINT is not set: run the suite with scripts/test.sh, which installs and starts a moto server")
}

/// Test credentials for `endpoint`, one attempt and an operation timeout, so
/// an emulator error is reported rather than retried into duplicates.
pub async fn config_for(endpoint: &str) -> SdkConfig {
    relay::providers::aws::sdk::config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(secretsmanager::config::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "relay-tests",
        ))
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(10))
                .build(),
        )
        .load()
        .await
}

pub async fn config() -> SdkConfig {
    config_for(&endpoint()).await
}

/// Names unique to this test process, so runs against one server don't collide.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub async fn push_image(cfg: &SdkConfig, repo: &str, tag: &str, manifest: &str) -> Digest {
    let client = ecr::Client::new(cfg);
    let _ = client.create_repository().repository_name(repo).send().await;
    let out = client
        .put_image()
        .repository_name(repo)
        .image_tag(tag)
        .image_manifest(manifest)
        .send()
        .await
        .unwrap();
    out.image()
        .unwrap()
        .image_id()
        .unwrap()
        .image_digest()
        .unwrap()
        .parse()
        .unwrap()
}

pub const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":7023,"digest":"sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7"},"layers":[]}"#;

/// Image manifest number `n`: moto derives an image's digest from its layer
/// digests, so each `n` has one layer of its own.
pub fn manifest(n: u32) -> String {
    MANIFEST.replace(
        "\"layers\":[]",
        &format!(
            "\"layers\":[{{\"mediaType\":\"application/vnd.docker.image.rootfs.diff.tar.gzip\",\"size\":1,\"digest\":\"sha256:{n:064x}\"}}]"
        ),
    )
}

/// One EC2 query-protocol call, sent by hand: the tests need two read-only
/// EC2 answers (the default VPC's subnets and security group), and building
/// the EC2 SDK for them would double the `aws` test build. moto reads the
/// service and region from the credential scope and checks no signature.
fn ec2_query(params: &str) -> String {
    use std::io::{Read, Write};
    let endpoint = endpoint();
    let host = endpoint.trim_start_matches("http://");
    let body = format!("{params}&Version=2016-11-15");
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "EC2 {params}: {response}");
    response
}

/// Every `<tag>value</tag>` in an XML answer.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|s| s.split_once(&close).map(|(v, _)| v.to_owned()))
        .collect()
}

/// The default VPC, its subnets and its default security group.
pub struct DefaultVpc {
    pub vpc: String,
    pub subnets: Vec<String>,
    pub security_group: String,
}

pub fn default_vpc() -> DefaultVpc {
    let subnets_xml = ec2_query("Action=DescribeSubnets&Filter.1.Name=default-for-az&Filter.1.Value.1=true");
    let subnets = xml_values(&subnets_xml, "subnetId");
    let vpc = xml_values(&subnets_xml, "vpcId").into_iter().next().unwrap();
    let groups = ec2_query(&format!(
        "Action=DescribeSecurityGroups&Filter.1.Name=group-name&Filter.1.Value.1=default&Filter.2.Name=vpc-id&Filter.2.Value.1={vpc}"
    ));
    let security_group = xml_values(&groups, "groupId").into_iter().next().unwrap();
    assert!(
        subnets.len() >= 2,
        "moto's default VPC has a subnet per zone: {subnets:?}"
    );
    DefaultVpc {
        vpc,
        subnets,
        security_group,
    }
}
