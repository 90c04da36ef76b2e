//! The one asynchronous runtime of the process, for HTTP clients (object storage, Patroni's REST
//! API): they are async, while FUSE callbacks, rayon workers and the rest of pgfork are synchronous. Every request is driven
//! from a synchronous thread with [`block_on`]; the runtime's two workers drive connections and
//! the parts of multipart uploads. One runtime for every store: a pooled connection belongs to the
//! runtime that opened it, and a request from another would wait on a connection nobody drives.

use std::future::Future;
use std::sync::OnceLock;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// Runs `future` to completion on the process's object storage runtime. Call from synchronous code
/// only (never from inside another runtime).
pub fn block_on<F: Future>(future: F) -> F::Output {
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("pgfork-s3")
                .enable_all()
                .build()
                .expect("the object storage runtime starts (threads and timers are available)")
        })
        .block_on(future)
}

/// Chooses the TLS stack's cryptography once per process (the HTTP clients are built without a
/// default one); later calls do nothing.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
