use super::*;
use crate::audit::canonical::to_canonical;
use crate::audit::record::{
    AlertSeverity, AuditEvent, ConnectorScopes, Effect, PreflightSummary, RecordRef,
};

/// One event of every variant, with unusual values where a type allows them.
fn samples() -> Vec<AuditEvent> {
    let s = |t: &str| t.to_owned();
    vec![
        AuditEvent::RunStarted {
            chain: s("c\"\n"),
            chain_version: s("v1"),
            preflight: PreflightSummary {
                passed: false,
                missing: vec![ConnectorScopes {
                    connector: s("crm"),
                    scopes: vec![s("a"), s("b\u{1}")],
                }],
                unused: vec![],
            },
        },
        AuditEvent::PreflightRefused {
            chain: s("c"),
            missing_scopes: vec![],
            connected: true,
        },
        AuditEvent::StepAttempt {
            step: s("s"),
            attempt: u32::MAX,
            effect: Effect::Read,
            idempotency_key: Some(s("k")),
        },
        AuditEvent::HttpAttempt {
            step: s("s"),
            http_attempt: 0,
            method: s("GET"),
            status: u16::MAX,
            failure_class: None,
            wait_ms: Some(u64::from(u32::MAX) * 1000),
        },
        AuditEvent::StepOutcome {
            step: s("é\u{2028}"),
            attempt: 1,
            effect: Effect::Write,
            failure_class: Some(s("auth")),
            detail: None,
        },
        AuditEvent::CompensationAttempt {
            compensator: s("undo"),
            compensates_step_id: s("c/s#1"),
            attempt: 2,
        },
        AuditEvent::CompensationOutcome {
            compensator: s("undo"),
            compensates_step_id: s("c/s#1"),
            attempt: 2,
            failure_class: None,
            detail: Some(s("x\\y")),
        },
        AuditEvent::Suspended {
            reason: s("r"),
            failure_class: None,
            missing_scopes: vec![s("a")],
        },
        AuditEvent::Resumed { reason: s("r") },
        AuditEvent::Handoff {
            child_run_id: s("r2"),
            child_principal: s("bob"),
            child_chain: s("c2"),
            reason: s("co-approval"),
        },
        AuditEvent::ConsentCompleted {
            requested_scopes: vec![s("a"), s("b")],
            reconsent: false,
        },
        AuditEvent::TokenRefresh {
            failure_class: None,
            expires_at_unix_ms: Some(-5),
            http_status: None,
            error_code: None,
        },
        AuditEvent::TokenRefresh {
            failure_class: Some(s("auth")),
            expires_at_unix_ms: None,
            http_status: Some(400),
            error_code: Some(s("invalid_grant")),
        },
        AuditEvent::ConsentFailed {
            reason: s("unknown_state"),
            error_code: None,
        },
        AuditEvent::AccountRemoved {
            reason: s("forgotten"),
        },
        AuditEvent::OperatorAlert {
            severity: AlertSeverity::Critical,
            message: s("m"),
        },
        AuditEvent::ApprovalRequested {
            step: s("s"),
            approval_id: s("a1"),
            reason: s("r"),
            arguments_digest: s("d"),
            expires_at_unix_ms: 1_700_000_000_000,
        },
        AuditEvent::ApprovalDecided {
            step: s("s"),
            approval_id: s("a1"),
            decision: s("approved"),
            decided_by: s("carol"),
        },
        AuditEvent::RunFinished {
            state: s("completed"),
        },
    ]
}

