//! The PostgreSQL URL the database examples (`fleet`, `migration`) take:
//! their first argument, or `RELAY_POSTGRES_URL`.

use secrecy::SecretString;

/// Where the URL may come from instead of the command line.
pub const URL_VAR: &str = "RELAY_POSTGRES_URL";

/// The URL, kept secret (it may hold a password); `example` names the
/// program in the usage message.
pub fn from_args(example: &str) -> Result<SecretString, String> {
    std::env::args()
        .nth(1)
        .or_else(|| std::env::var(URL_VAR).ok())
        .map(SecretString::from)
        .ok_or_else(|| format!("usage: {example} <postgres URL> (or set {URL_VAR})"))
}
