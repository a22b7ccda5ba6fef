//! HTTP/1.1 over unix sockets for both APIs: a small server with hard
//! limits, `{"fault_message": ...}` errors, JSON bodies, and a client. Both
//! sides parse with httparse.
//!
//! The server is bounded so that no client can hurt the others or the
//! process: each connection has its own thread (at most a number the
//! caller sets at once, more are answered 503), a request must
//! arrive whole within [`REQUEST_TIMEOUT`], its head may not exceed
//! [`MAX_HEAD`] bytes, and its body is refused (413) from Content-Length
//! alone when over [`MAX_BODY`], before anything of it is read or
//! allocated. Handlers run only on complete requests, so a slow client
//! holds nothing but its own thread.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest request body either API accepts.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest request head (request line and header fields).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header fields in one request.
const MAX_HEADERS: usize = 64;
/// How long a request may take to arrive whole, from its first byte (or
/// from the accept, for a connection's first request).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a kept-alive connection may wait for its next request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writing one response may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection over the limit gets its 503 within this or not at all.
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_millis(100);

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

/// Why a request could not be read; those with a status are answered
/// before the connection is closed.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error(
        "request head larger than {MAX_HEAD} bytes or with more than {MAX_HEADERS} header fields"
    )]
    HeadTooLarge,
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("the request did not arrive whole within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
}

impl RequestError {
    fn status(&self) -> Option<u16> {
        match self {
            RequestError::HeadTooLarge => Some(431),
            RequestError::BodyTooLarge(_) => Some(413),
            RequestError::Timeout => Some(408),
            RequestError::Malformed(_) => Some(400),
            RequestError::Io(_) => None,
        }
    }
}

/// A request method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD (answered like GET, without the body).
    Head,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
    /// Any other.
    Other(String),
}

impl Method {
    fn parse(name: &str) -> Method {
        match name {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            other => Method::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Other(name) => name,
        })
    }
}

/// Who is at the other end of a connection, as the kernel recorded it
/// when the client connected (SO_PEERCRED, SO_PEERGROUPS): a client
/// cannot claim anyone else's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (empty when the kernel cannot tell).
    pub groups: Vec<u32>,
}

/// Reads socket option `opt` into `value`; returns the bytes written.
fn sockopt<T>(fd: std::os::fd::RawFd, opt: libc::c_int, value: &mut [T]) -> std::io::Result<usize> {
    let mut len = std::mem::size_of_val(value) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, which
    // is a live buffer of that size, and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            value.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(len as usize)
}

impl Peer {
    /// The credentials of the client on `stream`.
    pub fn of(stream: &UnixStream) -> std::io::Result<Peer> {
        use std::os::fd::AsRawFd;
        let fd = stream.as_raw_fd();
        let mut cred = [libc::ucred {
            pid: 0,
            uid: u32::MAX,
            gid: u32::MAX,
        }];
        sockopt(fd, libc::SO_PEERCRED, &mut cred)?;
        // NGROUPS_MAX is 65536; ask for a few and grow once if needed.
        let mut groups = vec![0u32; 64];
        let groups = match sockopt(fd, libc::SO_PEERGROUPS, &mut groups) {
            Ok(len) => {
                groups.truncate(len / 4);
                groups
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {
                let mut more = vec![0u32; 65536];
                let len = sockopt(fd, libc::SO_PEERGROUPS, &mut more).unwrap_or(0);
                more.truncate(len / 4);
                more
            }
            // Older kernels: no supplementary groups, which can only
            // deny access, never grant it.
            Err(_) => Vec::new(),
        };
        Ok(Peer {
            uid: cred[0].uid,
            gid: cred[0].gid,
            groups,
        })
    }
}

/// A complete request, body included.
#[derive(Debug)]
pub struct Request {
    method: Method,
    url: String,
    body: Vec<u8>,
    peer: Option<Peer>,
}

impl Request {
    /// A request as the server would have read it, from no particular
    /// client: for tests and the fuzz targets, which drive the handlers
    /// without a socket.
    pub fn new(method: &str, url: &str, body: Vec<u8>) -> Request {
        Request {
            method: Method::parse(method),
            url: url.to_string(),
            body,
            peer: None,
        }
    }

