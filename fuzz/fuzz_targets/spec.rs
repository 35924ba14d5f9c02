//! Spec and pipeline files, YAML and TOML: any input is parsed or refused
//! with an error; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_strategies::spec::{PipelineFile, SpecFile};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = SpecFile::from_yaml(text);
    let _ = SpecFile::from_toml(text);
    let _ = PipelineFile::from_yaml(text);
    let _ = PipelineFile::from_toml(text);
});
