//! Golden files: text a test renders, compared with the file checked in
//! under `tests/fixtures/`. `RELAY_UPDATE_GOLDEN=1` writes the file
//! instead (then read the diff before committing it).

#![allow(dead_code)]

/// Compare `text` with `tests/fixtures/<path>`.
pub fn golden(path: &str, text: &str) {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path);
    if std::env::var_os("RELAY_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(file.parent().expect("a fixture has a directory")).expect("fixture directory");
        std::fs::write(&file, text).expect("golden file written");
    }
    let want = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e} (RELAY_UPDATE_GOLDEN=1 writes it)", file.display()));
    assert!(
        text == want,
        "{} differs from what the test rendered (RELAY_UPDATE_GOLDEN=1 rewrites it):\n{text}",
        file.display()
    );
}
