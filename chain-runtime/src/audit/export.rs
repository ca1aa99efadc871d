//! JSON Lines export.

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{AuditError, AuditStore, canonical_json};

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
