//! Vault and OpenBao (feature `vault`): [`VaultKvStore`], secrets from a
//! KV version 2 engine, with token or AppRole authentication.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use relay_core::{Error, Result, SecretRef, SecretStore, SecretValue};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use tokio::time::Instant;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

const PROVIDER: &str = "vault";

/// The client crate this provider is built on, at the version it uses.
pub mod sdk {
    pub use vaultrs;
}

/// How a [`VaultKvStore`] authenticates.
enum Auth {
    /// A token given by the application (renewed before expiry when it is
    /// renewable; relay cannot log in again with it).
    Token(SecretString),
    /// AppRole login; the token it yields is renewed before expiry, and a new
    /// login replaces it when it has expired or been revoked.
    AppRole {
        mount: String,
        role_id: String,
        secret_id: SecretString,
    },
}

/// The client and what relay knows of its token's lifetime.
struct Session {
    client: VaultClient,
    /// When to renew or log in again: two thirds into the token's TTL.
    refresh_at: Option<Instant>,
    renewable: bool,
    /// Whether the token came from a login relay can repeat.
    fresh: bool,
}

/// A version of a secret as the KV engine keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionState {
    /// Readable.
    Live,
    /// Soft-deleted: `undelete` can bring it back.
    Deleted,
    /// Destroyed: its data is gone for good.
    Destroyed,
}

/// The metadata of a KV v2 secret: its current version and what became of
/// every version the engine still tracks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvMetadata {
    /// The newest version.
    pub current_version: u64,
    /// Every tracked version and its state.
    pub versions: BTreeMap<u64, VersionState>,
}

/// Reads one key of a KV version 2 secret for references like
/// `vault://secret/app/db#password?version=3` (mount `secret`, path
/// `app/db`, key `password`); register it under the `vault` scheme.
///
/// - The version is the KV version number. Without one, the store reads the
///   metadata and then exactly the current version, and reports which, so
///   the engine pins it: a rollback re-reads the same version.
/// - A version that was soft-deleted or destroyed is [`Error::NotFound`]
///   saying which; a version the engine no longer tracks likewise.
/// - A 403 is [`Error::PermissionDenied`] naming the path (never the token);
///   with AppRole, a 403 first triggers one new login, for a token that
///   expired or was revoked.
/// - 429, 5xx (a sealed server answers 503) and connection failures are
///   retryable; the rest is terminal.
///
/// `Debug` shows the address and the auth method: no token, no secret id.
pub struct VaultKvStore {
    address: String,
    auth: Auth,
    timeout: Duration,
    session: Mutex<Option<Session>>,
}

impl fmt::Debug for VaultKvStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.auth {
            Auth::Token(_) => "token".to_owned(),
            Auth::AppRole { mount, .. } => format!("approle ({mount})"),
        };
        f.debug_struct("VaultKvStore")
            .field("address", &self.address)
            .field("auth", &auth)
            .finish()
    }
}

/// Settings for a [`VaultKvStore`].
#[must_use]
pub struct VaultKvStoreBuilder {
    address: String,
    auth: Option<Auth>,
    timeout: Duration,
}

impl fmt::Debug for VaultKvStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultKvStoreBuilder")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl VaultKvStoreBuilder {
    /// Authenticate with `token`.
    pub fn token(mut self, token: SecretString) -> Self {
        self.auth = Some(Auth::Token(token));
        self
    }

    /// Log in with AppRole at auth mount `mount` (usually `approle`).
    pub fn approle(mut self, mount: impl Into<String>, role_id: impl Into<String>, secret_id: SecretString) -> Self {
        self.auth = Some(Auth::AppRole {
            mount: mount.into(),
            role_id: role_id.into(),
            secret_id,
        });
        self
    }

    /// Give up on a request after `timeout` (default 30 s); a timeout is
    /// retryable.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Check the settings. No request is sent until the first read.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `vault.address`, `vault.auth` or
    /// `vault.timeout`.
    pub fn build(self) -> Result<VaultKvStore> {
        if !(self.address.starts_with("http://") || self.address.starts_with("https://")) {
            return Err(Error::invalid(
                "vault.address",
                format!("{:?} must be an http:// or https:// URL", self.address),
            ));
        }
        if self.timeout.is_zero() {
            return Err(Error::invalid("vault.timeout", "must be above zero"));
        }
        let auth = self
            .auth
            .ok_or_else(|| Error::invalid("vault.auth", "set .token(..) or .approle(..)"))?;
        if let Auth::AppRole { mount, role_id, .. } = &auth {
            if mount.is_empty() || role_id.is_empty() {
                return Err(Error::invalid(
                    "vault.auth",
                    "the AppRole mount and role id must not be empty",
                ));
            }
        }
        Ok(VaultKvStore {
            address: self.address,
            auth,
            timeout: self.timeout,
            session: Mutex::new(None),
        })
    }
}

