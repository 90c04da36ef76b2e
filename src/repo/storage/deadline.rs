//! Progress deadlines for object store requests. A connection can stall — the server or a proxy
//! stops sending without closing — or crawl; HTTP's own timeout (one figure for every request)
//! cannot tell a stalled 8 MiB read from a slow one, so every GET here is watched as it streams:
//!
//! - a request that receives nothing for `stall` (the response's head included) is abandoned;
//! - a request that runs longer than `base` plus its size at `min_rate` is abandoned — the floor
//!   rate is for the store's requests together: one sharing the link with others is given its
//!   share's time, so that a slow link read by many threads at once is not mistaken for a crawl;
//! - a request far slower than the requests before it — four times what their pace predicts, and
//!   at its own pace still further from done than a new request would be — is hedged: an identical
//!   second request starts, the first to finish wins and the other is dropped;
//! - an abandoned request is replaced, up to `attempts` requests in all (hedges included); then the
//!   operation fails saying how many requests it made, how many bytes arrived and how long it took.
//!
//! Dropping a request drops its connection: hyper closes an HTTP/1 connection whose response is
//! dropped before its head or mid-body (it keeps only a connection whose body was read to the end),
//! so a replacement never queues behind a stalled connection. Errors the store answered (after
//! its own retries) end the operation as they are. Other requests (PUT, HEAD, DELETE) are bounded
//! the same way by size, and listings by `stall` per page.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::{Either, select};
use futures::stream::{BoxStream, FuturesUnordered, StreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, OBJECT_STORE_COALESCE_DEFAULT, ObjectStore, coalesce_ranges};
use tokio::time::timeout;

/// A request this many times slower than the pace of those before it is hedged.
const HEDGE_FACTOR: u32 = 4;
/// How often a running request is looked at for a hedge.
const HEDGE_CHECK: Duration = Duration::from_millis(100);
/// Requests smaller than this do not teach the pace (their time is mostly the round trip).
const PACE_MIN_BYTES: u64 = 64 << 10;
/// How often a request without a streamed body looks again at how many share the link.
const SHARE_CHECK: Duration = Duration::from_secs(1);

/// How long requests may take (a repository's `stall_timeout`, `request_timeout`, `min_rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// A request that receives nothing for this long is abandoned.
    pub stall: Duration,
    /// What a request may take besides its size at `min_rate`.
    pub base: Duration,
    /// The slowest transfer a request is allowed, in bytes per second.
    pub min_rate: u64,
    /// Requests per operation, hedges and replacements included.
    pub attempts: u32,
}

impl Default for Deadlines {
    fn default() -> Deadlines {
        Deadlines { stall: Duration::from_secs(30), base: Duration::from_secs(30), min_rate: 256 << 10, attempts: 4 }
    }
}

impl Deadlines {
    /// How long one request moving `len` bytes may take in all, while `sharing` requests (itself
    /// included) are in flight.
    pub fn limit(&self, len: u64, sharing: u64) -> Duration {
        self.base + Duration::from_secs_f64(len as f64 * sharing.max(1) as f64 / self.min_rate.max(1) as f64)
    }

    /// How long `len` bytes are expected to take at `pace` (bytes per second; the floor rate
    /// while nothing is known).
    fn expected(&self, len: u64, pace: Option<u64>) -> Duration {
        Duration::from_secs_f64(len as f64 / pace.unwrap_or(self.min_rate).max(1) as f64)
    }

    /// Whether to start a second request beside one for `len` bytes (`None`: not known yet) that
    /// has run `elapsed` and received `received`: when it is far slower than expected, and a new
    /// request at the expected pace would finish before it does at its own.
    pub fn should_hedge(&self, elapsed: Duration, received: u64, len: Option<u64>, pace: Option<u64>) -> bool {
        let len = len.unwrap_or(received).max(received);
        let expected = self.expected(len, pace);
        if elapsed < (expected * HEDGE_FACTOR).max(self.stall / 4) {
            return false;
        }
        if received == 0 {
            return true;
        }
        let remaining = elapsed.as_secs_f64() * (len - received) as f64 / received as f64;
        remaining > expected.as_secs_f64()
    }
}

