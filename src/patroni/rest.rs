//! Patroni's REST API, as pgfork uses it: a member's status, the cluster's members, pausing and
//! resuming automatic failover, reinitialising a replica. Reads are open; the unsafe calls carry
//! the member's Basic credentials when its configuration sets them.

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::util::runtime::block_on;

/// A member's `GET /patroni`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MemberStatus {
    /// `running`, `stopped`, `starting`, `creating replica`, …
    #[serde(default)]
    pub state: String,
    /// `primary`, `replica`, `demoted`, `uninitialized`.
    #[serde(default)]
    pub role: String,
    /// Its timeline (absent while PostgreSQL is down).
    pub timeline: Option<u32>,
    /// Present and true only while the cluster is paused.
    pub pause: Option<bool>,
    /// `streaming` on a replica that streams.
    pub replication_state: Option<String>,
    /// The cluster's system identifier.
    pub database_system_identifier: Option<String>,
}

/// One member in `GET /cluster`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClusterMember {
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// `leader`, `replica`, …
    #[serde(default)]
    pub role: String,
    /// Its state (a replica's replication state when it has one).
    #[serde(default)]
    pub state: String,
    /// Its REST address (`…/patroni`).
    #[serde(default)]
    pub api_url: String,
    /// Its timeline.
    pub timeline: Option<u32>,
}

/// `GET /cluster`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClusterStatus {
    /// The members.
    #[serde(default)]
    pub members: Vec<ClusterMember>,
    /// True while paused.
    pub pause: Option<bool>,
    /// A scheduled switchover, when one is.
    pub scheduled_switchover: Option<serde_json::Value>,
    /// The scope.
    pub scope: Option<String>,
}

impl ClusterMember {
    /// The member's REST base address (`http://host:port`).
    pub fn rest(&self) -> String {
        self.api_url.trim_end_matches("/patroni").trim_end_matches('/').to_string()
    }
}

/// A client of one member's REST API.
pub struct Rest {
    base: String,
    auth: Option<(String, String)>,
    client: reqwest::Client,
}

impl Rest {
    /// A client of the member at `base` (`http://host:port`).
    pub fn new(base: &str, auth: Option<(String, String)>) -> Result<Rest> {
        crate::util::runtime::install_crypto();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| Error::invalid(format!("Patroni REST client for {base}"), e.to_string()))?;
        Ok(Rest { base: base.trim_end_matches('/').to_string(), auth, client })
    }

    /// The same credentials for another member.
    pub fn member(&self, base: &str) -> Result<Rest> {
        Rest::new(base, self.auth.clone())
    }

    /// The address.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<serde_json::Value>) -> Result<(u16, String)> {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.request(method.clone(), &url);
        if let Some((user, password)) = &self.auth
            && method != reqwest::Method::GET
        {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let result = block_on(async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            Ok::<_, reqwest::Error>((status, response.text().await?))
        });
        result.map_err(|e| Error::invalid(format!("Patroni REST API {method} {url}"), e.to_string()))
    }

    fn get_json<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T> {
        let (status, text) = self.call(reqwest::Method::GET, path, None)?;
        // Status endpoints answer 503 with the same body when the member is not what they ask.
        if status != 200 && status != 503 {
            return Err(Error::invalid(format!("Patroni {}{path}", self.base), format!("HTTP {status}: {text}")));
        }
        serde_json::from_str(&text).map_err(|e| Error::invalid(format!("Patroni {}{path}", self.base), e.to_string()))
    }

    /// `GET /patroni`.
    pub fn status(&self) -> Result<MemberStatus> {
        self.get_json("/patroni")
    }

    /// `GET /cluster`.
    pub fn cluster(&self) -> Result<ClusterStatus> {
        self.get_json("/cluster")
    }

    /// Whether `GET /primary` answers 200: this member holds the leader key and runs as primary.
    pub fn is_primary(&self) -> bool {
        matches!(self.call(reqwest::Method::GET, "/primary", None), Ok((200, _)))
    }

    /// `PATCH /config {"pause": …}`: pauses or resumes automatic failover for the whole cluster.
    pub fn set_pause(&self, pause: bool) -> Result<()> {
        let body =
            serde_json::json!({ "pause": if pause { serde_json::Value::Bool(true) } else { serde_json::Value::Null } });
        self.expect_ok(reqwest::Method::PATCH, "/config", Some(body))
    }

    /// `POST /reinitialize {"force": true}` on this member (a replica): rebuilt from the leader.
    pub fn reinitialize(&self) -> Result<()> {
        self.expect_ok(reqwest::Method::POST, "/reinitialize", Some(serde_json::json!({ "force": true })))
    }

    fn expect_ok(&self, method: reqwest::Method, path: &str, body: Option<serde_json::Value>) -> Result<()> {
        let (status, text) = self.call(method.clone(), path, body)?;
        match status {
            200 => Ok(()),
            401 | 403 => Err(Error::refused(
                format!("Patroni {} refused {method} {path} (HTTP {status})", self.base),
                Some("pgfork reads restapi.authentication from the member's Patroni configuration; check it".into()),
            )),
            _ => Err(Error::invalid(
                format!("Patroni {method} {}{path}", self.base),
                format!("HTTP {status}: {}", text.trim()),
            )),
        }
    }
}

/// Polls `check` every 200 ms until it holds (`Ok(true)`) or `timeout` passes; `what` names it.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e.to_string()),
        }
        if Instant::now() > deadline {
            return Err(Error::invalid(
                what,
                format!(
                    "not reached within {} s{}",
                    timeout.as_secs(),
                    last_error.map(|e| format!(" (last error: {e})")).unwrap_or_default()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
