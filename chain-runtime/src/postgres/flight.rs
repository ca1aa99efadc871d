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

/// A request sent after a flight's, in the same round trip, whose answer the caller awaits
/// later (see [`fly_then`]).
pub(crate) type Tail<'a> = MaybeDone<BoxFuture<'a, Result<Reply, tokio_postgres::Error>>>;

/// Sends every request of `flight` in order (tokio-postgres sends a request when its future is
/// first polled) and waits for all the answers: one round trip.
pub(crate) async fn fly(flight: Flight<'_>) -> Vec<Result<Reply, tokio_postgres::Error>> {
    fly_then(flight, None).await
}

/// [`fly`], with `tail` sent after the flight's requests (in the same write) without waiting
/// for its answer: the caller awaits `tail` afterwards (its answer comes after the flight's).
pub(crate) async fn fly_then(
    flight: Flight<'_>,
    mut tail: Option<&mut Tail<'_>>,
) -> Vec<Result<Reply, tokio_postgres::Error>> {
    let mut flight: Vec<MaybeDone<_>> = flight.into_iter().map(maybe_done).collect();
    futures::future::poll_fn(|cx| {
        let mut done = true;
        for f in &mut flight {
            if std::pin::Pin::new(f).poll(cx).is_pending() {
                done = false;
            }
        }
        // Polled after the flight's requests, so sent after them; its readiness is not waited
        // for here.
        if let Some(tail) = tail.as_mut() {
            let _ = std::pin::Pin::new(&mut **tail).poll(cx);
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
