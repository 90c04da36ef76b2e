//! The HTTP side: `GET /metrics` renders the cached collection, nothing else is read on a scrape.
//! HTTP/1.1 with keep-alive (hyper) on a single-threaded runtime in its own thread: the page is
//! built from memory, so one thread serves every scraper.

use std::convert::Infallible;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::Cache;
use super::text::CONTENT_TYPE;
use crate::error::{Error, IoContext, Result};

/// Serves `listener` in a new thread until the process ends.
pub fn spawn(listener: TcpListener, cache: Arc<Cache>) -> Result<std::thread::JoinHandle<()>> {
    let address = listener.local_addr().at("read the address of", "the exporter's socket")?;
    listener.set_nonblocking(true).at("set non-blocking", address.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("start the runtime of", address.to_string(), e))?;
    std::thread::Builder::new()
        .name("pgfork-exporter-http".into())
        .spawn(move || runtime.block_on(accept(listener, cache)))
        .map_err(|e| Error::io("start the thread of", address.to_string(), e))
}

async fn accept(listener: TcpListener, cache: Arc<Cache>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("exporter: cannot serve: {e}");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::warn!("exporter: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let cache = Arc::clone(&cache);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let cache = Arc::clone(&cache);
                async move { Ok::<_, Infallible>(respond(&cache, &request)) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!("exporter: connection: {e}");
            }
        });
    }
}

fn respond(cache: &Cache, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let readable = request.method() == Method::GET || request.method() == Method::HEAD;
    let text = "text/plain; charset=utf-8";
    let (status, content_type, body) = match request.uri().path() {
        _ if !readable => (StatusCode::METHOD_NOT_ALLOWED, text, "only GET\n".to_string()),
        "/metrics" => (StatusCode::OK, CONTENT_TYPE, cache.render()),
        "/" => (StatusCode::OK, text, "pgfork exporter: metrics at /metrics\n".to_string()),
        _ => (StatusCode::NOT_FOUND, text, "not found\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}
