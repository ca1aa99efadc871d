//! The generic body heuristics and user rules under hostile input: no panic, invariants kept,
//! and cost linear in the body (checked by loose scaling, 64 KB against 1 MB, never by a
//! tight time limit).

use std::time::{Duration, Instant};

use chain_runtime::classify::{
    FailureClass, RequestKind, RuleSet, RuleSpec, classify, classify_with,
};
use http::HeaderMap;
use proptest::prelude::*;
use serde_json::{Value, json};

fn rules() -> RuleSet {
    RuleSet::from_json(
        r#"{"code_pointers":["/fault/kind","/errors/0/code"],"scope_pointers":["/fault/needs","/errors/0/scopes"],
            "codes":{"ACME_SCOPE":"insufficient_scope"},"reset_headers":["x-acme-reset"]}"#,
    )
    .unwrap()
}

/// Hostile bodies of about `len` bytes, each built to make a careless scan rescan.
fn hostile(len: usize) -> Vec<(&'static str, Vec<u8>)> {
    let rep = |unit: &str| unit.repeat(len / unit.len().max(1) + 1);
    let errors: Vec<Value> = (0..len / 64)
        .map(|i| json!({"code": "missing_scope", "scopes": [[format!("s{i}")]], "message": "expected any of: a"}))
        .collect();
    let keys: serde_json::Map<String, Value> = (0..len / 24)
        .map(|i| (format!("k{i}"), json!("scope")))
        .collect();
    vec![
        (
            "any-of repeated",
            format!("{{\"message\":\"{}\"}}", rep("scope expected any of: ")).into_bytes(),
        ),
        ("phrase prefixes", rep("missing scop").into_bytes()),
        ("text any-of", rep("scope any of:any of:").into_bytes()),
        (
            "many errors",
            json!({"errors": errors}).to_string().into_bytes(),
        ),
        (
            "wide error object",
            json!({"error": keys}).to_string().into_bytes(),
        ),
        (
            "long code",
            json!({"error": rep("a"), "required_scopes": rep("s ")})
                .to_string()
                .into_bytes(),
        ),
        (
            "deep nesting",
            format!("{}{}", "[".repeat(len / 2), "]".repeat(len / 2)).into_bytes(),
        ),
        (
            "nested scope lists",
            format!(
                "{{\"error\":\"insufficient_scope\",\"scopes\":{}\"a\"{}}}",
                "[".repeat(100),
                "]".repeat(100)
            )
            .into_bytes(),
        ),
    ]
}

fn run_all(bodies: &[(&str, Vec<u8>)], rules: &RuleSet) {
    for (_, body) in bodies {
        for status in [400, 401, 403] {
            for kind in [RequestKind::Api, RequestKind::TokenRefresh] {
                let c = classify_with("acme", Some(rules), kind, status, &HeaderMap::new(), body);
                assert!(c.needed_scopes.len() <= 64);
                let c = classify("example", kind, status, &HeaderMap::new(), body);
                assert!(c.needed_scopes.iter().all(|s| !s.is_empty()));
            }
        }
    }
}

fn best_of_three(f: impl Fn()) -> Duration {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap()
}

#[test]
fn hostile_bodies_cost_linear_time_up_to_a_megabyte() {
    let rules = rules();
    let small = hostile(64 * 1024);
    let large = hostile(1024 * 1024);
    run_all(&large, &rules); // warm-up and the no-panic check at full size
    let t_small = best_of_three(|| run_all(&small, &rules));
    let t_large = best_of_three(|| run_all(&large, &rules));
    // 16 times the input: a linear classifier takes about 16 times as long, a quadratic one
    // 256 times. The bound is four times the linear expectation plus two seconds of slack for
    // a loaded machine, far from both a tight timing and a quadratic cost.
    assert!(
        t_large <= t_small * 64 + Duration::from_secs(2),
        "1 MB took {t_large:?}, 64 KB took {t_small:?}"
    );
}

