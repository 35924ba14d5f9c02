//! Secret references, artifact references, digests and durations: any
//! input is parsed or refused with an error; what parses prints back to
//! something that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_core::{ArtifactRef, Digest, SecretRef};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = text.parse::<SecretRef>() {
        let again: SecretRef = r.to_string().parse().expect("a printed secret reference parses");
        assert_eq!(again, r);
    }
    if let Ok(a) = text.parse::<ArtifactRef>() {
        let again: ArtifactRef = a.to_string().parse().expect("a printed artifact reference parses");
        assert_eq!(again, a);
    }
    let _ = Digest::parse_at("fuzz", text);
    let _ = relay_strategies::spec::parse_duration(text);
});
