//! A repository in a bucket of an S3-compatible object store (AWS S3, MinIO, Ceph RGW, SeaweedFS,
//! Garage), through `object_store`, driven from synchronous code by the process's one runtime.
//!
//! Every put is a whole object (multipart above 64 MiB, four parts in flight), so a reader sees an
//! object whole or not at all, and a put that returned is durable. Requests are retried with
//! backoff on 5xx, throttling, timeouts and refused connections. Exclusive create uses
//! `If-None-Match: *` when the server honours it — probed by stanza-create and recorded, since some
//! servers (Garage 2.5) silently overwrite — and otherwise a protocol that stays safe without it:
//! each creator announces its content under a candidate key, then lists the candidates and looks
//! for the object; only a creator that finds neither another content nor the object writes it.
//!
//! Every request runs under the repository's progress deadlines ([`deadline`]): a read that stalls
//! or crawls is abandoned and sent again on a new connection, a far slower one hedged, and after a
//! few requests the read fails naming the object, the range and what arrived.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, Certificate, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutPayload, RetryConfig,
    WriteMultipart,
};
use xxhash_rust::xxh3::xxh3_128;

use crate::config::S3Credentials;
use crate::error::{Error, Result};
use crate::repo::storage::deadline::{Deadlines, Failed, Failure, Watch};
use crate::repo::storage::{Held, ObjectMeta, Storage, expiring};
use crate::util::runtime::block_on;

/// Objects larger than this are uploaded in parts.
const MULTIPART_ABOVE: usize = 64 << 20;
/// Size of one part.
const PART: usize = 8 << 20;
/// Parts uploaded at once.
const PARTS_IN_FLIGHT: usize = 4;
/// Where creators without conditional writes announce their content, beside the object's key.
const CANDIDATES: &str = ".pgfork-candidates";
/// A candidate older than this was left by a creator that died.
const STALE_CANDIDATE: Duration = Duration::from_secs(3600);
/// The HTTP client's timeout for one request, beyond any the deadlines allow a healthy one.
const BACKSTOP: Duration = Duration::from_secs(3600);

/// Where the bucket is and how to reach it.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `http(s)://host:port`.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// The region (for the signature).
    pub region: String,
    /// A key prefix inside the bucket (`pg` or empty).
    pub prefix: String,
    /// `https://bucket.endpoint/key` instead of `https://endpoint/bucket/key`.
    pub host_style: bool,
    /// Verify the endpoint's certificate.
    pub verify_tls: bool,
    /// Certificate authorities (PEM) to trust besides the system's.
    pub ca_file: Option<PathBuf>,
    /// The keys.
    pub credentials: S3Credentials,
    /// How long requests may take.
    pub deadlines: Deadlines,
}

/// Whether the server honours `If-None-Match: *`.
const EXCLUSIVE_UNKNOWN: u8 = 0;
const EXCLUSIVE_HONOURED: u8 = 1;
const EXCLUSIVE_IGNORED: u8 = 2;

/// A repository in a bucket.
pub struct S3Storage {
    store: AmazonS3,
    prefix: String,
    location: String,
    exclusive: AtomicU8,
    fetched: AtomicU64,
    watch: Watch,
}