#[test]
fn short_byte_comparisons_compare_every_byte() {
    for len in 0..40usize {
        let a: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        assert!(same_bytes(&a, &a));
        assert!(!same_bytes(&a, &a[..len.saturating_sub(1)]) || len == 0);
        for at in 0..len {
            let mut b = a.clone();
            b[at] ^= 0x20;
            assert!(!same_bytes(&a, &b), "{len} {at}");
            let mut pos = 0;
            assert!(!expect(&a, &mut pos, &b));
            assert_eq!(pos, 0);
        }
        let mut pos = 0;
        assert!(expect(&a, &mut pos, &a));
        assert_eq!(pos, len);
        // Past the end: not there.
        assert!(!expect(&a, &mut pos, b"x"));
        assert!(!expect(&a[..len / 2], &mut 0, &a) || len < 2);
    }
}

#[test]
fn every_event_variant_is_listed_with_its_members_sorted() {
    let samples = samples();
    for (name, fields) in EVENTS {
        assert!(
            samples.iter().any(|e| e.type_name() == *name),
            "no sample of {name}"
        );
        assert!(
            fields.windows(2).all(|w| w[0].name < w[1].name),
            "{name}: members not in canonical order"
        );
        for field in *fields {
            assert_eq!(field.key, format!("\"{}\":", field.name).as_bytes());
            assert_eq!(field.after_type, field.name > "type", "{}", field.name);
        }
    }
    for event in &samples {
        assert!(
            EVENTS.iter().any(|(name, _)| *name == event.type_name()),
            "{} is not listed",
            event.type_name()
        );
        let text = to_canonical(event).unwrap();
        assert!(event_text(&text), "{text}");
    }
}

fn event_text(text: &str) -> bool {
    event(text.as_bytes())
}

/// Replacement values of every JSON type and edge, for any member.
const VALUES: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "-1",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "123456789012345678",
    "1.5",
    "\"\"",
    "\"read\"",
    "\"write\"",
    "\"warning\"",
    "\"critical\"",
    "\"x\"",
    "[]",
    "[\"a\"]",
    "[1]",
    "[null]",
    "{}",
    r#"{"missing":[],"passed":true,"unused":[]}"#,
    r#"{"missing":[{"connector":"c","scopes":[]}],"passed":false,"unused":[]}"#,
    r#"{"missing":[{"connector":"c","scopes":[1]}],"passed":false,"unused":[]}"#,
    r#"{"missing":[],"passed":1,"unused":[]}"#,
    r#"{"missing":[],"passed":true}"#,
    r#"{"missing":[],"passed":true,"unused":[],"x":1}"#,
];

/// The members of a canonical event object, as (key, value text).
fn members_of(text: &str) -> Vec<(String, String)> {
    let value: serde_json::Value = serde_json::from_str(text).unwrap();
    value
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), crate::audit::canonical_json(v)))
        .collect()
}

fn object(members: &[(String, String)]) -> String {
    let mut members = members.to_vec();
    members.sort();
    let inner: Vec<String> = members.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
    format!("{{{}}}", inner.join(","))
}

/// The validator never accepts an event `serde_json` rejects: every member replaced by values
/// of every type, removed, and an unknown member added.
#[test]
fn accepting_an_event_implies_serde_accepts_it() {
    let mut accepted = 0;
    let mut checked = 0;
    for event in samples() {
        let text = to_canonical(&event).unwrap();
        let members = members_of(&text);
        let mut variants = Vec::new();
        for i in 0..members.len() {
            for v in VALUES {
                let mut m = members.clone();
                m[i].1 = (*v).to_owned();
                variants.push(object(&m));
            }
            let mut m = members.clone();
            m.remove(i);
            variants.push(object(&m));
            for tag in EVENTS.iter().map(|(name, _)| *name) {
                let mut m = members.clone();
                if m[i].0 == "type" {
                    m[i].1 = format!("{tag:?}");
                    variants.push(object(&m));
                }
            }
        }
        let mut m = members.clone();
        m.push(("zz_unknown".into(), "1".into()));
        variants.push(object(&m));
        for text in variants {
            checked += 1;
            assert_eq!(
                event_text(&text),
                event_by_members(text.as_bytes()),
                "the validators disagree on {text}"
            );
            if event_text(&text) {
                accepted += 1;
                assert!(
                    serde_json::from_str::<AuditEvent>(&text).is_ok(),
                    "accepted but serde rejects: {text}"
                );
                assert_eq!(
                    crate::audit::canonical_json(&serde_json::from_str(&text).unwrap()),
                    text
                );
            }
        }
    }
    // The mutations are not all rejected (the test would prove nothing).
    assert!(accepted > 50 && accepted < checked, "{accepted}/{checked}");
}