/// A store's requests: how many are in flight, and the pace of its completed reads in bytes per
/// second (a moving average).
#[derive(Debug, Default)]
pub struct Traffic {
    pace: AtomicU64,
    in_flight: AtomicU64,
}

impl Traffic {
    /// The pace, once a read has taught it.
    pub fn pace(&self) -> Option<u64> {
        Some(self.pace.load(Ordering::Relaxed)).filter(|p| *p > 0)
    }

    /// Learns from a read of `bytes` that took `took`.
    pub fn record(&self, bytes: u64, took: Duration) {
        if bytes < PACE_MIN_BYTES {
            return;
        }
        let sample = (bytes as f64 / took.as_secs_f64().max(1e-3)) as u64;
        let pace = self.pace().map_or(sample, |old| (old * 3 + sample) / 4);
        self.pace.store(pace.max(1), Ordering::Relaxed);
    }

    /// Requests in flight now.
    fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    fn enter(&self) -> Flight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Flight(self)
    }
}

/// A request in flight.
struct Flight<'a>(&'a Traffic);

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a request was abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandoned {
    /// Nothing arrived for the stall timeout.
    Stalled,
    /// It ran past its size's deadline.
    TooSlow,
}

/// How an operation failed.
#[derive(Debug)]
pub enum Failure<E> {
    /// The store's answer (after its own retries).
    Store(E),
    /// Every request was abandoned.
    GaveUp {
        /// Requests made.
        requests: u32,
        /// The most bytes any of them received.
        received: u64,
        /// The bytes expected, when a response said.
        len: Option<u64>,
        /// From the first request to giving up.
        waited: Duration,
        /// Why the last one was abandoned.
        last: Abandoned,
        /// The deadlines, for the message.
        deadlines: Deadlines,
    },
}

impl<E: std::fmt::Display> std::fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Store(e) => e.fmt(f),
            Failure::GaveUp { requests, received, len, waited, last, deadlines } => {
                let why = match last {
                    Abandoned::Stalled => format!("nothing arrived for {:?} (stall_timeout)", deadlines.stall),
                    Abandoned::TooSlow => format!(
                        "slower than {} KiB/s after {:?} (min_rate, request_timeout)",
                        deadlines.min_rate >> 10,
                        deadlines.base
                    ),
                };
                let of = len.map(|l| format!(" of {l}")).unwrap_or_default();
                write!(
                    f,
                    "gave up after {requests} requests in {:.1} s: {why}; {received}{of} bytes received",
                    waited.as_secs_f64()
                )
            }
        }
    }
}

/// A failure of a request to the object store.
pub type Failed = Failure<object_store::Error>;

/// A store's deadlines and its traffic: what its requests go through.
#[derive(Debug, Default)]
pub struct Watch {
    /// The deadlines.
    pub deadlines: Deadlines,
    traffic: Traffic,
}

impl Watch {
    /// Requests under `deadlines`.
    pub fn new(deadlines: Deadlines) -> Watch {
        Watch { deadlines, traffic: Traffic::default() }
    }

    /// `range` of the object at `path` (the whole object when `None`), streamed under the
    /// deadlines.
    pub async fn get(
        &self,
        store: &dyn ObjectStore,
        path: &ObjectPath,
        range: Option<Range<u64>>,
    ) -> Result<Bytes, Failed> {
        fetch(self.deadlines, &self.traffic, || {
            let options = GetOptions { range: range.clone().map(Into::into), ..GetOptions::default() };
            async move {
                let got = store.get_opts(path, options).await?;
                Ok((got.range.end - got.range.start, got.into_stream()))
            }
        })
        .await
    }

    /// Several ranges of one object, each a [`Watch::get`]: neighbours (less than 1 MiB apart) in
    /// one request, several requests at once. A failure says which range failed.
    pub async fn get_ranges(
        &self,
        store: &dyn ObjectStore,
        path: &ObjectPath,
        ranges: &[Range<u64>],
    ) -> Result<Vec<Bytes>, (Range<u64>, Failed)> {
        let get =
            |range: Range<u64>| async move { self.get(store, path, Some(range.clone())).await.map_err(|e| (range, e)) };
        coalesce_ranges(ranges, get, OBJECT_STORE_COALESCE_DEFAULT).await
    }

