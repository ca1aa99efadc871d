//! JSON Lines export, and its verification.
//!
//! An export is one record per line, each line exactly the canonical JSON of its record (the
//! form that was hashed). [`verify_jsonl`] holds an export to that: a line that parses to a
//! valid record but is not byte for byte its canonical form (duplicate keys, reordered keys,
//! extra whitespace, other escapes) is a break, because what was read is not what was hashed.

use std::io::BufRead;

use serde_json::Value;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::verify::{BreakProblem, ChainBreak, ChainVerifier, Verified};
use super::{AuditError, AuditStore, Checkpoint, canonical_json};

/// Longest line [`verify_jsonl`] reads (1 MiB); a longer line is a break, and is not read into
/// memory beyond this length.
pub const MAX_LINE: usize = 1024 * 1024;

/// Records fetched per page while exporting.
const PAGE: usize = 1000;

/// Writes every stored record, in `seq` order, as one canonical JSON line each.
pub(super) async fn export_jsonl<S>(
    store: &S,
    writer: &mut (dyn AsyncWrite + Unpin + Send),
) -> Result<u64, AuditError>
where
    S: AuditStore + ?Sized,
{
    let mut written = 0u64;
    let mut after = None;
    loop {
        let page = store.scan_raw(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        let next = last.get("seq").and_then(serde_json::Value::as_i64);
        let mut chunk = String::new();
        for value in &page {
            chunk.push_str(&canonical_json(value));
            chunk.push('\n');
        }
        writer.write_all(chunk.as_bytes()).await?;
        written += page.len() as u64;
        match next {
            Some(seq) if page.len() == PAGE => after = Some(seq),
            _ => break,
        }
    }
    writer.flush().await?;
    Ok(written)
}

/// One line of an export: its bytes (without the newline), or `None` past the end. A line
/// longer than [`MAX_LINE`] is read no further than that and returned as `Err(())`, after the
/// rest of it has been skipped.
fn next_line<R: BufRead>(reader: &mut R, buf: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(any.then_some(!too_long));
        }
        any = true;
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if !too_long {
            let room = MAX_LINE + 1 - buf.len().min(MAX_LINE + 1);
            buf.extend_from_slice(&chunk[..take.min(room)]);
            too_long = buf.len() > MAX_LINE;
            if too_long {
                buf.clear();
            }
        }
        reader.consume(if done { take + 1 } else { take });
        if done {
            return Ok(Some(!too_long));
        }
    }
}

