//! A client of the daemon's Unix-socket API; the CLI and the tests use it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::api::types::{ErrorBody, ErrorDetail};
use crate::{StopOutcome, VmInfo, VmSpec, WaitFor};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the paddock daemon is not running (cannot connect to {socket:?}); start it with `paddock serve`")]
    DaemonNotRunning {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", .detail.message)]
    Api { status: StatusCode, detail: ErrorDetail },
    #[error("talking to the daemon failed: {0}")]
    Transport(String),
}

impl ClientError {
    /// The API's error kind, if the daemon answered with one.
    pub fn kind(&self) -> Option<&str> {
        match self {
            ClientError::Api { detail, .. } => Some(&detail.kind),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client { socket: socket.into() }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn send(&self, method: Method, path: &str, body: Option<Vec<u8>>, upgrade: bool) -> Result<hyper::Response<Incoming>> {
        self.send_with(method, path, body, upgrade.then(crate::api::console_protocol)).await
    }

    /// `upgrade`: the `Upgrade:` protocol to ask for, if any.
    async fn send_with(&self, method: Method, path: &str, body: Option<Vec<u8>>, upgrade: Option<&str>) -> Result<hyper::Response<Incoming>> {
        self.send_headers(method, path, body, upgrade, &[]).await
    }

    async fn send_headers(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        upgrade: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<hyper::Response<Incoming>> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::DaemonNotRunning { socket: self.socket.clone(), source })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut req = Request::builder().method(method).uri(path).header("host", "paddock");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        if let Some(protocol) = upgrade {
            req = req.header("connection", "Upgrade").header("upgrade", protocol);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        sender.send_request(req).await.map_err(|e| ClientError::Transport(e.to_string()))
    }

    async fn call(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Bytes> {
        let resp = self.send(method, path, body, false).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| ClientError::Transport(e.to_string()))?.to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        Err(api_error(status, &bytes))
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<T> {
        let bytes = self.call(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Transport(format!("bad response: {e}")))
    }

    pub async fn health(&self) -> Result<serde_json::Value> {
        self.json(Method::GET, "/v1/health", None).await
    }

    /// Waits until the daemon answers, up to `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.health().await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    pub async fn up(&self, spec: &VmSpec, wait: WaitFor, timeout_secs: u64) -> Result<VmInfo> {
        let body = serde_json::to_vec(spec).map_err(|e| ClientError::Transport(e.to_string()))?;
        self.up_raw(body, wait, timeout_secs).await
    }

    /// Sends a spec body as is (for callers that hold JSON already).
    pub async fn up_raw(&self, body: Vec<u8>, wait: WaitFor, timeout_secs: u64) -> Result<VmInfo> {
        let path = format!("/v1/vms?wait={}&timeout_secs={timeout_secs}", wait_str(wait));
        self.json(Method::POST, &path, Some(body)).await
    }

    pub async fn list(&self) -> Result<Vec<VmInfo>> {
        self.json(Method::GET, "/v1/vms", None).await
    }

    /// The VMs carrying every `key=value` label of `selectors`.
    pub async fn list_labeled(&self, selectors: &[&str]) -> Result<Vec<VmInfo>> {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for s in selectors {
            q.append_pair("label", s);
        }
        self.json(Method::GET, &format!("/v1/vms?{}", q.finish()), None).await
    }

    /// `up` with an idempotency key: the VM, and whether this answer is
    /// the first request's, replayed.
    pub async fn up_idempotent(&self, spec: &VmSpec, key: &str, wait: WaitFor, timeout_secs: u64) -> Result<(VmInfo, bool)> {
        let body = serde_json::to_vec(spec).map_err(|e| ClientError::Transport(e.to_string()))?;
        let path = format!("/v1/vms?wait={}&timeout_secs={timeout_secs}", wait_str(wait));
        let resp = self.send_headers(Method::POST, &path, Some(body), None, &[(crate::api::IDEMPOTENCY_KEY, key)]).await?;
        let status = resp.status();
        let replayed = resp.headers().contains_key(crate::api::IDEMPOTENT_REPLAYED);
        let bytes = resp.into_body().collect().await.map_err(|e| ClientError::Transport(e.to_string()))?.to_bytes();
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        let info = serde_json::from_slice(&bytes).map_err(|e| ClientError::Transport(format!("bad response: {e}")))?;
        Ok((info, replayed))
    }

    /// Waits (up to `timeout_secs`) until the VM's current run ends.
    pub async fn wait_exit(&self, name: &str, timeout_secs: u64) -> Result<crate::run_end::RunEnd> {
        self.json(Method::GET, &format!("/v1/vms/{name}/wait?until=exit&timeout_secs={timeout_secs}"), None).await
    }

    /// Per-VM figures (all VMs, or `name`).
    pub async fn stats(&self, name: Option<&str>) -> Result<Vec<crate::metrics::figures::VmFigures>> {
        let path = match name {
            Some(n) => format!("/v1/stats?name={}", form_urlencoded::byte_serialize(n.as_bytes()).collect::<String>()),
            None => "/v1/stats".to_string(),
        };
        self.json(Method::GET, &path, None).await
    }

    /// The Prometheus text exposition.
    pub async fn metrics(&self) -> Result<String> {
        let bytes = self.call(Method::GET, "/metrics", None).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// This host: version, backends, virtualisation, CPUs, memory, VMs.
    pub async fn host(&self) -> Result<crate::host::HostInfo> {
        self.json(Method::GET, "/v1/host", None).await
    }

    pub async fn get(&self, name: &str) -> Result<VmInfo> {
        self.json(Method::GET, &format!("/v1/vms/{name}"), None).await
    }

    pub async fn start(&self, name: &str, wait: WaitFor, timeout_secs: u64) -> Result<VmInfo> {
        let path = format!("/v1/vms/{name}/start?wait={}&timeout_secs={timeout_secs}", wait_str(wait));
        self.json(Method::POST, &path, None).await
    }

    pub async fn stop(&self, name: &str, graceful_secs: u64) -> Result<StopOutcome> {
        self.json(Method::POST, &format!("/v1/vms/{name}/stop?timeout_secs={graceful_secs}"), None).await
    }

    pub async fn pause(&self, name: &str) -> Result<VmInfo> {
        self.json(Method::POST, &format!("/v1/vms/{name}/pause"), None).await
    }

    pub async fn resume(&self, name: &str) -> Result<VmInfo> {
        self.json(Method::POST, &format!("/v1/vms/{name}/resume"), None).await
    }

    pub async fn remove(&self, name: &str, force: bool) -> Result<()> {
        self.remove_with(name, force, false).await
    }

    /// With `volumes`, the VM's data disk is deleted too.
    pub async fn remove_with(&self, name: &str, force: bool, volumes: bool) -> Result<()> {
        self.call(Method::DELETE, &format!("/v1/vms/{name}?force={force}&volumes={volumes}"), None).await.map(drop)
    }

    /// Snapshot of VM `name` (named `as_`, else `<name>-<unix seconds>`).
    pub async fn snapshot(&self, name: &str, as_: Option<&str>, then: crate::AfterSnapshot) -> Result<crate::SnapshotInfo> {
        let then = match then {
            crate::AfterSnapshot::Resume => "resume",
            crate::AfterSnapshot::Stop => "stop",
        };
        let named = as_.map(|s| format!("&as={s}")).unwrap_or_default();
        self.json(Method::POST, &format!("/v1/vms/{name}/snapshot?then={then}{named}"), None).await
    }

    pub async fn snapshots(&self) -> Result<Vec<crate::SnapshotInfo>> {
        self.json(Method::GET, "/v1/snapshots", None).await
    }

    pub async fn snapshot_remove(&self, snapshot: &str) -> Result<()> {
        self.call(Method::DELETE, &format!("/v1/snapshots/{snapshot}"), None).await.map(drop)
    }

    /// A new VM from `snapshot`, named `name` (else the snapshotted VM's).
    pub async fn restore(&self, snapshot: &str, name: Option<&str>, wait: WaitFor, timeout_secs: u64) -> Result<VmInfo> {
        let named = name.map(|n| format!("&name={n}")).unwrap_or_default();
        let path = format!("/v1/snapshots/{snapshot}/restore?wait={}&timeout_secs={timeout_secs}{named}", wait_str(wait));
        self.json(Method::POST, &path, None).await
    }

    /// Starts a pull; the body is NDJSON (progress lines, then the image or
    /// an error).
    pub async fn image_pull(&self, url: &str, sha256: &str) -> Result<Incoming> {
        let body = serde_json::to_vec(&serde_json::json!({ "url": url, "sha256": sha256 })).map_err(|e| ClientError::Transport(e.to_string()))?;
        let resp = self.send(Method::POST, "/v1/images", Some(body), false).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp.into_body());
        }
        let bytes = resp.into_body().collect().await.map_err(|e| ClientError::Transport(e.to_string()))?.to_bytes();
        Err(api_error(status, &bytes))
    }

    pub async fn image_list(&self) -> Result<Vec<crate::api::images::ImageInfo>> {
        self.json(Method::GET, "/v1/images", None).await
    }

    /// Where `paddock ssh` connects for this VM.
    pub async fn ssh_target(&self, name: &str) -> Result<crate::api::ssh::SshTarget> {
        self.json(Method::GET, &format!("/v1/vms/{name}/ssh"), None).await
    }

    /// Copies a file the daemon can read into its image cache by content.
    pub async fn image_import(&self, path: &std::path::Path) -> Result<crate::api::images::ImageInfo> {
        let body = serde_json::to_vec(&serde_json::json!({ "path": path })).map_err(|e| ClientError::Transport(e.to_string()))?;
        self.json(Method::POST, "/v1/images/import", Some(body)).await
    }

    pub async fn image_remove(&self, sha256: &str) -> Result<()> {
        self.call(Method::DELETE, &format!("/v1/images/{sha256}"), None).await.map(drop)
    }

    /// Asks the daemon to exit; with `stop_vms`, every VM is stopped first.
    pub async fn shutdown(&self, stop_vms: bool, graceful_secs: u64) -> Result<serde_json::Value> {
        self.shutdown_with(stop_vms, false, graceful_secs).await
    }

    /// With `suspend_vms`, every running VM is snapshotted and stopped
    /// first; the next daemon starts each from its snapshot.
    pub async fn shutdown_with(&self, stop_vms: bool, suspend_vms: bool, graceful_secs: u64) -> Result<serde_json::Value> {
        let path = format!("/v1/shutdown?stop_vms={stop_vms}&suspend_vms={suspend_vms}&timeout_secs={graceful_secs}");
        self.json(Method::POST, &path, None).await
    }

    /// The console as a byte stream (backlog, then live output if `follow`).
    pub async fn console(&self, name: &str, follow: bool) -> Result<Incoming> {
        self.stream(&format!("/v1/vms/{name}/console?follow={follow}")).await
    }

    /// The live console file from byte `offset` (at most 1 MiB), the
    /// offset to read next, and whether the file shrank below `offset`
    /// (rotated or truncated: the read started over at 0).
    pub async fn console_from(&self, name: &str, offset: u64) -> Result<(Bytes, u64, bool)> {
        let resp = self.send(Method::GET, &format!("/v1/vms/{name}/console?offset={offset}"), None, false).await?;
        let status = resp.status();
        let header = |h: &str| resp.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
        let next = header("paddock-console-next").and_then(|v| v.parse().ok());
        let restarted = header("paddock-console-restarted").is_some();
        let bytes = resp.into_body().collect().await.map_err(|e| ClientError::Transport(e.to_string()))?.to_bytes();
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        let next = next.ok_or_else(|| ClientError::Transport("no paddock-console-next header".into()))?;
        Ok((bytes, next, restarted))
    }

    /// NDJSON events after `since` (and live ones if `follow`).
    pub async fn events(&self, since: u64, follow: bool) -> Result<Incoming> {
        self.stream(&format!("/v1/events?since={since}&follow={follow}")).await
    }

    /// GET `path` as a byte stream (errors in the API shape).
    pub async fn stream(&self, path: &str) -> Result<Incoming> {
        let resp = self.send(Method::GET, path, None, false).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp.into_body());
        }
        let bytes = resp.into_body().collect().await.map_err(|e| ClientError::Transport(e.to_string()))?.to_bytes();
        Err(api_error(status, &bytes))
    }

    /// An interactive console: a raw duplex byte stream to the serial port.
    pub async fn attach(&self, name: &str) -> Result<TokioIo<hyper::upgrade::Upgraded>> {
        self.upgrade(&format!("/v1/vms/{name}/console/attach"), crate::api::console_protocol()).await
    }

    /// A raw duplex byte stream to port `port` of the guest's vsock.
    pub async fn vsock(&self, name: &str, port: u32) -> Result<TokioIo<hyper::upgrade::Upgraded>> {
        self.upgrade(&format!("/v1/vms/{name}/vsock/{port}"), crate::api::vsock_protocol()).await
    }

    /// Data disks, kept (after `rm`) or in use.
    pub async fn volumes(&self) -> Result<Vec<crate::VolumeInfo>> {
        self.json(Method::GET, "/v1/volumes", None).await
    }

    /// Deletes a kept data disk.
    pub async fn volume_remove(&self, name: &str) -> Result<()> {
        self.call(Method::DELETE, &format!("/v1/volumes/{name}"), None).await.map(drop)
    }

    async fn upgrade(&self, path: &str, protocol: &str) -> Result<TokioIo<hyper::upgrade::Upgraded>> {
        let resp = self.send_with(Method::GET, path, None, Some(protocol)).await?;
        let status = resp.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            let bytes = resp.into_body().collect().await.map_err(|e| ClientError::Transport(e.to_string()))?.to_bytes();
            return Err(api_error(status, &bytes));
        }
        let up = hyper::upgrade::on(resp).await.map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(TokioIo::new(up))
    }
}

fn wait_str(w: WaitFor) -> &'static str {
    match w {
        WaitFor::Running => "running",
        WaitFor::Ready => "ready",
    }
}

fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => ClientError::Api { status, detail: b.error },
        Err(_) => ClientError::Api {
            status,
            detail: ErrorDetail {
                kind: "internal".into(),
                message: format!("daemon answered {status}: {}", String::from_utf8_lossy(body).trim()),
                field: None,
            },
        },
    }
}