    /// [`bounded`] under these deadlines: `once` for what must not be repeated.
    pub async fn bounded<T, F>(&self, len: usize, once: bool, send: impl FnMut() -> F) -> Result<T, Failed>
    where
        F: Future<Output = object_store::Result<T>>,
    {
        let tries = if once { 1 } else { self.deadlines.attempts };
        bounded(self.deadlines, &self.traffic, len as u64, tries, send).await
    }

    /// [`collect`] under these deadlines.
    pub async fn collect<T>(
        &self,
        list: impl Fn() -> BoxStream<'static, object_store::Result<T>>,
    ) -> Result<Vec<T>, Failed> {
        collect(self.deadlines, list).await
    }
}

/// A response: its length and its body.
pub type Body<E> = (u64, BoxStream<'static, Result<Bytes, E>>);

/// What one request is doing, for the hedge decision and the failure's message.
#[derive(Debug)]
struct Progress {
    started: Instant,
    received: AtomicU64,
    /// `u64::MAX` until the response's head says.
    len: AtomicU64,
}

impl Progress {
    fn len(&self) -> Option<u64> {
        Some(self.len.load(Ordering::Relaxed)).filter(|l| *l != u64::MAX)
    }
}

enum Ended<E> {
    Store(E),
    Abandoned(Abandoned),
}

/// One request: its head within `stall`, then each chunk of its body within `stall`, the whole
/// within its size's limit (shared with the most requests in flight beside it).
async fn one<E>(
    d: Deadlines,
    traffic: &Traffic,
    open: impl Future<Output = Result<Body<E>, E>>,
    p: &Progress,
) -> Result<Bytes, Ended<E>> {
    let _flight = traffic.enter();
    let (len, mut body) = match timeout(d.stall, open).await {
        Err(_) => return Err(Ended::Abandoned(Abandoned::Stalled)),
        Ok(Err(e)) => return Err(Ended::Store(e)),
        Ok(Ok(response)) => response,
    };
    p.len.store(len, Ordering::Relaxed);
    let mut sharing = 1;
    let mut bytes = BytesMut::with_capacity(len.min(1 << 30) as usize);
    loop {
        sharing = sharing.max(traffic.in_flight());
        let left = (p.started + d.limit(len, sharing)).saturating_duration_since(Instant::now());
        let wait = d.stall.min(left);
        match timeout(wait, body.next()).await {
            Err(_) if wait < d.stall => return Err(Ended::Abandoned(Abandoned::TooSlow)),
            Err(_) => return Err(Ended::Abandoned(Abandoned::Stalled)),
            Ok(None) => return Ok(bytes.freeze()),
            Ok(Some(Err(e))) => return Err(Ended::Store(e)),
            Ok(Some(Ok(chunk))) => {
                bytes.extend_from_slice(&chunk);
                p.received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

/// A GET under the deadlines: `open` sends one request (a new one each call). Abandoned requests
/// are replaced, slow ones hedged; the first complete body wins.
pub async fn fetch<E, F, Fut>(d: Deadlines, traffic: &Traffic, open: F) -> Result<Bytes, Failure<E>>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Body<E>, E>>,
{
    let started = Instant::now();
    let mut running = FuturesUnordered::new();
    let mut watched: Vec<Arc<Progress>> = Vec::new();
    let mut requests = 0;
    let (mut received, mut len, mut last, mut answer) = (0, None, Abandoned::Stalled, None);
    let launch = |running: &mut FuturesUnordered<_>, watched: &mut Vec<Arc<Progress>>, requests: &mut u32| {
        let p =
            Arc::new(Progress { started: Instant::now(), received: AtomicU64::new(0), len: AtomicU64::new(u64::MAX) });
        watched.push(Arc::clone(&p));
        let request = open();
        *requests += 1;
        running.push(async move {
            let ended = one(d, traffic, request, &p).await;
            (p, ended)
        });
    };
    launch(&mut running, &mut watched, &mut requests);
    loop {
        let tick = tokio::time::sleep(HEDGE_CHECK);
        futures::pin_mut!(tick);
        match select(running.next(), tick).await {
            Either::Left((Some((p, ended)), _)) => {
                watched.retain(|w| !Arc::ptr_eq(w, &p));
                received = received.max(p.received.load(Ordering::Relaxed));
                len = len.or(p.len());
                match ended {
                    Ok(bytes) => {
                        traffic.record(bytes.len() as u64, p.started.elapsed());
                        return Ok(bytes);
                    }
                    Err(Ended::Store(e)) => answer = answer.or(Some(e)),
                    Err(Ended::Abandoned(why)) => {
                        last = why;
                        if answer.is_none() && requests < d.attempts {
                            launch(&mut running, &mut watched, &mut requests);
                        }
                    }
                }
                if running.is_empty() {
                    return Err(match answer {
                        Some(e) => Failure::Store(e),
                        None => {
                            Failure::GaveUp { requests, received, len, waited: started.elapsed(), last, deadlines: d }
                        }
                    });
                }
            }
            Either::Left((None, _)) => unreachable!("a request is always running here"),
            Either::Right(_) => {
                let hedge = match watched.as_slice() {
                    [only] => d.should_hedge(
                        only.started.elapsed(),
                        only.received.load(Ordering::Relaxed),
                        only.len(),
                        traffic.pace(),
                    ),
                    _ => false,
                };
                if hedge && answer.is_none() && requests < d.attempts {
                    launch(&mut running, &mut watched, &mut requests);
                }
            }
        }
    }
}

/// A request without a streamed body (PUT, HEAD, DELETE) moving `len` bytes: each try within its
/// size's limit (shared as a GET's is), up to `tries` tries (1 for what must not be repeated).
pub async fn bounded<T, E, F, Fut>(
    d: Deadlines,
    traffic: &Traffic,
    len: u64,
    tries: u32,
    mut send: F,
) -> Result<T, Failure<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    for _ in 0..tries {
        let (_flight, began, mut sharing) = (traffic.enter(), Instant::now(), 1);
        let request = send();
        futures::pin_mut!(request);
        loop {
            sharing = sharing.max(traffic.in_flight());
            let left = (began + d.limit(len, sharing)).saturating_duration_since(Instant::now());
            match timeout(left.min(SHARE_CHECK), &mut request).await {
                Ok(answer) => return answer.map_err(Failure::Store),
                Err(_) if left <= SHARE_CHECK => break,
                Err(_) => continue,
            }
        }
    }
    Err(Failure::GaveUp {
        requests: tries,
        received: 0,
        len: None,
        waited: started.elapsed(),
        last: Abandoned::TooSlow,
        deadlines: d,
    })
}

/// A listing: each page within `stall` of the one before, the whole listing tried again from
/// its start when one stalls.
pub async fn collect<T, E, F>(d: Deadlines, list: F) -> Result<Vec<T>, Failure<E>>
where
    F: Fn() -> BoxStream<'static, Result<T, E>>,
{
    let started = Instant::now();
    'tries: for _ in 0..d.attempts {
        let mut stream = list();
        let mut items = Vec::new();
        loop {
            match timeout(d.stall, stream.next()).await {
                Err(_) => continue 'tries,
                Ok(None) => return Ok(items),
                Ok(Some(item)) => items.push(item.map_err(Failure::Store)?),
            }
        }
    }
    Err(Failure::GaveUp {
        requests: d.attempts,
        received: 0,
        len: None,
        waited: started.elapsed(),
        last: Abandoned::Stalled,
        deadlines: d,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::AtomicU32;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_limit_grows_with_the_size_at_the_floor_rate() {
        let d = Deadlines::default();
        assert_eq!(d.limit(0, 1), S(30));
        assert_eq!(d.limit(256 << 10, 1), S(31));
        // An 8 MiB pack at 256 KiB/s: 32 s on top of the base.
        assert_eq!(d.limit(8 << 20, 1), S(62));
        // A slow but steady link (320 KB/s) moves 8 MiB well within it …
        assert!(Duration::from_secs_f64((8 << 20) as f64 / 320e3) < d.limit(8 << 20, 1));
        // … and when 16 requests share it, each is given its share's time.
        assert_eq!(d.limit(8 << 20, 16), S(30 + 16 * 32));
        assert!(Duration::from_secs_f64(16.0 * (8 << 20) as f64 / 320e3) < d.limit(8 << 20, 16));
        assert_eq!(d.limit(0, 0), d.limit(0, 1));
    }

    #[test]
    fn a_request_is_hedged_only_when_far_slower_than_expected() {
        let d = Deadlines::default();
        let mib = 1 << 20;
        // Pace 10 MiB/s: 8 MiB expected in 0.8 s, hedged from 3.2 s on, but never before stall/4.
        let pace = Some(10 * mib);
        assert!(!d.should_hedge(Duration::from_millis(3100), 0, Some(8 * mib), pace));
        assert!(!d.should_hedge(S(7), 0, Some(8 * mib), pace));
        assert!(d.should_hedge(S(8), 0, Some(8 * mib), pace));
        // Nearly done at a pace that finishes before a new request would: left alone.
        assert!(!d.should_hedge(S(8), 15 * mib / 2, Some(8 * mib), pace));
        // A third done after 8 s: 16 s to go against 0.8 s for a new one.
        assert!(d.should_hedge(S(8), 8 * mib / 3, Some(8 * mib), pace));
        // A small request: the floor of stall / 4.
        assert!(!d.should_hedge(S(7), 0, Some(4096), pace));
        assert!(d.should_hedge(S(8), 0, Some(4096), pace));
        // No head yet: the length is not known; what arrived counts.
        assert!(d.should_hedge(S(8), 0, None, pace));
        // Nothing known of the pace: the floor rate; an 8 MiB request (32 s at it) is not
        // hedged within its limit of 62 s …
        assert!(!d.should_hedge(S(61), 0, Some(8 * mib), None));
        // … a 1 MiB one (4 s) after 16 s, unless on its way at the floor rate.
        assert!(!d.should_hedge(S(15), 0, Some(mib), None));
        assert!(d.should_hedge(S(16), 0, Some(mib), None));
        assert!(!d.should_hedge(S(16), mib * 9 / 10, Some(mib), None));
    }

    #[test]
    fn the_pace_is_learnt_from_reads_large_enough() {
        let traffic = Traffic::default();
        assert_eq!(traffic.pace(), None);
        traffic.record(4096, Duration::from_millis(1));
        assert_eq!(traffic.pace(), None);
        traffic.record(1 << 20, S(1));
        assert_eq!(traffic.pace(), Some(1 << 20));
        traffic.record(5 << 20, S(1));
        assert_eq!(traffic.pace(), Some(2 << 20));
        let (a, b) = (traffic.enter(), traffic.enter());
        assert_eq!(traffic.in_flight(), 2);
        drop((a, b));
        assert_eq!(traffic.in_flight(), 0);
    }

    fn short() -> Deadlines {
        Deadlines { stall: Duration::from_millis(200), base: S(2), min_rate: 1 << 20, attempts: 3 }
    }

    /// A response of `len` bytes in chunks of 1 KiB, `gap` apart, that stops after `stop` bytes
    /// without ending.
    fn body(len: u64, stop: u64, gap: Duration) -> Result<Body<String>, String> {
        let chunks = futures::stream::unfold(0u64, move |sent| async move {
            if sent >= len {
                return None;
            }
            if sent >= stop {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(gap).await;
            let n = 1024.min(len - sent);
            Some((Ok(Bytes::from(vec![7u8; n as usize])), sent + n))
        });
        Ok((len, chunks.boxed()))
    }

    fn run<T>(future: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(future)
    }

    #[test]
    fn a_stalled_request_is_replaced_and_the_replacement_wins() {
        let sent = AtomicU32::new(0);
        let got = run(fetch(short(), &Traffic::default(), || {
            let n = sent.fetch_add(1, Ordering::Relaxed);
            async move { body(8192, if n == 0 { 3000 } else { u64::MAX }, Duration::ZERO) }
        }));
        assert_eq!(got.unwrap().len(), 8192);
        assert_eq!(sent.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_request_without_a_head_is_replaced() {
        let sent = AtomicU32::new(0);
        let got = run(fetch(short(), &Traffic::default(), || {
            let n = sent.fetch_add(1, Ordering::Relaxed);
            async move {
                if n == 0 {
                    std::future::pending::<()>().await;
                }
                body(100, u64::MAX, Duration::ZERO)
            }
        }));
        assert_eq!(got.unwrap().len(), 100);
    }

    #[test]
    fn every_request_stalled_fails_within_the_bound_saying_what_arrived() {
        let started = Instant::now();
        let got = run(fetch(short(), &Traffic::default(), || async { body(8192, 2048, Duration::ZERO) }));
        let message = got.unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_millis(1500), "took {:?}", started.elapsed());
        assert!(message.contains("gave up after 3 requests"), "{message}");
        assert!(message.contains("2048 of 8192 bytes received"), "{message}");
        assert!(message.contains("nothing arrived for 200ms"), "{message}");
    }

    #[test]
    fn a_steady_trickle_slower_than_the_floor_is_abandoned() {
        // 1 KiB every 50 ms (20 KiB/s) of 1 MiB against a floor of 1 MiB/s plus 2 s: never a
        // stall, but past its limit.
        let d = Deadlines { attempts: 1, ..short() };
        let started = Instant::now();
        let got = run(fetch(d, &Traffic::default(), || async { body(1 << 20, u64::MAX, Duration::from_millis(50)) }));
        let message = got.unwrap_err().to_string();
        assert!(message.contains("slower than 1024 KiB/s"), "{message}");
        let took = started.elapsed();
        assert!(took >= S(3) && took < S(4), "took {took:?}");
    }

    #[test]
    fn a_slow_request_is_hedged_and_the_hedge_wins() {
        // Pace known (1 MiB/s): 64 KiB should take 62 ms; the first request trickles.
        let traffic = Traffic::default();
        traffic.record(1 << 20, S(1));
        let d = Deadlines { stall: S(1), ..short() };
        let sent = AtomicU32::new(0);
        let started = Instant::now();
        let got = run(fetch(d, &traffic, || {
            let n = sent.fetch_add(1, Ordering::Relaxed);
            let gap = if n == 0 { Duration::from_millis(100) } else { Duration::ZERO };
            async move { body(64 << 10, u64::MAX, gap) }
        }));
        assert_eq!(got.unwrap().len(), 64 << 10);
        assert_eq!(sent.load(Ordering::Relaxed), 2, "one hedge");
        assert!(started.elapsed() < S(1), "took {:?}", started.elapsed());
    }

    #[test]
    fn the_stores_answer_ends_the_fetch_as_it_is() {
        let sent = AtomicU32::new(0);
        let got = run(fetch(short(), &Traffic::default(), || {
            sent.fetch_add(1, Ordering::Relaxed);
            async { Err::<Body<String>, _>("not found".to_string()) }
        }));
        assert!(matches!(got, Err(Failure::Store(e)) if e == "not found"));
        assert_eq!(sent.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn bounded_requests_and_listings_give_up_after_their_tries() {
        let d = Deadlines { base: Duration::from_millis(100), ..short() };
        let tries = AtomicU32::new(0);
        let got = run(bounded(d, &Traffic::default(), 0, 2, || {
            tries.fetch_add(1, Ordering::Relaxed);
            std::future::pending::<Result<(), String>>()
        }));
        assert!(got.unwrap_err().to_string().contains("gave up after 2 requests"));
        assert_eq!(tries.load(Ordering::Relaxed), 2);
        let lists = AtomicU32::new(0);
        let got = run(collect(d, || {
            let n = lists.fetch_add(1, Ordering::Relaxed);
            let pages = futures::stream::iter([Ok::<u32, String>(1), Ok(2)]);
            if n < 2 { pages.chain(futures::stream::pending()).boxed() } else { pages.boxed() }
        }));
        assert_eq!(got.unwrap(), vec![1, 2]);
        assert_eq!(lists.load(Ordering::Relaxed), 3);
    }
}
