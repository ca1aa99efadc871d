//! Pipelining: requests sent together, answered in order, in one round trip.

use futures::future::{BoxFuture, MaybeDone, maybe_done};

/// The answer to one request of a flight.
pub(crate) enum Reply {
    /// A simple query's.
    Nothing,
    /// A query's rows.
    Rows(Vec<tokio_postgres::Row>),
    /// How many rows a statement changed.
    Count(u64),
}

/// Requests sent together.
pub(crate) type Flight<'a> = Vec<BoxFuture<'a, Result<Reply, tokio_postgres::Error>>>;

/// Sends every request of `flight` in order (tokio-postgres sends a request when its future is
/// first polled) and waits for all the answers: one round trip.
pub(crate) async fn fly(flight: Flight<'_>) -> Vec<Result<Reply, tokio_postgres::Error>> {
    let mut flight: Vec<MaybeDone<_>> = flight.into_iter().map(maybe_done).collect();
    futures::future::poll_fn(|cx| {
        let mut done = true;
        for f in &mut flight {
            if std::pin::Pin::new(f).poll(cx).is_pending() {
                done = false;
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    flight
        .iter_mut()
        .map(|f| {
            std::pin::Pin::new(f)
                .take_output()
                .unwrap_or(Ok(Reply::Nothing))
        })
        .collect()
}