impl S3Storage {
    /// A client for the bucket (nothing is requested yet).
    pub fn new(settings: &S3Settings) -> Result<S3Storage> {
        // The TLS stack needs its cryptography chosen once per process.
        crate::util::runtime::install_crypto();
        let location = format!(
            "s3://{}/{} at {}",
            settings.bucket,
            settings.prefix.trim_matches('/'),
            settings.endpoint.trim_end_matches('/')
        );
        // HTTP/1 only, so that dropping a request drops its connection (see `deadline`), which
        // bounds every request: the client's own timeout is only a backstop.
        let mut client = ClientOptions::new()
            .with_allow_http(settings.endpoint.starts_with("http://"))
            .with_http1_only()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(BACKSTOP);
        if !settings.verify_tls {
            client = client.with_allow_invalid_certificates(true);
        }
        if let Some(ca) = &settings.ca_file {
            let pem = std::fs::read(ca).map_err(|e| Error::io("read", ca, e))?;
            let certificate = Certificate::from_pem(&pem)
                .map_err(|e| Error::invalid(ca.display().to_string(), format!("not a PEM certificate: {e}")))?;
            client = client.with_root_certificate(certificate);
        }
        // About half a minute of backoff: a server restarting, a node failing over.
        let retry = RetryConfig {
            max_retries: 10,
            retry_timeout: Duration::from_secs(120),
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
        };
        let mut builder = AmazonS3Builder::new()
            .with_endpoint(&settings.endpoint)
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_access_key_id(&settings.credentials.access_key_id)
            .with_secret_access_key(&settings.credentials.secret_access_key)
            .with_virtual_hosted_style_request(settings.host_style)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_client_options(client)
            .with_retry(retry);
        if let Some(token) = &settings.credentials.session_token {
            builder = builder.with_token(token);
        }
        let store = builder.build().map_err(|e| Error::invalid(format!("S3 repository {location}"), e.to_string()))?;
        let prefix = match settings.prefix.trim_matches('/') {
            "" => String::new(),
            prefix => format!("{prefix}/"),
        };
        Ok(S3Storage {
            store,
            prefix,
            location,
            exclusive: AtomicU8::new(EXCLUSIVE_UNKNOWN),
            fetched: AtomicU64::new(0),
            watch: Watch::new(settings.deadlines),
        })
    }

    /// Finds out whether the server honours `If-None-Match: *`: creates a probe object twice; a
    /// server that lets the second create overwrite the first does not.
    fn probe(&self) -> Result<bool> {
        let mut token = [0u8; 8];
        getrandom::fill(&mut token).expect("the operating system's random source works");
        let key = format!(".pgfork-probe-{}", crate::repo::crypto::to_hex(&token));
        let path = self.path(&key)?;
        let create = |body: &'static [u8]| {
            block_on(self.watch.bounded(0, true, || self.store.put_opts(&path, body.into(), PutMode::Create.into())))
        };
        create(b"first").map_err(|e| self.failed("probe conditional create at", &key, e))?;
        let honoured = match create(b"second") {
            Err(e) if taken(&e) => true,
            Ok(_) => false,
            Err(e) => {
                let _ = self.delete(&key);
                return Err(self.failed("probe conditional create at", &key, e));
            }
        };
        self.delete(&key)?;
        self.set_exclusive_create(honoured);
        Ok(honoured)
    }

    fn path(&self, key: &str) -> Result<ObjectPath> {
        let full = format!("{}{}", self.prefix, key.trim_end_matches('/'));
        ObjectPath::parse(&full).map_err(|e| Error::invalid(format!("repository key {key:?}"), e.to_string()))
    }

    /// The repository key of a listed object (its bucket key without the prefix).
    fn key_of(&self, path: &ObjectPath) -> Option<String> {
        path.as_ref().strip_prefix(&self.prefix).map(str::to_string)
    }

    /// An error naming the object and the bucket, with a refusal for what the user must fix
    /// (credentials, a missing bucket). Credentials never appear: object_store's messages carry
    /// the URL, never the keys.
    /// A failure of the deadlines says what was asked, how often, and what arrived.
    fn failed(&self, action: &str, key: &str, failure: Failed) -> Error {
        let error = match failure {
            Failure::Store(error) => error,
            gave_up => return Error::invalid(format!("{action} {key} in {}", self.location), gave_up.to_string()),
        };
        let text = error.to_string();
        match error {
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                Error::refused(
                    format!("access to {} was denied ({action} {key}): {text}", self.location),
                    Some("check the credentials (credentials_file or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and the region".into()),
                )
            }
            _ if text.contains("NoSuchBucket") => Error::refused(
                format!("the bucket of {} does not exist", self.location),
                Some("create the bucket, or correct bucket and endpoint in the configuration".into()),
            ),
            _ => Error::invalid(format!("{action} {key} in {}", self.location), text),
        }
    }

    fn put_whole(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(key)?;
        if bytes.len() <= MULTIPART_ABOVE {
            let payload = PutPayload::from(bytes::Bytes::copy_from_slice(bytes));
            let put = || self.store.put(&path, payload.clone());
            return block_on(self.watch.bounded(bytes.len(), false, put))
                .map(drop)
                .map_err(|e| self.failed("put", key, e));
        }
        // Once: a repeated upload would leave the first one's parts behind.
        let (store, path) = (&self.store, &path);
        block_on(self.watch.bounded(bytes.len(), true, move || async move {
            let upload = store.put_multipart(path).await?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
            for chunk in bytes.chunks(PART) {
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                writer.write(chunk);
            }
            writer.finish().await
        }))
        .map(drop)
        .map_err(|e| self.failed("put", key, e))
    }

    /// Every object under `prefix`, candidates included.
    fn list_raw(&self, prefix: &str) -> Result<Vec<object_store::ObjectMeta>> {
        let path = self.path(prefix)?;
        block_on(self.watch.collect(|| self.store.list(Some(&path)))).map_err(|e| self.failed("list", prefix, e))
    }

    /// Exclusive create without conditional writes (see the module's documentation).
    fn put_new_by_candidates(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        if self.stat(key)?.is_some() {
            return Ok(false);
        }
        let mut token = [0u8; 8];
        getrandom::fill(&mut token).expect("the operating system's random source works");
        let digest = format!("{:032x}", xxh3_128(bytes));
        let candidates = format!("{key}{CANDIDATES}/");
        let mine = format!("{candidates}{digest}-{}", crate::repo::crypto::to_hex(&token));
        self.put_whole(&mine, b"")?;
        let outcome = (|| {
            let rival = self
                .list_raw(&candidates)?
                .iter()
                .any(|c| !c.location.as_ref().rsplit('/').next().unwrap_or_default().starts_with(&digest));
            if self.stat(key)?.is_some() {
                return Ok(false);
            }
            if rival {
                return Err(Error::refused(
                    format!("{key} is being created in {} with other content at the same time", self.location),
                    Some("another process writes the same name now; try again".into()),
                ));
            }
            self.put_whole(key, bytes)?;
            Ok(true)
        })();
        let _ = self.delete(&mine);
        outcome
    }
}

