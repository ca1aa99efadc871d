//! Runs every fixture file under `tests/fixtures/classify/` through the classifier with the
//! public fixture harness ([`chain_runtime::classify::fixtures`]): the provider-table rows
//! converted to data (`table-*.json`), the generic body heuristics (`heuristics.json`) and a
//! provider described only by rules (`rules-acme.json`).

use std::path::PathBuf;

use chain_runtime::classify::fixtures::{assert_file, check_text};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/classify")
}

#[test]
fn every_fixture_file_passes() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "fixture files missing: {files:?}");
    let mut total = 0;
    for file in &files {
        total += assert_file(file);
    }
    assert!(total >= 75, "only {total} fixtures ran");
}

/// The harness itself can fail: a wrong expectation is reported with the case's name.
#[test]
fn a_wrong_expectation_is_reported() {
    let text = r#"{"provider":"example","cases":[
        {"name":"bare 401","status":401,"expect":{"class":"forbidden"}},
        {"name":"bare 403","status":403,"expect":{"class":"forbidden","code":null}}
    ]}"#;
    let (count, mismatches) = check_text(text).unwrap();
    assert_eq!(count, 2);
    assert_eq!(mismatches.len(), 1, "{mismatches:?}");
    assert!(mismatches[0].starts_with("bare 401: class"));
}

#[test]
fn malformed_fixture_files_are_refused() {
    assert!(check_text("{}").is_err());
    assert!(
        check_text(
            r#"{"provider":"x","cases":[{"name":"a","status":200,"expect":{"class":"nope"}}]}"#
        )
        .is_err()
    );
    let dup = r#"{"provider":"x","cases":[
        {"name":"a","status":200,"expect":{"class":"ok"}},
        {"name":"a","status":200,"expect":{"class":"ok"}}]}"#;
    assert!(check_text(dup).is_err());
    let bad_rules = r#"{"provider":"x","rules":{"codes":{"has space":"forbidden"}},"cases":[]}"#;
    assert!(check_text(bad_rules).is_err());
}