type Call<'a, T> = Pin<Box<dyn Future<Output = std::result::Result<T, ClientError>> + Send + 'a>>;

/// Map a client error for `what` (a path, never a token or value). The
/// client's error is not kept as the `source()`, unlike the AWS,
/// Kubernetes and HTTP providers': one that failed to parse a response
/// carries the response body — a secret read's body is the secret.
fn classify(what: &str, e: ClientError) -> Error {
    match e {
        ClientError::APIError {
            code: code @ (401 | 403),
            ..
        } => Error::PermissionDenied {
            what: format!("{what} (Vault answered {code})"),
        },
        ClientError::APIError { code: 404, .. } => Error::NotFound { what: what.to_owned() },
        ClientError::APIError { code: 429, .. } => Error::RateLimited {
            provider: PROVIDER.to_owned(),
        },
        ClientError::APIError { code, errors } if code >= 500 => Error::Unavailable {
            provider: PROVIDER.to_owned(),
            reason: format!("{what}: {code} {}", errors.join("; ")),
        },
        ClientError::APIError { code, errors } => {
            Error::provider(PROVIDER, false, format!("{what}: {code} {}", errors.join("; ")))
        }
        // The request did not complete: refused, reset, timed out.
        ClientError::RestClientError { source } => Error::provider(PROVIDER, true, format!("{what}: {source}")),
        other => Error::provider(PROVIDER, false, format!("{what}: {other}")),
    }
}

/// `vault://<mount>/<path>#<key>[?version=N]` → (mount, path, key, version).
fn parse(reference: &SecretRef) -> Result<(&str, &str, &str, Option<u64>)> {
    let bad = |why: &str| Error::invalid("release.secrets", format!("{reference}: {why}"));
    let (mount, path) = reference
        .path
        .split_once('/')
        .filter(|(m, p)| !m.is_empty() && !p.is_empty())
        .ok_or_else(|| bad("the path must be <mount>/<secret path>, like vault://secret/app/db#password"))?;
    let key = reference
        .key
        .as_deref()
        .ok_or_else(|| bad("name the key of the secret to read with #<key>"))?;
    let version = match reference.version() {
        None => None,
        Some(v) => Some(
            v.parse::<u64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| bad("the version must be a KV version number (1, 2, ...)"))?,
        ),
    };
    Ok((mount, path, key, version))
}

fn state_of(v: &vaultrs::api::kv2::responses::SecretMetadata) -> VersionState {
    if v.destroyed {
        VersionState::Destroyed
    } else if !v.deletion_time.is_empty() {
        VersionState::Deleted
    } else {
        VersionState::Live
    }
}

impl VaultKvStore {
    /// Start building a store for the server at `address`
    /// (`https://vault.internal:8200`).
    pub fn builder(address: impl Into<String>) -> VaultKvStoreBuilder {
        VaultKvStoreBuilder {
            address: address.into(),
            auth: None,
            timeout: Duration::from_secs(30),
        }
    }

    fn client(&self, token: &str) -> Result<VaultClient> {
        let settings = VaultClientSettingsBuilder::default()
            .address(&self.address)
            .token(token)
            .timeout(Some(self.timeout))
            .build()
            .map_err(|e| Error::invalid("vault.address", e.to_string()))?;
        VaultClient::new(settings).map_err(|e| classify("Vault client", e))
    }

