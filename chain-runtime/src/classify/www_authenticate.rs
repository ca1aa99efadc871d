//! A lenient parser for `WWW-Authenticate` challenges (RFC 9110 §11.6.1, RFC 6750 §3).
//!
//! Auth-params are parsed generically: providers add `authorization_uri`, `client_id`, `claims`,
//! `resource_metadata`, `acr_values`, `max_age` and more. Values may be tokens or quoted strings
//! with backslash escapes. One header value may hold several challenges, and the parser never
//! fails: malformed input yields whatever challenges could be recognised.
//!
//! The parser makes one pass: every byte is looked at a bounded number of times (a failed
//! token68 attempt is remembered, so a run of one-byte schemes does not rescan it), and at most
//! [`MAX_CHALLENGES`] challenges of at most [`MAX_PARAMS`] params each are kept. Parsing stops at
//! the challenge cap.

/// Most challenges [`parse`] returns from one header value.
pub const MAX_CHALLENGES: usize = 32;
/// Most auth-params kept per challenge (later ones are skipped).
pub const MAX_PARAMS: usize = 64;

/// One challenge: an auth scheme with either a token68 or auth-params.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Challenge {
    /// The auth scheme as sent (compare case-insensitively), e.g. `Bearer`.
    pub scheme: String,
    /// The token68 form of the credentials, if the challenge used it instead of params.
    pub token68: Option<String>,
    /// Auth-params in order of appearance; names are lowercased, values unquoted and unescaped.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The value of the first param called `name` (case-insensitive).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the scheme is `scheme` (case-insensitive).
    pub fn is(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
    /// A token68 attempt starting before this offset is known to fail (see [`Cursor::token68`]).
    no_token68_before: usize,
    /// Bytes looked at so far: the parser's work, bounded by a small multiple of the input length.
    work: std::cell::Cell<usize>,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.work.set(self.work.get() + 1);
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(is_ws) {
            self.i += 1;
        }
    }

    fn skip_ws_and_commas(&mut self) {
        while self.peek().is_some_and(|b| is_ws(b) || b == b',') {
            self.i += 1;
        }
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &[u8] {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    /// A token68 right after the scheme: `1*token68char *"="` followed by the end or a comma.
    ///
    /// When the attempt fails, every later attempt starting inside the same run of token68
    /// characters would reach the same end and fail the same way (`Bearer a/a/a/… y` parses
    /// `a` as a scheme at each `/`), so the run's end is remembered and those attempts return
    /// at once: without this the parse is quadratic.
    fn token68(&mut self) -> Option<String> {
        let start = self.i;
        if start < self.no_token68_before {
            return None;
        }
        let body_end = start + self.take_while(is_token68_char).len();
        if body_end == start {
            self.i = start;
            return None;
        }
        self.take_while(|b| b == b'=');
        let end = self.i;
        self.skip_ws();
        if self.peek().is_none_or(|b| b == b',') {
            Some(String::from_utf8_lossy(&self.s[start..end]).into_owned())
        } else {
            self.no_token68_before = body_end;
            self.i = start;
            None
        }
    }

    /// A quoted string starting at the opening quote; unterminated strings run to the end.
    fn quoted(&mut self) -> String {
        self.i += 1; // opening quote
        let mut out = Vec::new();
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    if let Some(next) = self.peek() {
                        out.push(next);
                        self.i += 1;
                    }
                }
                _ => out.push(b),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// An unquoted value: leniently everything up to a comma or whitespace.
    fn bare_value(&mut self) -> String {
        let v = self.take_while(|b| b != b',' && !is_ws(b));
        String::from_utf8_lossy(v).into_owned()
    }
}

/// Parses one `WWW-Authenticate` header value into its challenges (at most
/// [`MAX_CHALLENGES`]), in time linear in its length.
pub fn parse(input: &str) -> Vec<Challenge> {
    parse_counting(input).0
}

/// [`parse`], also returning the parser's work (bytes looked at, counting revisits), which is
/// at most a small constant times `input.len()` plus one per challenge. For tests that bound
/// the parser's cost without timing it.
#[doc(hidden)]
pub fn parse_counting(input: &str) -> (Vec<Challenge>, usize) {
    let mut c = Cursor {
        s: input.as_bytes(),
        i: 0,
        no_token68_before: 0,
        work: std::cell::Cell::new(0),
    };
    let mut out: Vec<Challenge> = Vec::new();
    let mut current: Option<Challenge> = None;
    loop {
        c.skip_ws_and_commas();
        let Some(first) = c.peek() else { break };
        if !is_tchar(first) {
            // Garbage (a stray quote, `;`, non-ASCII): skip one byte so we always progress.
            if first == b'"' {
                c.quoted();
            } else {
                c.i += 1;
            }
            continue;
        }
        let name = String::from_utf8_lossy(c.take_while(is_tchar)).into_owned();
        let after_name = c.i;
        c.skip_ws();
        if c.peek() == Some(b'=') {
            c.i += 1;
            c.skip_ws();
            let value = match c.peek() {
                Some(b'"') => c.quoted(),
                Some(b',') | None => String::new(),
                Some(_) => c.bare_value(),
            };
            if let Some(ch) = current.as_mut()
                && ch.params.len() < MAX_PARAMS
            {
                ch.params.push((name.to_ascii_lowercase(), value));
            }
            // A param before any scheme is malformed and dropped.
        } else {
            // No `=`: the token is a new auth scheme.
            c.i = after_name;
            if let Some(done) = current.take() {
                out.push(done);
            }
            if out.len() >= MAX_CHALLENGES {
                return (out, c.work.get());
            }
            c.skip_ws();
            let token68 = c.token68();
            current = Some(Challenge {
                scheme: name,
                token68,
                params: Vec::new(),
            });
        }
    }
    out.extend(current);
    (out, c.work.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_with_quoted_and_token_params() {
        let ch = parse(
            r#"Bearer realm="example", error=invalid_token, error_description="The access token expired""#,
        );
        assert_eq!(ch.len(), 1);
        assert!(ch[0].is("bearer"));
        assert_eq!(ch[0].param("realm"), Some("example"));
        assert_eq!(ch[0].param("ERROR"), Some("invalid_token"));
        assert_eq!(
            ch[0].param("error_description"),
            Some("The access token expired")
        );
    }

    #[test]
    fn escapes_in_quoted_strings() {
        let ch = parse(r#"Bearer error_description="say \"hi\" \\ there", scope="a b""#);
        assert_eq!(
            ch[0].param("error_description"),
            Some(r#"say "hi" \ there"#)
        );
        assert_eq!(ch[0].param("scope"), Some("a b"));
    }

    #[test]
    fn several_challenges_and_token68() {
        let ch = parse(
            r#"Basic dXNlcjpwYXNz==, Bearer realm="r", error="insufficient_scope", DPoP algs="ES256""#,
        );
        assert_eq!(ch.len(), 3);
        assert_eq!(ch[0].token68.as_deref(), Some("dXNlcjpwYXNz=="));
        assert!(ch[1].is("Bearer"));
        assert_eq!(ch[1].param("error"), Some("insufficient_scope"));
        assert!(ch[2].is("dpop"));
        assert_eq!(ch[2].param("algs"), Some("ES256"));
    }

    #[test]
    fn scheme_without_params_and_empty_values() {
        let ch = parse("Bearer, Negotiate");
        assert_eq!(ch.len(), 2);
        assert!(ch[0].params.is_empty());
        // `realm=` followed by a comma is a valid token68; the params after it are still kept.
        let ch = parse("Bearer realm=, error=invalid_token, scope=");
        assert_eq!(ch[0].token68.as_deref(), Some("realm="));
        assert_eq!(ch[0].param("error"), Some("invalid_token"));
        assert_eq!(ch[0].param("scope"), Some(""));
    }

    #[test]
    fn malformed_input_never_panics() {
        for s in [
            "",
            "\"",
            "=",
            "Bearer \"unterminated",
            "Bearer a=\"x\\",
            ",,,",
            "=== Bearer",
            "Bearer ü=1, ;;",
        ] {
            let _ = parse(s);
        }
        let ch = parse(r#"Bearer error="invalid_token"#);
        assert_eq!(ch[0].param("error"), Some("invalid_token"));
    }
}
