//! The HTTP/1.1 server of an emulator: its own accept loop, so that a fault can reset a
//! connection without a response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::Response;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use super::SandboxError;

/// Request bodies larger than this are refused with 413 and the connection is closed.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// 413 for a body over [`MAX_BODY`] (or one that broke off): the rest of it is unread, so the
/// connection closes, and says so.
fn too_large() -> Response {
    let mut resp = Response::new(axum::body::Body::from("request body too large"));
    *resp.status_mut() = axum::http::StatusCode::PAYLOAD_TOO_LARGE;
    resp.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    resp
}

/// Per-connection switch a handler pulls to close its connection without a response.
#[derive(Clone)]
pub struct ConnKill(Arc<Notify>);

impl ConnKill {
    /// Closes the connection; the handler future is dropped with it, so this never returns.
    pub async fn reset(&self) -> Response {
        self.0.notify_one();
        std::future::pending::<Response>().await
    }
}

/// The running server of one emulator.
pub struct ServerHandle {
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ServerHandle {
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Binds 127.0.0.1 on an ephemeral port.
pub async fn bind(provider: &'static str) -> Result<(TcpListener, SocketAddr), SandboxError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|source| SandboxError::Bind { provider, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| SandboxError::Bind { provider, source })?;
    Ok((listener, addr))
}

/// Serves `router` on `listener` until shutdown; dropping the handle aborts every connection.
pub fn serve(listener: TcpListener, router: Router) -> ServerHandle {
    let (tx, mut rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut rx => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => { conns.spawn(serve_conn(stream, router.clone())); }
                    // Transient accept errors (e.g. out of file descriptors): wait a little.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        conns.shutdown().await;
    });
    ServerHandle {
        shutdown: Some(tx),
        task: Some(task),
    }
}

async fn serve_conn(stream: TcpStream, router: Router) {
    let _ = stream.set_nodelay(true);
    // A second handle on the same socket lets a reset set SO_LINGER=0 (RST instead of FIN)
    // after hyper's handle is gone.
    let (stream, killer) = match stream.into_std().and_then(|s| {
        let clone = s.try_clone()?;
        clone.set_nonblocking(true)?;
        Ok((TcpStream::from_std(s)?, TcpStream::from_std(clone).ok()))
    }) {
        Ok(pair) => pair,
        Err(_) => return,
    };
    let notify = Arc::new(Notify::new());
    let kill = ConnKill(notify.clone());
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let kill = kill.clone();
        let mut router = router.clone();
        async move {
            // Read the whole request body before routing: a handler that answers early (no
            // such route, a refused token) must not leave unread bytes that hyper would
            // rather close the connection over, so keep-alive survives every error.
            let (mut parts, body) = req.into_parts();
            let bytes = match axum::body::to_bytes(axum::body::Body::new(body), MAX_BODY).await {
                Ok(bytes) => bytes,
                Err(_) => return Ok(too_large()),
            };
            parts.extensions.insert(kill);
            let req = hyper::Request::from_parts(parts, axum::body::Body::from(bytes));
            tower_service::Service::call(&mut router, req).await
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        _ = notify.notified() => {
            if let Some(k) = &killer {
                let _ = k.set_zero_linger();
            }
        }
    }
    drop(killer);
}
