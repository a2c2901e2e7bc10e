//! A client of Cloud Hypervisor's HTTP API on its Unix socket: one HTTP/1
//! connection per call (CH serves one request at a time anyway), and the
//! whole exchange (connect, send, read the body) under one deadline, so a
//! socket that accepts and never answers cannot hang a caller.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::UnixStream;

use super::api::{VmConfig, VmInfo, VmmPingResponse};
use crate::backend::ControlError;

/// An answer body larger than this is a protocol error.
const MAX_BODY: usize = 4 << 20;

#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

/// CH's words from an error answer: it sends the chain of its error
/// messages as a JSON array (`["Error from API","The VM could not boot",
/// ...]`), shown joined as one sentence; anything else as text.
pub fn describe(body: &[u8]) -> String {
    match serde_json::from_slice::<Vec<String>>(body) {
        Ok(chain) => chain.join(": "),
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    }
}

/// Failure to reach the socket at all (nobody listens, or no file).
fn is_absent(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused)
}

impl ApiClient {
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        ApiClient { socket: socket.into(), timeout }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Waits until the API socket accepts connections, at most `timeout`.
    pub async fn wait_for_socket(&self, timeout: Duration) -> Result<(), ControlError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match UnixStream::connect(&self.socket).await {
                Ok(_) => return Ok(()),
                Err(e) if is_absent(&e) && tokio::time::Instant::now() < deadline => {
                    // CH creates the socket shortly after it starts.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(source) => return Err(ControlError::Connect { path: self.socket.clone(), source }),
            }
        }
    }

    /// One request; returns the status and body of any answer, 2xx or not.
    pub async fn request(&self, method: Method, endpoint: &str, body: Option<Vec<u8>>) -> Result<(StatusCode, Bytes), ControlError> {
        let what = format!("cloud-hypervisor {endpoint}");
        match tokio::time::timeout(self.timeout, self.exchange(method, endpoint, body)).await {
            Ok(r) => r,
            Err(_) => Err(ControlError::Timeout { what, timeout_ms: self.timeout.as_millis() as u64 }),
        }
    }

    async fn exchange(&self, method: Method, endpoint: &str, body: Option<Vec<u8>>) -> Result<(StatusCode, Bytes), ControlError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ControlError::Connect { path: self.socket.clone(), source })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ControlError::Protocol(format!("HTTP handshake: {e}")))?;
        let conn = tokio::spawn(conn);
        let mut req = Request::builder().method(method).uri(format!("http://localhost/api/v1/{endpoint}")).header("host", "localhost");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ControlError::Protocol(format!("request: {e}")))?;
        let result = async {
            // A connection closed before the answer: the process is going
            // away (e.g. vmm.shutdown exits before replying).
            let resp = sender.send_request(req).await.map_err(|_| ControlError::Closed)?;
            let status = resp.status();
            let bytes = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|_| ControlError::Closed)?
                .to_bytes();
            Ok((status, bytes))
        }
        .await;
        conn.abort();
        result
    }

    /// A request that must succeed (2xx); anything else is a command error
    /// carrying CH's own words.
    async fn ok(&self, method: Method, endpoint: &str, body: Option<Vec<u8>>) -> Result<Bytes, ControlError> {
        let (status, bytes) = self.request(method, endpoint, body).await?;
        if status.is_success() {
            return Ok(bytes);
        }
        Err(ControlError::Command { command: endpoint.to_string(), class: status.as_u16().to_string(), desc: describe(&bytes) })
    }

    fn parse<T: DeserializeOwned>(endpoint: &str, bytes: &[u8]) -> Result<T, ControlError> {
        serde_json::from_slice(bytes).map_err(|e| ControlError::Protocol(format!("{endpoint} answer does not match the API spec: {e}")))
    }

    pub async fn ping(&self) -> Result<VmmPingResponse, ControlError> {
        let b = self.ok(Method::GET, "vmm.ping", None).await?;
        Self::parse("vmm.ping", &b)
    }

    /// `None` when no VM is created yet: 404 as the API document says;
    /// older CH releases answered 500 with CH's `VmNotCreated` message.
    pub async fn info(&self) -> Result<Option<VmInfo>, ControlError> {
        let (status, bytes) = self.request(Method::GET, "vm.info", None).await?;
        let not_created = || String::from_utf8_lossy(&bytes).contains("VM is not created");
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::INTERNAL_SERVER_ERROR if not_created() => Ok(None),
            s if s.is_success() => Self::parse("vm.info", &bytes).map(Some),
            s => Err(ControlError::Command { command: "vm.info".into(), class: s.as_u16().to_string(), desc: describe(&bytes) }),
        }
    }

    pub async fn create(&self, config: &VmConfig) -> Result<(), ControlError> {
        let body = serde_json::to_vec(config).map_err(|e| ControlError::Protocol(format!("vm.create body: {e}")))?;
        self.ok(Method::PUT, "vm.create", Some(body)).await.map(drop)
    }

    /// A PUT action with a JSON body (vm.snapshot, vm.restore).
    pub async fn put_json(&self, endpoint: &str, body: &serde_json::Value) -> Result<(), ControlError> {
        self.ok(Method::PUT, endpoint, Some(body.to_string().into_bytes())).await.map(drop)
    }

    /// `vm.create` with a body already encoded (the launch plan's payload).
    pub async fn create_body(&self, body: &serde_json::Value) -> Result<(), ControlError> {
        let body = serde_json::to_vec(body).map_err(|e| ControlError::Protocol(format!("vm.create body: {e}")))?;
        self.ok(Method::PUT, "vm.create", Some(body)).await.map(drop)
    }

    /// A body-less PUT action: vm.boot, vm.pause, vm.resume, vm.shutdown,
    /// vm.power-button, vmm.shutdown.
    pub async fn put(&self, endpoint: &str) -> Result<(), ControlError> {
        self.ok(Method::PUT, endpoint, None).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn silent_socket_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let l = UnixListener::bind(&path).unwrap();
        let hold = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(s);
        });
        let c = ApiClient::new(&path, Duration::from_millis(200));
        let e = c.ping().await.unwrap_err();
        assert!(matches!(e, ControlError::Timeout { .. }), "{e}");
        hold.abort();
    }

    #[tokio::test]
    async fn a_peer_that_hangs_up_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let l = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            let _ = s.shutdown().await;
        });
        let c = ApiClient::new(&path, Duration::from_secs(5));
        let e = c.put("vmm.shutdown").await.unwrap_err();
        assert!(matches!(e, ControlError::Closed), "{e}");
    }

    #[test]
    fn error_chains_read_as_one_sentence() {
        let body = br#"["Error from API","The VM could not boot","Error binding to the host-side Unix socket","Address already in use (os error 98)"]"#;
        assert_eq!(
            describe(body),
            "Error from API: The VM could not boot: Error binding to the host-side Unix socket: Address already in use (os error 98)"
        );
        assert_eq!(describe(b" plain text\n"), "plain text");
    }

    #[tokio::test]
    async fn missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let c = ApiClient::new(dir.path().join("none.sock"), Duration::from_secs(1));
        let e = c.wait_for_socket(Duration::from_millis(50)).await.unwrap_err();
        assert!(matches!(e, ControlError::Connect { .. }), "{e}");
    }
}
