//! The `WWW-Authenticate` parser's cost is linear in its input: counted, not timed. The parser
//! reports how many bytes it looked at (revisits included); for every input up to 1 MB that
//! count stays under a fixed multiple of the length, including the shapes that used to make it
//! quadratic (`Bearer a/a/…/a y`: a one-byte scheme at every `/`, each rescanning the rest).

use chain_runtime::classify::www_authenticate::{
    MAX_CHALLENGES, MAX_PARAMS, parse, parse_counting,
};
use proptest::prelude::*;

/// Work allowed per input byte (plus a constant): a one-pass parser looks at each byte a few
/// times (the scheme name, the token68 attempt, whitespace skipping).
const WORK_PER_BYTE: usize = 8;

fn assert_linear(input: &str) {
    let (challenges, work) = parse_counting(input);
    assert!(
        work <= WORK_PER_BYTE * input.len() + 64,
        "{work} steps for {} bytes (starting {:?})",
        input.len(),
        &input[..input.floor_char_boundary(40)]
    );
    assert!(challenges.len() <= MAX_CHALLENGES);
    assert!(challenges.iter().all(|c| c.params.len() <= MAX_PARAMS));
}

/// A hostile header of about `len` bytes built by repeating `unit` between `head` and `tail`.
fn hostile(head: &str, unit: &str, tail: &str, len: usize) -> String {
    let mut s = String::with_capacity(len + head.len() + tail.len());
    s.push_str(head);
    while s.len() < len {
        s.push_str(unit);
    }
    s.push_str(tail);
    s
}

/// The shapes that hurt a backtracking parser, at sizes from 1 KB to 1 MB.
#[test]
fn pathological_headers_cost_linear_work_up_to_a_megabyte() {
    let shapes: [(&str, &str, &str); 9] = [
        ("Bearer ", "a/", "a y"),
        ("Bearer ", "a/", "a="),
        ("Bearer ", "a.", "a \""),
        ("", "a ", ""),
        ("", "a,", ""),
        ("Bearer ", "x=1,", ""),
        ("Bearer ", "x=\"\\", ""),
        ("Bearer ", "a/===", " y"),
        ("", "=", "Bearer"),
    ];
    let mut ratios = Vec::new();
    for (head, unit, tail) in shapes {
        let mut per_size = Vec::new();
        for len in [1 << 10, 1 << 14, 1 << 20] {
            let input = hostile(head, unit, tail, len);
            assert_linear(&input);
            let (_, work) = parse_counting(&input);
            per_size.push(work as f64 / input.len() as f64);
        }
        ratios.push((unit, per_size));
    }
    // Work per byte does not grow with the input: the 1 MB input costs at most twice per byte
    // what the 1 KB one does (a quadratic parser would cost a thousand times more).
    for (unit, per_size) in ratios {
        assert!(
            per_size[2] <= per_size[0] * 2.0 + 1.0,
            "{unit:?}: work per byte went from {:.2} at 1 KB to {:.2} at 1 MB",
            per_size[0],
            per_size[2]
        );
    }
}

#[test]
fn the_number_of_challenges_and_params_is_capped() {
    let many = "Basic, ".repeat(10_000);
    assert_eq!(parse(&many).len(), MAX_CHALLENGES);
    let params: String = (0..1000).map(|i| format!("p{i}=v, ")).collect();
    let ch = parse(&format!("Bearer {params}"));
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].params.len(), MAX_PARAMS);
    assert_eq!(ch[0].param("p0"), Some("v"));
}

#[test]
fn the_one_byte_scheme_shape_still_parses_what_it_can() {
    // `Bearer a/a/a y` is garbage; the parser keeps going and later challenges still count.
    let input = format!(
        "{}, Bearer error=\"invalid_token\"",
        hostile("Bearer ", "a/", "a y", 12)
    );
    let ch = parse(&input);
    assert!(ch.len() < MAX_CHALLENGES);
    assert!(ch.iter().any(|c| c.param("error") == Some("invalid_token")));
}

fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Bearer".to_owned()),
        Just(" ".to_owned()),
        Just(",".to_owned()),
        Just("=".to_owned()),
        Just("\"".to_owned()),
        Just("\\".to_owned()),
        Just("/".to_owned()),
        Just("a".to_owned()),
        Just("error=insufficient_scope".to_owned()),
        "[a-z/=. ,\"\\\\]{1,8}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random mixes of the characters that matter, repeated up to ~1 MB, cost linear work.
    #[test]
    fn random_headers_up_to_a_megabyte_cost_linear_work(
        pieces in prop::collection::vec(piece(), 1..12),
        repeat in prop_oneof![1usize..64, Just(4096usize), Just(40_000usize)],
    ) {
        let unit: String = pieces.concat();
        let input = unit.repeat(repeat.min((1 << 20) / unit.len().max(1) + 1));
        assert_linear(&input);
    }

    /// Arbitrary text never panics and stays within the caps.
    #[test]
    fn arbitrary_headers_never_panic(s in ".{0,2000}") {
        assert_linear(&s);
    }
}