    /// The client's credentials; None if the kernel would not say.
    pub fn peer(&self) -> Option<&Peer> {
        self.peer.as_ref()
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request target as sent (path and query).
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// A response; the server adds Content-Length and Connection.
#[derive(Debug)]
pub struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    /// No body (204 for a successful PUT or PATCH).
    pub fn empty(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// `value` as JSON.
    pub fn json<T: Serialize>(status: u16, value: &T) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Response {
            status,
            headers: vec![("Content-Type", "application/json".into())],
            body,
        }
    }

    /// `err` as `{"fault_message": ...}`.
    pub fn error(err: &ApiError) -> Self {
        Self::json(
            err.status,
            &serde_json::json!({ "fault_message": err.message }),
        )
    }

    /// Plain text (console output).
    pub fn text(status: u16, body: Vec<u8>) -> Self {
        Response {
            status,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
            body,
        }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Adds a header field; `value` must be a valid field value (no CR
    /// or LF), which holds for the fixed strings the APIs send.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire, in one buffer so that one write sends them.
    fn encode(&self, with_body: bool, keep_alive: bool) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.status >= 200 && self.status != 204 && self.status != 304 {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        if !keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if with_body {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// A bound API socket; [`Server::serve`] answers on it.
pub struct Server {
    listener: UnixListener,
    max_body: usize,
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
    Ok(Server {
        listener,
        max_body: MAX_BODY,
    })
}

impl Server {
    /// Refuses request bodies over `bytes` (413) instead of [`MAX_BODY`].
    pub fn with_max_body(mut self, bytes: usize) -> Server {
        self.max_body = bytes;
        self
    }

    /// Serves forever: every connection on a thread of its own, at most
    /// `max_connections` at once, each complete request answered with what
    /// `handler` returns. Handlers may run at once on different
    /// connections. Each connection may hold up to [`MAX_HEAD`] plus the
    /// body limit ([`MAX_BODY`] unless set) and a thread, which is what
    /// `max_connections` bounds.
    pub fn serve<H>(self, max_connections: usize, handler: H) -> !
    where
        H: Fn(&Request) -> Response + Send + Sync + 'static,
    {
        let handler = Arc::new(handler);
        let max_body = self.max_body;
        let active = Arc::new(AtomicUsize::new(0));
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors or memory: give the running
                    // connections time to end instead of spinning.
                    log::warn!("accepting an API connection failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let Some(slot) = Slot::take(&active, max_connections) else {
                busy(stream, max_connections);
                continue;
            };
            let handler = handler.clone();
            let spawned = std::thread::Builder::new()
                .name("api-conn".into())
                .spawn(move || {
                    let _slot = slot;
                    connection_with_limit(stream, &*handler, max_body);
                });
            if let Err(e) = spawned {
                // The closure, and with it the connection, is dropped.
                log::warn!("cannot start a thread for an API connection: {e}");
            }
        }
    }
}

/// One of the places for a connection, given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(active: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        if active.fetch_add(1, Ordering::AcqRel) >= max {
            active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(active.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers a connection over the limit without reading from it.
fn busy(mut stream: UnixStream, max: usize) {
    let err = ApiError::new(
        503,
        format!("{max} API connections are open already; retry later"),
    );
    let resp = Response::error(&err).with_header("Retry-After", "1");
    let deadline = Instant::now() + BUSY_WRITE_TIMEOUT;
    if let Err(e) = write_by(&mut stream, &resp.encode(true, false), deadline) {
        log::debug!("API client went away: {e}");
    }
}

/// Serves the requests of one connection until it closes, fails, idles
/// out or asks to close. [`Server::serve`] runs it on a thread per
/// connection; tests and the fuzz targets call it on one end of a socket
/// pair.
/// Requests of this process between their handler's start and the end of
/// writing their response (see [`wait_for_responses`]).
static RESPONDING: AtomicUsize = AtomicUsize::new(0);

/// Counts one request as being answered while it lives.
struct Responding;

impl Responding {
    fn start() -> Self {
        RESPONDING.fetch_add(1, Ordering::SeqCst);
        Responding
    }
}

impl Drop for Responding {
    fn drop(&mut self) {
        RESPONDING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits until no request is being answered, at most `limit`: a process
/// about to exit lets the request that ended it (a power button the guest
/// answered at once) get its response out first.
pub fn wait_for_responses(limit: Duration) {
    let deadline = Instant::now() + limit;
    while RESPONDING.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Answers the requests of one connection with `handler`, bodies up to
/// [`MAX_BODY`].
pub fn connection(stream: UnixStream, handler: &dyn Fn(&Request) -> Response) {
    connection_with_limit(stream, handler, MAX_BODY)
}

/// [`connection`] with bodies up to `max_body` bytes.
fn connection_with_limit(
    mut stream: UnixStream,
    handler: &dyn Fn(&Request) -> Response,
    max_body: usize,
) {
    let peer = Peer::of(&stream)
        .map_err(|e| log::warn!("cannot read the credentials of an API client: {e}"))
        .ok();
    let mut buf = Vec::new();
    let mut wait_until = Instant::now() + REQUEST_TIMEOUT;
    loop {
        let (mut req, keep_alive) = match read_request(&mut stream, &mut buf, wait_until, max_body)
        {
            Ok(Some(got)) => got,
            Ok(None) => return,
            Err(e) => {
                log::debug!("dropping an API connection: {e}");
                if let Some(status) = e.status() {
                    let resp = Response::error(&ApiError::new(status, e.to_string()));
                    let deadline = Instant::now() + WRITE_TIMEOUT;
                    let _ = write_by(&mut stream, &resp.encode(true, false), deadline);
                }
                return;
            }
        };
        req.peer = peer.clone();
        let responding = Responding::start();
        let resp = handler(&req);
        let bytes = resp.encode(req.method != Method::Head, keep_alive);
        let written = write_by(&mut stream, &bytes, Instant::now() + WRITE_TIMEOUT);
        drop(responding);
        if let Err(e) = written {
            log::debug!("API client went away: {e}");
            return;
        }
        if !keep_alive {
            return;
        }
        wait_until = Instant::now() + IDLE_TIMEOUT;
    }
}

/// What the head of a request says.
struct Head {
    len: usize,
    method: Method,
    url: String,
    body_len: usize,
    keep_alive: bool,
    expect_continue: bool,
}

/// Reads one whole request. `wait_until` bounds the wait for its first
/// byte; from there it has [`REQUEST_TIMEOUT`]. `None`: the connection
/// closed or idled out between requests. Bytes past the request (a
/// pipelined next one) stay in `buf`.
fn read_request(
    stream: &mut UnixStream,
    buf: &mut Vec<u8>,
    wait_until: Instant,
    max_body: usize,
) -> Result<Option<(Request, bool)>, RequestError> {
    let mut deadline = wait_until;
    if !buf.is_empty() {
        deadline = deadline.min(Instant::now() + REQUEST_TIMEOUT);
    }
    let mut scanned = 0;
    let head = loop {
        // Parse only once a blank line may have arrived, so that a client
        // sending a byte at a time costs a scan of those bytes, not a parse
        // of the whole head each time.
        if has_blank_line(&buf[scanned..]) {
            if let Some(head) = parse_head(buf)? {
                // Judged before any of the body is read.
                if head.body_len > max_body {
                    return Err(RequestError::BodyTooLarge(max_body));
                }
                break head;
            }
        }
        scanned = buf.len().saturating_sub(3);
        if buf.len() >= MAX_HEAD {
            return Err(RequestError::HeadTooLarge);
        }
        let first = buf.is_empty();
        match fill(stream, buf, MAX_HEAD - buf.len(), deadline) {
            Ok(0) | Err(RequestError::Timeout) if first => return Ok(None),
            Ok(0) => return Err(eof()),
            Ok(_) => {}
            Err(e) => return Err(e),
        }
        if first {
            deadline = deadline.min(Instant::now() + REQUEST_TIMEOUT);
        }
    };
    let total = head.len + head.body_len;
    if head.expect_continue && buf.len() < total {
        write_by(stream, b"HTTP/1.1 100 Continue\r\n\r\n", deadline)?;
    }
    while buf.len() < total {
        if fill(stream, buf, total - buf.len(), deadline)? == 0 {
            return Err(eof());
        }
    }
    let rest = buf.split_off(total);
    let body = buf.split_off(head.len);
    *buf = rest;
    let req = Request {
        method: head.method,
        url: head.url,
        body,
        peer: None,
    };
    Ok(Some((req, head.keep_alive)))
}

fn eof() -> RequestError {
    RequestError::Io(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "closed in the middle of a request",
    ))
}

/// True if `bytes` hold the end of a head (an empty line, CRLF or LF).
fn has_blank_line(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

/// Parses a head; `None` if it is not complete yet.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, RequestError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::HeadTooLarge),
        Err(e) => return Err(RequestError::Malformed(e.to_string())),
    };
    let (Some(method), Some(url), Some(version)) = (req.method, req.path, req.version) else {
        return Err(RequestError::Malformed("incomplete request line".into()));
    };
    let mut head = Head {
        len,
        method: Method::parse(method),
        url: url.to_string(),
        body_len: 0,
        keep_alive: version >= 1,
        expect_continue: false,
    };
    let mut length = None;
    for field in req.headers.iter() {
        let name = field.name;
        let value = field.value.trim_ascii();
        if name.eq_ignore_ascii_case("content-length") {
            let n = content_length(value)?;
            if length.is_some_and(|m| m != n) {
                return Err(RequestError::Malformed(
                    "conflicting Content-Length fields".into(),
                ));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(RequestError::Malformed(
                "Transfer-Encoding is not supported: send the body with Content-Length".into(),
            ));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    head.keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    head.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    head.body_len = length.unwrap_or(0);
    Ok(Some(head))
}

/// The value of a Content-Length field. Digits are accumulated with
/// saturation: any value too large for usize is over every body limit,
/// which the caller applies before anything is sized from it.
fn content_length(value: &[u8]) -> Result<usize, RequestError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(RequestError::Malformed("invalid Content-Length".into()));
    }
    let n = value.iter().fold(0usize, |n, d| {
        n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
    });
    Ok(n)
}

/// Time left until `deadline`, if any.
fn left(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

/// Reads what arrives, at most `max` bytes, into `buf`; 0 at end of file.
fn fill(
    stream: &mut UnixStream,
    buf: &mut Vec<u8>,
    max: usize,
    deadline: Instant,
) -> Result<usize, RequestError> {
    let mut chunk = [0u8; 8192];
    let want = max.min(chunk.len());
    loop {
        let wait = left(deadline).ok_or(RequestError::Timeout)?;
        stream.set_read_timeout(Some(wait))?;
        match stream.read(&mut chunk[..want]) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(RequestError::Timeout)
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes all of `bytes` before `deadline`, however slowly the client
/// reads.
fn write_by(stream: &mut UnixStream, mut bytes: &[u8], deadline: Instant) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let wait = left(deadline).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "response not taken in time")
        })?;
        stream.set_write_timeout(Some(wait))?;
        match stream.write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Parses a JSON body, which must be an object: serde would also take an
/// array for a struct (its fields in order), which the specs do not allow.
pub fn json_body<T: DeserializeOwned>(req: &Request) -> Result<T, ApiError> {
    let found = match req.body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => None,
        None => Some("an empty body"),
        Some(b'[') => Some("an array"),
        Some(b'"') => Some("a string"),
        Some(b't' | b'f') => Some("a boolean"),
        Some(b'n') => Some("null"),
        Some(b'-' | b'0'..=b'9') => Some("a number"),
        Some(_) => Some("something that is not JSON"),
    };
    if let Some(found) = found {
        return Err(ApiError::bad_request(format!(
            "invalid request body: expected a JSON object, found {found}"
        )));
    }
    serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// The response for a handler's result: JSON, text or empty on success,
/// an error body otherwise.
pub fn reply(result: Result<Reply, ApiError>) -> Response {
    match result {
        Ok(Reply::Json(status, value)) => Response::json(status, &value),
        Ok(Reply::Empty(status)) => Response::empty(status),
        Ok(Reply::Text(status, text)) => Response::text(status, text),
        Err(e) => Response::error(&e),
    }
}

/// A successful handler result.
pub enum Reply {
    /// A JSON body.
    Json(u16, serde_json::Value),
    /// No body.
    Empty(u16),
    /// A plain-text body (console output).
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `connection` on one end of a socket pair with a handler that
    /// echoes the method, target and body; sends `input`, then returns all
    /// the server wrote until it closed.
    fn exchange(input: &[u8]) -> String {
        let (mut client, server) = UnixStream::pair().unwrap();
        let served = std::thread::spawn(move || {
            connection(server, &|req: &Request| {
                let text = format!("{} {} {}", req.method(), req.url(), req.body.len());
                Response::text(200, text.into_bytes())
            })
        });
        client.write_all(input).unwrap();
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match client.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                // The server closed with part of the input unread.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("{e}"),
            }
        }
        served.join().unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn pipelined_requests_with_bodies() {
        let out = exchange(
            b"PUT /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b?x=1 HTTP/1.1\r\n\r\nHEAD /c HTTP/1.0\r\n\r\n",
        );
        let answers: Vec<&str> = out.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
        assert_eq!(answers.len(), 3, "{out}");
        assert!(answers[0].ends_with("\r\n\r\nPUT /a 3"), "{out}");
        assert!(answers[1].ends_with("\r\n\r\nGET /b?x=1 0"), "{out}");
        // HEAD: the length of the body it would have, no body; and
        // HTTP/1.0 closes unless asked not to.
        assert!(answers[2].contains("Content-Length: 9\r\n"), "{out}");
        assert!(answers[2].ends_with("Connection: close\r\n\r\n"), "{out}");
    }

    #[test]
    fn limits_are_checked_before_reading() {
        let out = exchange(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
        assert!(out.contains("Connection: close"), "{out}");
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(exchange(big.as_bytes()).starts_with("HTTP/1.1 431 "));
        for bad in [
            &b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"[..],
            b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"\x01\x02 nonsense\r\n\r\n",
        ] {
            let out = exchange(bad);
            assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        }
    }

    #[test]
    fn expect_continue_is_answered() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let served = std::thread::spawn(move || {
            connection(server, &|req: &Request| {
                Response::text(200, req.body.clone())
            })
        });
        client
            .write_all(b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut interim = [0u8; 25];
        client.read_exact(&mut interim).unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        client.write_all(b"ok").unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).unwrap();
        served.join().unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200 ") && out.ends_with("\r\n\r\nok"),
            "{out}"
        );
    }

    #[test]
    fn json_bodies_must_be_objects() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Pair {
            a: u32,
            b: u32,
        }
        let req = |body: &str| Request {
            method: Method::Put,
            url: "/".into(),
            body: body.as_bytes().to_vec(),
            peer: None,
        };
        assert!(json_body::<Pair>(&req(" {\"a\":1,\"b\":2}")).is_ok());
        for (body, found) in [
            ("[1,2]", "an array"),
            ("", "an empty body"),
            ("7", "a number"),
            ("null", "null"),
        ] {
            let err = json_body::<Pair>(&req(body)).unwrap_err();
            assert_eq!(err.status, 400);
            assert!(
                err.message
                    .ends_with(&format!("expected a JSON object, found {found}")),
                "{err}"
            );
        }
    }
}
