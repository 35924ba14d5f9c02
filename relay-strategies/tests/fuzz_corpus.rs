//! The fuzzers' committed corpora (`fuzz/corpus/`), run through the parsers
//! in the normal test suite: every input is parsed or refused with an
//! error, never a panic, and references that parse print back to the same
//! value. The corpora hold the inputs that reached new code while fuzzing,
//! so this keeps what the fuzzer explored from regressing.

#![cfg(feature = "spec")]
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use relay_core::{ArtifactRef, Digest, SecretRef};
use relay_strategies::spec::{parse_duration, PipelineFile, SpecFile};

fn corpus(name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(name);
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    assert!(files.len() > 10, "{}: {} files", dir.display(), files.len());
    files
}

#[test]
fn spec_corpus_parses_or_fails_cleanly() {
    let mut parsed = 0;
    for (_, bytes) in corpus("spec") {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        parsed += usize::from(SpecFile::from_yaml(text).is_ok());
        parsed += usize::from(SpecFile::from_toml(text).is_ok());
        parsed += usize::from(PipelineFile::from_yaml(text).is_ok());
        parsed += usize::from(PipelineFile::from_toml(text).is_ok());
    }
    assert!(parsed > 0, "the seeds include valid specs");
}

#[test]
fn reference_corpus_round_trips() {
    for (path, bytes) in corpus("references") {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        if let Ok(r) = text.parse::<SecretRef>() {
            assert_eq!(r.to_string().parse::<SecretRef>().unwrap(), r, "{}", path.display());
        }
        if let Ok(a) = text.parse::<ArtifactRef>() {
            assert_eq!(a.to_string().parse::<ArtifactRef>().unwrap(), a, "{}", path.display());
        }
        let _ = Digest::parse_at("fuzz", text);
        let _ = parse_duration(text);
    }
}