#[test]
fn rule_sets_are_validated_with_clear_errors() {
    let err = |spec: RuleSpec| RuleSet::new(spec).unwrap_err().to_string();
    let mut spec = RuleSpec::default();
    assert!(err(spec.clone()).contains("declares no codes"));
    spec.code_pointers = vec!["fault/kind".into()];
    spec.codes.insert("X".into(), FailureClass::Forbidden);
    assert!(
        err(spec.clone()).contains("must start with `/`"),
        "{}",
        err(spec.clone())
    );
    spec.code_pointers = vec!["".into()];
    assert!(err(spec.clone()).contains("whole body"));
    spec.code_pointers = vec!["/a~2".into()];
    assert!(err(spec.clone()).contains("`~`"));
    spec.code_pointers = vec!["/fault/kind".into()];
    spec.codes
        .insert("has space".into(), FailureClass::Forbidden);
    assert!(err(spec.clone()).contains("`has space` in `codes` is not shaped like an error code"));
    spec.codes.remove("has space");
    spec.codes.insert("FINE".into(), FailureClass::Ok);
    assert!(err(spec.clone()).contains("cannot mean Ok"));
    spec.codes.remove("FINE");
    spec.token_codes
        .insert("stale".into(), FailureClass::AccessTokenExpired);
    assert!(err(spec.clone()).contains("refresh cannot be fixed"));
    spec.token_codes.clear();
    spec.reset_headers = vec!["bad header".into()];
    assert!(err(spec.clone()).contains("not a valid header name"));
    spec.reset_headers = vec!["x-reset".into()];
    assert!(RuleSet::new(spec).is_ok());

    assert!(
        RuleSet::from_json("{\"codes\":{\"A\":\"nope\"}}")
            .unwrap_err()
            .to_string()
            .contains("JSON does not parse")
    );
    assert!(RuleSet::from_json("{\"unknown\":1}").is_err());
    let toml = RuleSet::from_toml(
        "code_pointers = [\"/fault/kind\"]\n[codes]\nACME_SCOPE = \"insufficient_scope\"\n",
    )
    .unwrap();
    assert_eq!(toml.spec().codes.len(), 1);
    assert!(
        RuleSet::from_toml("codes = 3")
            .unwrap_err()
            .to_string()
            .contains("TOML does not parse")
    );
    assert!(RuleSet::from_file("/nonexistent/rules.yaml").is_err());
}

fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("error".to_owned()),
        Just("code".to_owned()),
        Just("errors".to_owned()),
        Just("message".to_owned()),
        Just("scopes".to_owned()),
        Just("required_scope".to_owned()),
        Just("fault".to_owned()),
        Just("kind".to_owned()),
        Just("needs".to_owned()),
        "[a-z_]{1,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            Just("insufficient_scope".to_owned()),
            Just("MISSING_SCOPES".to_owned()),
            Just("ACME_SCOPE".to_owned()),
            Just("expected any of: a, b".to_owned()),
            Just("missing scope".to_owned()),
            ".{0,40}",
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Bodies shaped around the heuristics' keys: no panic, and a scope verdict only ever
    /// lists well-formed scopes; every other class lists none.
    #[test]
    fn heuristics_never_panic_and_keep_invariants(
        body in json_value(),
        status in prop_oneof![Just(400u16), Just(401u16), Just(403u16), Just(404u16), 400u16..500],
        with_rules in any::<bool>(),
    ) {
        let rules = rules();
        let bytes = body.to_string().into_bytes();
        let c = classify_with(
            "acme",
            with_rules.then_some(&rules),
            RequestKind::Api,
            status,
            &HeaderMap::new(),
            &bytes,
        );
        prop_assert!(c.needed_scopes.iter().all(|s| !s.is_empty() && !s.contains(char::is_whitespace)));
        if c.class != FailureClass::InsufficientScope {
            prop_assert!(c.needed_scopes.is_empty(), "{c:?}");
        }
        if status == 429 {
            prop_assert_eq!(c.class, FailureClass::RateLimited);
        }
    }
}
