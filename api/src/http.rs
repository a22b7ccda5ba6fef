//! HTTP over unix sockets for both APIs: a tiny_http server bound safely
//! (mode 0600, stale sockets replaced only when dead), JSON bodies with a
//! size cap, `{"fault_message": ...}` errors, and a small client whose
//! response parsing is httparse's.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tiny_http::{Header, Request, Response, Server};

/// Largest request body either API accepts.
pub const MAX_BODY: usize = 64 * 1024;

/// An error that becomes an HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// Human-readable reason, sent as `fault_message`.
    pub message: String,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

/// Errors binding a socket.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Something already serves on the path.
    #[error("{0} is in use by a running server")]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// An OS call failed.
    #[error("cannot listen on {0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
}

/// Listens on `path` with mode 0600 (or 0660 and group `gid`). A socket
/// file already there is replaced only if nothing answers on it. The socket
/// is bound under a temporary name and renamed into place, so it is never
/// reachable with looser permissions.
pub fn bind(path: &Path, gid: Option<u32>) -> Result<Server, BindError> {
    let io = |e| BindError::Io(path.to_path_buf(), e);
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(BindError::NotASocket(path.to_path_buf()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io)?;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    let setup = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = setup {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Server::from_listener(listener, None).map_err(|e| io(std::io::Error::other(e.to_string())))
}

/// Reads and parses a JSON body, refusing bodies over [`MAX_BODY`] (413)
/// and anything that is not valid JSON for `T` (400).
pub fn json_body<T: DeserializeOwned>(req: &mut Request) -> Result<T, ApiError> {
    if req.body_length().is_some_and(|n| n > MAX_BODY) {
        return Err(ApiError::new(
            413,
            format!("request body larger than {MAX_BODY} bytes"),
        ));
    }
    let mut body = Vec::new();
    req.as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
    if body.len() > MAX_BODY {
        return Err(ApiError::new(
            413,
            format!("request body larger than {MAX_BODY} bytes"),
        ));
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

fn json_header() -> Header {
    Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).expect("static header")
}

/// Sends `value` as JSON with `status`.
pub fn respond_json<T: Serialize>(req: Request, status: u16, value: &T) {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let resp = Response::from_data(body)
        .with_status_code(status)
        .with_header(json_header());
    if let Err(e) = req.respond(resp) {
        log::debug!("client went away: {e}");
    }
}

/// Sends an empty response (204 for a successful PUT or PATCH).
pub fn respond_empty(req: Request, status: u16) {
    if let Err(e) = req.respond(Response::empty(status)) {
        log::debug!("client went away: {e}");
    }
}

/// Sends `err` as `{"fault_message": ...}`.
pub fn respond_error(req: Request, err: &ApiError) {
    respond_json(
        req,
        err.status,
        &serde_json::json!({ "fault_message": err.message }),
    );
}

/// Sends the result of a handler: JSON or empty on success, an error body
/// otherwise.
pub fn respond(req: Request, result: Result<Reply, ApiError>) {
    match result {
        Ok(Reply::Json(status, value)) => respond_json(req, status, &value),
        Ok(Reply::Empty(status)) => respond_empty(req, status),
        Ok(Reply::Text(status, text)) => {
            let resp = Response::from_data(text).with_status_code(status);
            let _ = req.respond(resp);
        }
        Err(e) => respond_error(req, &e),
    }
}

/// A successful handler result.
pub enum Reply {
    /// A JSON body.
    Json(u16, serde_json::Value),
    /// No body.
    Empty(u16),
    /// A raw body (console output).
    Text(u16, Vec<u8>),
}

/// A response read by [`call`].
#[derive(Debug)]
pub struct ClientResponse {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl ClientResponse {
    /// The body as JSON (Null when empty or not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The server's `fault_message`, or the body as text.
    pub fn message(&self) -> String {
        match self.json().get("fault_message").and_then(|m| m.as_str()) {
            Some(m) => m.to_string(),
            None => String::from_utf8_lossy(&self.body).into_owned(),
        }
    }
}

/// Sends one request over the unix socket at `sock` and reads the response.
pub fn call(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> std::io::Result<ClientResponse> {
    let mut stream = UnixStream::connect(sock)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    if !body.is_empty() || method != "GET" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    stream.write_all(req.as_bytes())?;

    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a full response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let parsed = resp
            .parse(&buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        let httparse::Status::Complete(head_len) = parsed else {
            continue;
        };
        let status = resp.code.unwrap_or(0);
        let length = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            });
        let mut body = buf[head_len..].to_vec();
        match length {
            Some(len) => {
                while body.len() < len {
                    let n = stream.read(&mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
                body.truncate(len);
            }
            None => {
                stream.read_to_end(&mut body)?;
            }
        }
        return Ok(ClientResponse { status, body });
    }
}
