//! Recovering a run a simulated crash left behind.
//!
//! A test "crashes" a run by aborting its task in a live process. The aborted run's drop
//! spawns a task that gives its lease back (the runner's `ReleaseIfAbandoned`; on PostgreSQL
//! through the old engine's writer, after the units it queued), and until that task has run,
//! the run is claimed by a live holder and [`Engine::recover`] rightly skips it.

use std::time::{Duration, Instant};

use chain_runtime::engine::{Engine, EngineError};
use chain_runtime::journal::RunState;

/// [`Engine::recover`], called again every 10 ms while it finds nothing to recover, until
/// `deadline`; returns what the last call recovered (empty if the deadline passed first).
pub async fn recover_once_released(
    engine: &Engine,
    deadline: Instant,
) -> Vec<(String, Result<RunState, EngineError>)> {
    loop {
        let recovered = engine.recover().await.unwrap();
        if !recovered.is_empty() || Instant::now() > deadline {
            return recovered;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