/// A "not found" of the object, not of the bucket.
fn absent(failure: &Failed) -> bool {
    matches!(failure, Failure::Store(object_store::Error::NotFound { source, .. }) if !source.to_string().contains("NoSuchBucket"))
}

/// A conditional create's "it exists".
fn taken(failure: &Failed) -> bool {
    matches!(
        failure,
        Failure::Store(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. })
    )
}

impl Storage for S3Storage {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        self.put_whole(key, bytes)
    }

    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        if self.exclusive.load(Ordering::Relaxed) != EXCLUSIVE_HONOURED || bytes.len() > MULTIPART_ABOVE {
            return self.put_new_by_candidates(key, bytes);
        }
        let path = self.path(key)?;
        let payload = PutPayload::from(bytes::Bytes::copy_from_slice(bytes));
        let create = || self.store.put_opts(&path, payload.clone(), PutMode::Create.into());
        match block_on(self.watch.bounded(bytes.len(), false, create)) {
            Ok(_) => Ok(true),
            // A retried create whose first attempt landed also ends here: the caller compares.
            Err(e) if taken(&e) => Ok(false),
            Err(e) => Err(self.failed("create", key, e)),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key)?;
        match block_on(self.watch.get(&self.store, &path, None)) {
            Ok(bytes) => {
                self.fetched.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(Some(bytes.to_vec()))
            }
            Err(e) if absent(&e) => Ok(None),
            Err(e) => Err(self.failed("get", key, e)),
        }
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        Ok(self.get_ranges(key, &[(offset, len)])?.pop().unwrap_or_default())
    }

    fn get_ranges(&self, key: &str, ranges: &[(u64, u64)]) -> Result<Vec<Vec<u8>>> {
        let path = self.path(key)?;
        let wanted: Vec<std::ops::Range<u64>> = ranges.iter().map(|(o, l)| *o..o + l).collect();
        let got = block_on(self.watch.get_ranges(&self.store, &path, &wanted)).map_err(|(range, e)| {
            self.failed("get", &format!("{key} (bytes {}-{})", range.start, range.end.saturating_sub(1)), e)
        })?;
        let mut out = Vec::with_capacity(got.len());
        for (bytes, (offset, len)) in got.into_iter().zip(ranges) {
            if bytes.len() as u64 != *len {
                return Err(Error::invalid(
                    format!("{key} in {}", self.location),
                    format!("{} bytes at {offset}, expected {len}: the object is shorter", bytes.len()),
                ));
            }
            self.fetched.fetch_add(*len, Ordering::Relaxed);
            out.push(bytes.to_vec());
        }
        Ok(out)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut objects: Vec<ObjectMeta> = self
            .list_raw(prefix)?
            .into_iter()
            .filter_map(|meta| {
                let key = self.key_of(&meta.location)?;
                (!key.contains(CANDIDATES)).then(|| ObjectMeta {
                    key,
                    size: meta.size,
                    modified: SystemTime::from(meta.last_modified),
                })
            })
            .collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    fn stat(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path(key)?;
        match block_on(self.watch.bounded(0, false, || self.store.head(&path))) {
            Ok(meta) => {
                Ok(Some(ObjectMeta { key: key.to_string(), size: meta.size, modified: meta.last_modified.into() }))
            }
            Err(e) if absent(&e) => Ok(None),
            Err(e) => Err(self.failed("stat", key, e)),
        }
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match block_on(self.watch.bounded(0, false, || self.store.delete(&path))) {
            Ok(()) | Err(Failure::Store(object_store::Error::NotFound { .. })) => Ok(()),
            Err(e) => Err(self.failed("delete", key, e)),
        }
    }

    fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let path = self.path(prefix)?;
        // Each result within the stall timeout; a stalled run starts again from its listing.
        let delete = || {
            let locations = self.store.list(Some(&path)).map_ok(|meta| meta.location).boxed();
            let results = self.store.delete_stream(locations);
            results.filter(|r| std::future::ready(!matches!(r, Err(object_store::Error::NotFound { .. })))).boxed()
        };
        block_on(self.watch.collect(delete)).map(drop).map_err(|e| self.failed("delete", prefix, e))
    }

    fn exists(&self) -> Result<bool> {
        // A listing (unlike a HEAD) says in its body whether the bucket is missing.
        let path = self.path("")?;
        match block_on(self.watch.bounded(0, false, || self.store.list_with_delimiter(Some(&path)))) {
            Ok(_) => Ok(true),
            Err(Failure::Store(e)) if e.to_string().contains("NoSuchBucket") => Ok(false),
            Err(e) => Err(self.failed("list", "", e)),
        }
    }

    fn remove_stale(&self, prefix: &str) -> Result<u64> {
        let mut removed = 0;
        for meta in self.list_raw(prefix)? {
            let old = SystemTime::from(meta.last_modified).elapsed().is_ok_and(|age| age > STALE_CANDIDATE);
            if meta.location.as_ref().contains(CANDIDATES) && old {
                let key = self.key_of(&meta.location).unwrap_or_default();
                self.delete(&key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn fetched_bytes(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    fn probe_exclusive_create(&self) -> Result<Option<bool>> {
        self.probe().map(Some)
    }

    fn set_exclusive_create(&self, honoured: bool) {
        self.exclusive.store(if honoured { EXCLUSIVE_HONOURED } else { EXCLUSIVE_IGNORED }, Ordering::Relaxed);
    }

    fn lock(self: Arc<Self>, key: &str, holder: &str) -> Result<Box<dyn Held>> {
        expiring::lock(self, key, holder)
    }

    fn lease(self: Arc<Self>, key: &str, record: &[u8]) -> Result<Box<dyn Held>> {
        expiring::lease(self, key, record)
    }

    fn leases(&self, prefix: &str) -> Result<Vec<Vec<u8>>> {
        expiring::leases(self, prefix)
    }
}
