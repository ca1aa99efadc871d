//! Aligned tables, times and descriptions for people; an `AsyncWrite` over a sync writer.

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::journal::{EntryResult, RunState};

/// Whether `c` must not reach a terminal as is: C0 and C1 controls, DEL, and the bidirectional
/// formatting characters that reorder what is displayed.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
    }
}

/// Text safe to show on a terminal: control and bidi characters are written as escapes (`\n`,
/// `\u{1b}`), so an id, a principal or a provider message can neither drive the terminal nor
/// fake lines of a table.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_unsafe(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

/// [`escape`] for output the tool assembled itself: its own line breaks are kept.
pub(super) fn escape_keep_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_unsafe(c) && c != '\n' {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

/// Renders rows under a header as columns separated by two spaces, padded to the widest cell
/// (counted in characters), with trailing spaces trimmed. Cells are [`escape`]d.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| escape(cell)).collect())
        .collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(width) => *width = (*width).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SSZ` (UTC).
pub(super) fn time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A run state in one line.
pub(super) fn state(state: &RunState) -> String {
    match state {
        RunState::Suspended {
            step_id,
            connector,
            reason,
            consent_scopes,
            ..
        } => format!(
            "suspended at `{step_id}`: {connector} refused ({reason}); re-consent to [{}] then \
             `runs resume`",
            consent_scopes.join(" ")
        ),
        RunState::Completed { output } => format!("completed, output {output}"),
        RunState::AwaitingApproval(request) => format!(
            "awaiting approval of `{}` ({}): `approvals approve {} {} --approver {}` or `approvals deny ...`",
            request.step_id, request.reason, request.run_id, request.approval_id, request.principal
        ),
        RunState::Blocked { reason } => format!("blocked: {reason}"),
        RunState::Failed { error } => format!("failed: {error}"),
        other => other.kind().to_owned(),
    }
}

/// A journal or compensation result in one cell.
pub(super) fn entry_result(result: Option<&EntryResult>) -> String {
    match result {
        None => "pending (intent only)".to_owned(),
        Some(EntryResult::Ok { output, .. }) => format!("ok {output}"),
        Some(EntryResult::Err { error }) => format!("error: {error}"),
    }
}

/// `-` for nothing.
pub(super) fn opt(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

/// A list joined by `, `, or `-`.
pub(super) fn list<I, S>(items: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let joined = items
        .into_iter()
        .map(|s| s.as_ref().to_owned())
        .collect::<Vec<_>>()
        .join(", ");
    if joined.is_empty() {
        "-".to_owned()
    } else {
        joined
    }
}

/// An `AsyncWrite` that writes straight to a sync writer (the tool's stdout or a file).
pub(super) struct SyncWriter<'a>(pub(super) &'a mut (dyn Write + Send));

impl tokio::io::AsyncWrite for SyncWriter<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.get_mut().0.write(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.get_mut().0.flush())
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.get_mut().0.flush())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(time(0), "1970-01-01 00:00:00Z");
        assert_eq!(time(1_700_000_000_000), "2023-11-14 22:13:20Z");
        assert_eq!(time(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(time(-1000), "1969-12-31 23:59:59Z");
    }

    #[test]
    fn control_and_bidi_characters_are_escaped() {
        assert_eq!(escape("run\u{1b}[2Jx"), "run\\u{1b}[2Jx");
        assert_eq!(
            escape("a\nb\r\tc\u{7f}\u{9b}"),
            "a\\nb\\r\\tc\\u{7f}\\u{9b}"
        );
        assert_eq!(escape("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(escape("plain é ✓"), "plain é ✓");
        assert_eq!(escape_keep_lines("a\nb\u{7}"), "a\nb\\u{7}");
    }

    #[test]
    fn a_cell_cannot_fake_a_row() {
        let t = table(
            &["ID", "PRINCIPAL"],
            &[vec![
                "run_a".into(),
                "alice\nrun_b  mallory\u{1b}[31m".into(),
            ]],
        );
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(t.contains("alice\\nrun_b  mallory\\u{1b}[31m"));
        assert!(!t.contains('\u{1b}'));
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["ID", "STATE"],
            &[
                vec!["run_a".into(), "completed".into()],
                vec!["r".into(), "é".into()],
            ],
        );
        assert_eq!(t, "ID     STATE\nrun_a  completed\nr      é\n");
    }
}