/// Verifies a JSON Lines export exactly as the store is verified. Blank lines are ignored.
///
/// On top of the chain checks of [`ChainVerifier`], every line must be valid UTF-8, at most
/// [`MAX_LINE`] bytes, and equal to the canonical JSON of its value; otherwise the chain is
/// broken at that record ([`BreakProblem::Malformed`], naming the line).
///
/// A broken chain is [`AuditError::ChainBroken`]; a read failure is [`AuditError::Io`].
pub fn verify_jsonl<R: BufRead>(
    mut reader: R,
    checkpoint: Option<Checkpoint>,
) -> Result<Verified, AuditError> {
    let mut verifier = ChainVerifier::new(checkpoint);
    let mut records = 0u64;
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    while let Some(within_limit) = next_line(&mut reader, &mut buf)? {
        line_no += 1;
        let malformed = |reason: String| {
            AuditError::ChainBroken(ChainBreak {
                position: records + 1,
                seq: None,
                problem: BreakProblem::Malformed {
                    reason: format!("line {line_no}: {reason}"),
                },
            })
        };
        if !within_limit {
            return Err(malformed(format!("longer than {MAX_LINE} bytes")));
        }
        let Ok(line) = std::str::from_utf8(&buf) else {
            return Err(malformed("not valid UTF-8".into()));
        };
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let value = serde_json::from_str::<Value>(line).map_err(|e| {
            malformed(format!(
                "not JSON (column {} of line {})",
                e.column(),
                e.line()
            ))
        })?;
        if canonical_json(&value) != line {
            return Err(malformed(
                "not the canonical form of its record (duplicate or reordered keys, spacing or \
                 escapes differ from what was hashed)"
                    .into(),
            ));
        }
        records += 1;
        verifier.push(&value).map_err(AuditError::ChainBroken)?;
    }
    verifier.finish().map_err(AuditError::ChainBroken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, NewRecord, Outcome, PreflightSummary, SqliteAuditStore};

    /// A real export of three records.
    async fn lines() -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteAuditStore::open(dir.path().join("a.db"))
            .await
            .unwrap();
        for i in 0..3 {
            let event = AuditEvent::RunStarted {
                chain: format!("chain-{i}"),
                chain_version: "1".into(),
                preflight: PreflightSummary {
                    passed: true,
                    missing: vec![],
                    unused: vec![],
                },
            };
            store
                .append(NewRecord::new("alice", Outcome::Succeeded, event).run(format!("run-{i}")))
                .await
                .unwrap();
        }
        let mut out = Vec::new();
        store.export_jsonl(&mut out).await.unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn verify(bytes: &[u8]) -> Result<u64, ChainBreak> {
        match verify_jsonl(bytes, None) {
            Ok(v) => Ok(v.records),
            Err(AuditError::ChainBroken(b)) => Err(b),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    fn reason(b: &ChainBreak) -> &str {
        match &b.problem {
            BreakProblem::Malformed { reason } => reason,
            other => panic!("expected a malformed record, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_intact_export_verifies() {
        let lines = lines().await;
        assert_eq!(verify((lines.join("\n") + "\n").as_bytes()), Ok(3));
        // Blank lines and CRLF line ends are fine.
        assert_eq!(verify((lines.join("\r\n\r\n") + "\r\n").as_bytes()), Ok(3));
    }

    #[tokio::test]
    async fn a_duplicate_key_is_a_break_even_though_it_would_hash() {
        let lines = lines().await;
        // The duplicate comes first: serde keeps the last value, so the record still hashes, but
        // the line is not what was hashed.
        let mut forged = lines.clone();
        forged[1] = forged[1].replacen("{", "{\"principal\":\"mallory\",", 1);
        let b = verify((forged.join("\n") + "\n").as_bytes()).unwrap_err();
        assert_eq!(b.position, 2);
        assert!(reason(&b).contains("line 2: not the canonical form"), "{b}");
        // Spacing differs from the canonical form.
        let mut spaced = lines.clone();
        spaced[2] = spaced[2].replacen(":", ": ", 1);
        let b = verify((spaced.join("\n") + "\n").as_bytes()).unwrap_err();
        assert_eq!(b.position, 3);
    }

    #[tokio::test]
    async fn invalid_utf8_is_a_break_at_its_line() {
        let lines = lines().await;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(lines[0].as_bytes());
        bytes.extend_from_slice(b"\n\n");
        bytes.extend_from_slice(&lines[1].as_bytes()[..10]);
        bytes.extend_from_slice(&[0xff, 0xfe]);
        bytes.extend_from_slice(b"\n");
        let b = verify(&bytes).unwrap_err();
        assert_eq!(b.position, 2);
        assert_eq!(reason(&b), "line 3: not valid UTF-8");
    }

    #[tokio::test]
    async fn an_over_long_line_is_a_break_and_is_not_read_whole() {
        let lines = lines().await;
        let mut bytes = (lines[0].clone() + "\n").into_bytes();
        bytes.extend(std::iter::repeat_n(b' ', MAX_LINE + 10));
        bytes.extend_from_slice(b"\n");
        let b = verify(&bytes).unwrap_err();
        assert_eq!(b.position, 2);
        assert!(reason(&b).contains("line 2: longer than"), "{b}");
        // A line of exactly the limit is read (and then judged on its content).
        let mut bytes = vec![b' '; MAX_LINE];
        bytes.push(b'\n');
        assert_eq!(verify(&bytes), Ok(0));
    }

    #[test]
    fn next_line_bounds_memory() {
        let mut input: &[u8] = b"abc\ndef";
        let mut buf = Vec::new();
        assert_eq!(next_line(&mut input, &mut buf).unwrap(), Some(true));
        assert_eq!(buf, b"abc");
        assert_eq!(next_line(&mut input, &mut buf).unwrap(), Some(true));
        assert_eq!(buf, b"def");
        assert_eq!(next_line(&mut input, &mut buf).unwrap(), None);
        let long = vec![b'x'; MAX_LINE * 2];
        let mut reader = std::io::BufReader::with_capacity(4096, long.as_slice());
        assert_eq!(next_line(&mut reader, &mut buf).unwrap(), Some(false));
        assert!(buf.capacity() <= MAX_LINE * 2);
        assert!(buf.len() <= MAX_LINE);
    }

    /// A fixed-budget fuzz of the verifier on a real export: arbitrary bytes never panic, and
    /// any single-byte change (other than to the final line break) breaks the chain.
    #[test]
    fn fuzzed_exports_never_verify_by_accident() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let export = rt.block_on(lines()).join("\n") + "\n";
        let bytes = export.into_bytes();
        let mut runner = TestRunner::new(Config {
            cases: 512,
            failure_persistence: None,
            ..Config::default()
        });
        let len = bytes.len();
        runner
            .run(&(0..len - 1, any::<u8>()), |(at, byte)| {
                prop_assume!(bytes[at] != byte);
                let mut mutated = bytes.clone();
                mutated[at] = byte;
                prop_assert!(
                    verify_jsonl(mutated.as_slice(), None).is_err(),
                    "byte {at} -> {byte}"
                );
                Ok(())
            })
            .unwrap();
        runner
            .run(&prop::collection::vec(any::<u8>(), 0..4096), |noise| {
                let _ = verify_jsonl(noise.as_slice(), None);
                let mut spliced = bytes.clone();
                spliced.splice(len / 2..len / 2, noise.iter().copied());
                let _ = verify_jsonl(spliced.as_slice(), None);
                Ok(())
            })
            .unwrap();
    }
}