#[test]
fn non_canonical_or_foreign_texts_are_not_accepted() {
    for text in [
        "",
        "{}",
        "[]",
        r#"{"type":"resumed"}"#,
        r#"{"reason":"r","type":"resumed"} "#,
        r#"{"reason":"r", "type":"resumed"}"#,
        r#"{"type":"resumed","reason":"r"}"#,
        r#"{"reason":"r","type":"nope"}"#,
        r#"{"reason":"r","type":"resum\u0065d"}"#,
        r#"{"reason":"r","type":"resumed"}x"#,
        r#"{"reason":"r","type":"resumed"#,
        // Keys spelled with escapes, or holding bytes no member name has.
        r#"{"reason":"r","typ\u0065":"resumed"}"#,
        r#"{"reaso\u006e":"r","type":"resumed"}"#,
        r#"{"reason\"":"r","type":"resumed"}"#,
        r#"{"rea\"son":"r","type":"resumed"}"#,
        "{\"reason\u{1}\":\"r\",\"type\":\"resumed\"}",
        "{\"reason\":\"r\",\"type\u{e9}\":\"resumed\"}",
        r#"{"":"r","type":"resumed"}"#,
        r#"{"reason":"r","type":"resumed",""#,
    ] {
        assert!(!event_text(text), "{text}");
        assert!(!event_by_members(text.as_bytes()), "{text}");
    }
    assert!(event_text(r#"{"reason":"r","type":"resumed"}"#));
}

#[test]
fn scopes_and_records_columns() {
    for (text, ok) in [
        ("[]", true),
        (r#"["a","b\n"]"#, true),
        (r#"["a",1]"#, false),
        (r#"["a" ]"#, false),
        (r#"["a"],[]"#, false),
        ("null", false),
    ] {
        assert_eq!(scopes(text.as_bytes()), ok, "{text}");
    }
    let refs = vec![
        RecordRef::new("crm", "issue", "T-1"),
        RecordRef::new("c\"q", "k", ""),
    ];
    let text = to_canonical(&refs).unwrap();
    let mut ranges = Vec::new();
    assert!(records(text.as_bytes(), &mut ranges), "{text}");
    let slice = |(a, b): (usize, usize)| &text[a..b];
    assert_eq!(ranges.len(), 2);
    assert_eq!(ranges[0].map(slice), ["crm", "issue", "T-1"]);
    assert_eq!(ranges[1].map(slice), ["c\\\"q", "k", ""]);
    for text in [
        "",
        "[] ",
        r#"[{"connector":"c","id":"i"}]"#,
        r#"[{"connector":"c","id":"i","kind":"k","x":1}]"#,
        r#"[{"connector":"c","id":1,"kind":"k"}]"#,
        r#"[{"connector":"c","id":"i","kind":"k"}"#,
        r#"[{"connector":"c","id":"i","kind":"k"}],"#,
    ] {
        assert!(!records(text.as_bytes(), &mut ranges), "{text}");
    }
    assert!(records(b"[]", &mut ranges));
    assert!(ranges.is_empty());
}

/// At most this many members in an event object (the widest event has 7).
const MAX_MEMBERS: usize = 12;

/// The validator [`event_by_members`] replaced (two passes over the members), kept as a reference: the
/// two agree on every text the tests try.
fn event_by_members(b: &[u8]) -> bool {
    // Pass 1: the object's members (key, value range), each value canonical, keys ascending.
    let mut members: [(&[u8], usize, usize); MAX_MEMBERS] = [(&[], 0, 0); MAX_MEMBERS];
    let mut n = 0;
    if b.first() != Some(&b'{') {
        return false;
    }
    let mut pos = 1;
    loop {
        if n == MAX_MEMBERS {
            return false;
        }
        // The key up to the next quote, unchecked: pass 2 compares every key with a member
        // name (plain ASCII, no quote, backslash or control) and refuses the object unless
        // all match, so a key with an escape or another odd byte never gets through.
        let Some(key) = raw_key(b, &mut pos) else {
            return false;
        };
        if n > 0 && key <= members[n - 1].0 {
            return false;
        }
        if b.get(pos) != Some(&b':') {
            return false;
        }
        pos += 1;
        let begin = pos;
        if !value(b, &mut pos, 1) {
            return false;
        }
        members[n] = (key, begin, pos);
        n += 1;
        match b.get(pos) {
            Some(b',') => pos += 1,
            Some(b'}') => break,
            _ => return false,
        }
    }
    if pos + 1 != b.len() {
        return false;
    }
    let members = &members[..n];
    // Pass 2: the variant named by `type`, and each member's type.
    let Some(&(_, tag_begin, tag_end)) = members.iter().find(|m| m.0 == b"type") else {
        return false;
    };
    let tag = &b[tag_begin..tag_end];
    let Some((_, fields)) = EVENTS
        .iter()
        .find(|(name, _)| tag.len() == name.len() + 2 && &tag[1..tag.len() - 1] == name.as_bytes())
    else {
        return false;
    };
    let mut rest = members.iter().filter(|m| m.0 != b"type").peekable();
    for field in *fields {
        match rest.peek() {
            Some(&&(key, begin, end)) if key == field.name.as_bytes() => {
                if !holds(field.ty, &b[begin..end]) {
                    return false;
                }
                rest.next();
            }
            _ if field.may_be_absent => {}
            _ => return false,
        }
    }
    rest.next().is_none()
}

/// Reads `"…"` at `pos` up to the first quote after the opening one: the bytes between, as
/// they are (see [`event_by_members`]).
fn raw_key<'b>(b: &'b [u8], pos: &mut usize) -> Option<&'b [u8]> {
    if b.get(*pos) != Some(&b'"') {
        return None;
    }
    let start = *pos + 1;
    let len = b.get(start..)?.iter().position(|&c| c == b'"')?;
    *pos = start + len + 1;
    Some(&b[start..start + len])
}

/// The quick look for the tag at the end finds the `"type":"` the search from the end finds,
/// on every sample and on texts that end like an event without being one.
#[test]
fn the_tag_is_found_where_the_search_from_the_end_finds_it() {
    let search = |b: &[u8]| b.windows(TYPE_KEY.len()).rposition(|w| w == TYPE_KEY);
    let mut texts: Vec<String> = samples().iter().map(|e| to_canonical(e).unwrap()).collect();
    texts.extend(
        [
            r#""}"#,
            r#"""}"#,
            r#"type":""}"#,
            r#""type":""}"#,
            r#"{"type":""}"#,
            r#"{"type":"a"}"#,
            r#"{"type":"a","type":"b"}"#,
            r#"{"type":"a","x":"type":"b"}"#,
            r#"{"x":"\"type\":\"a\"}"#,
            r#"{"type":"a\"}"#,
            r#"{"type":"a","z":"b"}"#,
            r#"{"type":"a","z":"type":""}"#,
            r#"{"a":"type":"}"#,
            "",
            "}",
        ]
        .map(str::to_owned),
    );
    for text in texts {
        let b = text.as_bytes();
        assert_eq!(type_tag_at(b), search(b), "{text}");
        for cut in 0..b.len() {
            assert_eq!(
                type_tag_at(&b[cut..]),
                search(&b[cut..]),
                "{text} from {cut}"
            );
        }
    }
}