    /// A session with a token: the given one, or a new AppRole login.
    async fn open(&self) -> Result<Session> {
        match &self.auth {
            Auth::Token(token) => {
                let client = self.client(token.expose_secret())?;
                // The token's own lifetime decides whether to renew it.
                let (refresh_at, renewable) = match vaultrs::token::lookup_self(&client).await {
                    Ok(info) if info.ttl > 0 => (
                        Some(Instant::now() + Duration::from_secs(info.ttl * 2 / 3)),
                        info.renewable.unwrap_or(false),
                    ),
                    Ok(_) => (None, false),
                    Err(e) => return Err(classify("look up the Vault token", e)),
                };
                Ok(Session {
                    client,
                    refresh_at,
                    renewable,
                    fresh: false,
                })
            }
            Auth::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                let anonymous = self.client("")?;
                let auth = vaultrs::auth::approle::login(&anonymous, mount, role_id, secret_id.expose_secret())
                    .await
                    .map_err(|e| classify(&format!("AppRole login at auth/{mount}"), e))?;
                tracing::debug!(lease_s = auth.lease_duration, "logged in to Vault with AppRole");
                let client = self.client(&auth.client_token)?;
                Ok(Session {
                    client,
                    refresh_at: (auth.lease_duration > 0)
                        .then(|| Instant::now() + Duration::from_secs(auth.lease_duration * 2 / 3)),
                    renewable: auth.renewable,
                    fresh: true,
                })
            }
        }
    }

    /// Renew the session's token when two thirds of its TTL have passed; log
    /// in again when renewal fails and the store can.
    async fn refresh(&self, session: &mut Session) -> Result<()> {
        let Some(at) = session.refresh_at else { return Ok(()) };
        if Instant::now() < at {
            return Ok(());
        }
        if session.renewable {
            match vaultrs::token::renew_self(&session.client, None).await {
                Ok(auth) => {
                    tracing::debug!(lease_s = auth.lease_duration, "renewed the Vault token");
                    session.refresh_at = (auth.lease_duration > 0)
                        .then(|| Instant::now() + Duration::from_secs(auth.lease_duration * 2 / 3));
                    return Ok(());
                }
                Err(e) => tracing::warn!(error = %classify("renew the Vault token", e), "token renewal failed"),
            }
        }
        if let Auth::AppRole { .. } = self.auth {
            *session = self.open().await?;
        } else {
            // Nothing else to do with a given token: it runs until it expires.
            session.refresh_at = None;
        }
        Ok(())
    }

    /// Run `op` with a fresh token; with AppRole, a 403 is retried once
    /// after a new login (the token may have expired or been revoked).
    async fn call<T>(&self, what: &str, op: impl for<'a> Fn(&'a VaultClient) -> Call<'a, T>) -> Result<T> {
        let mut guard = self.session.lock().await;
        let session = match guard.as_mut() {
            Some(s) => s,
            None => guard.insert(self.open().await?),
        };
        self.refresh(session).await?;
        match op(&session.client).await {
            Err(ClientError::APIError { code: 403, .. })
                if matches!(self.auth, Auth::AppRole { .. }) && !session.fresh =>
            {
                tracing::debug!("Vault refused the token; logging in again");
                *session = self.open().await?;
                op(&session.client).await.map_err(|e| classify(what, e))
            }
            Ok(v) => {
                session.fresh = false;
                Ok(v)
            }
            Err(e) => Err(classify(what, e)),
        }
    }

    /// The metadata of the secret at `<mount>/<path>`.
    ///
    /// # Errors
    /// [`Error::NotFound`] for a path without a secret; see the type.
    pub async fn metadata(&self, mount: &str, path: &str) -> Result<KvMetadata> {
        let what = format!("Vault secret {mount}/{path}");
        let m = self
            .call(&what, |c| {
                let (mount, path) = (mount.to_owned(), path.to_owned());
                Box::pin(async move { vaultrs::kv2::read_metadata(c, &mount, &path).await })
            })
            .await?;
        let versions = m
            .versions
            .iter()
            .filter_map(|(v, meta)| Some((v.parse::<u64>().ok()?, state_of(meta))))
            .collect();
        Ok(KvMetadata {
            current_version: m.current_version,
            versions,
        })
    }

    /// Write `data` as a new version of `<mount>/<path>`; with `cas`, only
    /// if the current version is `cas` (0: only if the secret does not
    /// exist). Returns the new version.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the check-and-set version does not match.
    pub async fn write(
        &self,
        mount: &str,
        path: &str,
        data: &BTreeMap<String, SecretString>,
        cas: Option<u64>,
    ) -> Result<u64> {
        let what = format!("Vault secret {mount}/{path}");
        let cas = cas
            .map(|v| {
                u32::try_from(v).map_err(|_| Error::invalid("vault.cas", format!("{v} is above the KV engine's limit")))
            })
            .transpose()?;
        let result = self
            .call(&what, |c| {
                let (mount, path) = (mount.to_owned(), path.to_owned());
                let plain: BTreeMap<String, String> = data
                    .iter()
                    .map(|(k, v)| (k.clone(), v.expose_secret().to_owned()))
                    .collect();
                Box::pin(async move {
                    match cas {
                        Some(cas) => {
                            let options = vaultrs::api::kv2::requests::SetSecretRequestOptions { cas };
                            vaultrs::kv2::set_with_options(c, &mount, &path, &plain, options).await
                        }
                        None => vaultrs::kv2::set(c, &mount, &path, &plain).await,
                    }
                })
            })
            .await;
        match result {
            Ok(meta) => Ok(meta.version),
            Err(Error::Provider { source, .. }) if cas.is_some() && source.to_string().contains("check-and-set") => {
                Err(Error::Conflict {
                    what: format!("{what}: its current version is not {}", cas.unwrap_or(0)),
                })
            }
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl SecretStore for VaultKvStore {
    #[tracing::instrument(skip_all, fields(secret = %reference.path))]
    async fn fetch(&self, reference: &SecretRef) -> Result<SecretValue> {
        let (mount, path, key, pinned) = parse(reference)?;
        let meta = self.metadata(mount, path).await?;
        let version = pinned.unwrap_or(meta.current_version);
        let what = format!("Vault secret {mount}/{path} version {version}");
        match meta.versions.get(&version) {
            Some(VersionState::Live) => {}
            Some(VersionState::Deleted) => {
                return Err(Error::NotFound {
                    what: format!("{what}: it was deleted (undelete it or plan again)"),
                })
            }
            Some(VersionState::Destroyed) => {
                return Err(Error::NotFound {
                    what: format!("{what}: it was destroyed (plan again to take a live version)"),
                })
            }
            None => {
                return Err(Error::NotFound {
                    what: format!("{what}: no such version (current is {})", meta.current_version),
                })
            }
        }
        let data: BTreeMap<String, serde_json::Value> = self
            .call(&what, |c| {
                let (mount, path) = (mount.to_owned(), path.to_owned());
                Box::pin(async move { vaultrs::kv2::read_version(c, &mount, &path, version).await })
            })
            .await?;
        let value = match data.get(key) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(Error::invalid(
                    "release.secrets",
                    format!("{reference}: the value of {key:?} is not a string"),
                ))
            }
            None => {
                return Err(Error::NotFound {
                    what: format!("key {key:?} in {what}"),
                })
            }
        };
        Ok(SecretValue::new(SecretString::from(value), version.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_mount_path_key_and_version() {
        let r: SecretRef = "vault://secret/app/db#password?version=3".parse().unwrap();
        assert_eq!(parse(&r).unwrap(), ("secret", "app/db", "password", Some(3)));
        let r: SecretRef = "vault://kv/db#user".parse().unwrap();
        assert_eq!(parse(&r).unwrap(), ("kv", "db", "user", None));
        for (bad, says) in [
            ("vault://secret#k", "<mount>/<secret path>"),
            ("vault://secret/#k", "<mount>/<secret path>"),
            ("vault://secret/db", "#<key>"),
            ("vault://secret/db#k?version=0", "version"),
            ("vault://secret/db#k?version=latest", "version"),
        ] {
            let e = parse(&bad.parse().unwrap()).unwrap_err().to_string();
            assert!(e.contains("release.secrets") && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn status_codes_map_to_kinds() {
        let api = |code| classify("Vault secret secret/db", ClientError::APIError { code, errors: vec![] });
        assert!(matches!(api(403), Error::PermissionDenied { what } if what.contains("secret/db")));
        assert!(matches!(api(404), Error::NotFound { .. }));
        assert!(api(429).is_retryable() && api(503).is_retryable());
        assert!(!api(400).is_retryable() && !api(403).is_retryable());
    }

    #[test]
    fn settings_are_checked_and_debug_shows_no_credential() {
        let e = VaultKvStore::builder("vault:8200")
            .token("t".to_owned().into())
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("vault.address"));
        let e = VaultKvStore::builder("http://127.0.0.1:1").build().unwrap_err();
        assert!(e.to_string().contains("vault.auth"));
        let s = VaultKvStore::builder("http://127.0.0.1:1")
            .approle("approle", "role-1", "secret-id-77".to_owned().into())
            .build()
            .unwrap();
        let debug = format!("{s:?}");
        assert!(debug.contains("approle") && !debug.contains("secret-id-77"), "{debug}");
    }
}
