//! The metadata store and the HTTP answers the guest gets from it.
//!
//! The host fills the store (`PUT`/`PATCH /mmds`); the guest reads it over
//! HTTP as Firecracker's MMDS serves it: a path is a JSON pointer into the
//! store, answered as JSON (`Accept: application/json`) or in EC2's IMDS
//! text format. Version 2 wants a session token from
//! `PUT /latest/api/token` on every read; version 1 takes reads without.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// The store's default limit, in bytes of its JSON text (Firecracker's).
pub const DEFAULT_SIZE_LIMIT: usize = 51200;
/// Where the guest asks for a session token.
const TOKEN_PATH: &str = "/latest/api/token";
/// A token's lifetime bounds, in seconds (EC2's: up to 6 hours).
const TTL_SECONDS: std::ops::RangeInclusive<u32> = 1..=21600;
/// Live tokens kept at most: a guest asking for more loses its oldest.
/// Each is about 100 bytes, so the guest cannot grow the VMM with them.
const MAX_TOKENS: usize = 1024;
const TOKEN_HEADERS: [&str; 2] = ["x-metadata-token", "x-aws-ec2-metadata-token"];
const TTL_HEADERS: [&str; 2] = [
    "x-metadata-token-ttl-seconds",
    "x-aws-ec2-metadata-token-ttl-seconds",
];

/// How the guest may read the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MmdsVersion {
    /// Reads need no token (tokens are still handed out).
    #[default]
    V1,
    /// Every read needs a live session token.
    V2,
}

/// Why the host's change to the store was refused; nothing changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// `PATCH` before any `PUT`.
    #[error("The MMDS data store is not initialized: PUT /mmds first.")]
    NotInitialized,
    /// The store would outgrow its limit.
    #[error(
        "The MMDS data store would hold {size} bytes, more than its limit of {limit} \
         (--mmds-size-limit)."
    )]
    TooLarge {
        /// Bytes the store would have held.
        size: usize,
        /// Its limit.
        limit: usize,
    },
}

/// The store shared by the API (which writes it) and every network
/// interface that serves it to the guest.
#[derive(Debug)]
pub struct Mmds {
    data: Value,
    initialized: bool,
    limit: usize,
    version: MmdsVersion,
    imds_compat: bool,
    /// Live tokens and when each expires.
    tokens: HashMap<String, Instant>,
}

impl Default for Mmds {
    fn default() -> Self {
        Self::new(DEFAULT_SIZE_LIMIT)
    }
}

/// A request of the guest, as the HTTP parser left it.
#[derive(Debug)]
pub struct GuestRequest<'a> {
    /// The method, as sent.
    pub method: &'a str,
    /// The request target, as sent.
    pub target: &'a str,
    /// Header names (any case) and values.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// HTTP/1.x minor version.
    pub minor_version: u8,
}

impl GuestRequest<'_> {
    fn header(&self, names: &[&str]) -> Option<(&str, &[u8])> {
        self.headers
            .iter()
            .find(|(n, _)| names.iter().any(|w| n.eq_ignore_ascii_case(w)))
            .map(|&(n, v)| (n, v))
    }
}

/// An answer to the guest.
#[derive(Debug, PartialEq, Eq)]
pub struct GuestResponse {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl GuestResponse {
    fn text(status: u16, body: impl Into<String>) -> Self {
        GuestResponse {
            status,
            content_type: "text/plain",
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// The response on the wire, for HTTP/1.`minor`.
    pub fn to_bytes(&self, minor: u8, close: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            413 => "Payload Too Large",
            501 => "Not Implemented",
            _ => "Error",
        };
        let mut head = format!(
            "HTTP/1.{minor} {} {reason}\r\nServer: strato\r\nContent-Type: {}\r\n\
             Content-Length: {}\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        for (n, v) in &self.headers {
            let _ = write!(head, "{n}: {v}\r\n");
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

/// Applies an RFC 7396 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(doc) = target {
        for (key, value) in changes {
            if value.is_null() {
                doc.remove(key);
            } else {
                merge_patch(doc.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// A request path as a JSON pointer: repeated slashes are one, a query is
/// dropped, an absolute URI loses its scheme and host, and a trailing slash
/// names the object itself.
fn pointer(target: &str) -> Option<String> {
    let mut path = target;
    if let Some(rest) = path.strip_prefix("http://") {
        path = rest.find('/').map_or("/", |i| &rest[i..]);
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    if out.ends_with('/') {
        out.pop();
    }
    Some(out)
}

/// EC2's text format: an object lists its keys (objects with a trailing
/// slash), a string is itself; nothing else has a text form.
fn imds_text(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => Some(
            m.iter()
                .map(|(k, v)| {
                    if v.is_object() {
                        format!("{k}/")
                    } else {
                        k.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// A token the guest cannot guess: 32 bytes from the kernel's generator.
fn new_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    crate::virtio::rng::fill(&mut bytes).ok()?;
    Some(bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

impl Mmds {
    /// An empty store that holds at most `limit` bytes of JSON.
    pub fn new(limit: usize) -> Self {
        Mmds {
            data: Value::Null,
            initialized: false,
            limit,
            version: MmdsVersion::V1,
            imds_compat: false,
            tokens: HashMap::new(),
        }
    }

    /// Sets how the guest reads the store.
    pub fn configure(&mut self, version: MmdsVersion, imds_compat: bool) {
        self.version = version;
        self.imds_compat = imds_compat;
    }

    /// The version the guest reads with.
    pub fn version(&self) -> MmdsVersion {
        self.version
    }

    /// Replaces the contents.
    pub fn put(&mut self, data: Value) -> Result<(), StoreError> {
        self.check_size(&data)?;
        self.data = data;
        self.initialized = true;
        Ok(())
    }

    /// Merges `patch` into the contents (RFC 7396), or changes nothing.
    pub fn patch(&mut self, patch: &Value) -> Result<(), StoreError> {
        if !self.initialized {
            return Err(StoreError::NotInitialized);
        }
        let mut next = self.data.clone();
        merge_patch(&mut next, patch);
        self.check_size(&next)?;
        self.data = next;
        Ok(())
    }

    fn check_size(&self, data: &Value) -> Result<(), StoreError> {
        let size = serde_json::to_vec(data).map_or(usize::MAX, |b| b.len());
        if size > self.limit {
            return Err(StoreError::TooLarge {
                size,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// The contents (an empty object before the first `put`).
    pub fn data(&self) -> Value {
        match &self.data {
            Value::Null => Value::Object(Map::new()),
            v => v.clone(),
        }
    }

    fn token_is_live(&self, token: &[u8], now: Instant) -> bool {
        std::str::from_utf8(token)
            .ok()
            .and_then(|t| self.tokens.get(t.trim()))
            .is_some_and(|&expiry| expiry > now)
    }

    fn issue_token(&mut self, ttl: u32, now: Instant) -> Option<String> {
        self.tokens.retain(|_, &mut expiry| expiry > now);
        if self.tokens.len() >= MAX_TOKENS {
            let oldest = self
                .tokens
                .iter()
                .min_by_key(|(_, &expiry)| expiry)
                .map(|(t, _)| t.clone());
            if let Some(t) = oldest {
                self.tokens.remove(&t);
            }
        }
        let token = new_token()?;
        self.tokens
            .insert(token.clone(), now + Duration::from_secs(u64::from(ttl)));
        Some(token)
    }

    /// Answers one request of the guest at `now`.
    pub fn respond(&mut self, req: &GuestRequest, now: Instant) -> GuestResponse {
        let Some(path) = pointer(req.target) else {
            return GuestResponse::text(400, "Invalid URI.");
        };
        match req.method {
            "GET" => self.get(req, &path, now),
            "PUT" => self.put_token(req, &path, now),
            _ => {
                let mut r = GuestResponse::text(405, "Not allowed HTTP method.");
                r.headers.push(("Allow".into(), "GET, PUT".into()));
                r
            }
        }
    }

    fn get(&self, req: &GuestRequest, path: &str, now: Instant) -> GuestResponse {
        if self.version == MmdsVersion::V2 {
            match req.header(&TOKEN_HEADERS) {
                None => {
                    return GuestResponse::text(
                        401,
                        "No MMDS token provided. Use `X-metadata-token` or \
                         `X-aws-ec2-metadata-token` header to specify the session token.",
                    )
                }
                Some((_, t)) if !self.token_is_live(t, now) => {
                    return GuestResponse::text(401, "MMDS token not valid.")
                }
                Some(_) => {}
            }
        }
        let Some(value) = self.data.pointer(path) else {
            return GuestResponse::text(404, format!("Resource not found: {}.", req.target));
        };
        let json = !self.imds_compat
            && req.header(&["accept"]).is_some_and(|(_, v)| {
                String::from_utf8_lossy(v)
                    .split(',')
                    .any(|t| t.split(';').next().unwrap_or("").trim() == "application/json")
            });
        if json {
            return GuestResponse {
                status: 200,
                content_type: "application/json",
                headers: Vec::new(),
                body: value.to_string(),
            };
        }
        match imds_text(value) {
            Some(body) => GuestResponse::text(200, body),
            None => GuestResponse::text(
                501,
                "Cannot retrieve value. The value has an unsupported type.",
            ),
        }
    }

    fn put_token(&mut self, req: &GuestRequest, path: &str, now: Instant) -> GuestResponse {
        // A request that came through a proxy in the guest is refused, so a
        // forwarded request cannot obtain a token (IMDSv2's rule).
        if req.header(&["x-forwarded-for"]).is_some() {
            return GuestResponse::text(400, "Unsupported header name. Key: X-Forwarded-For");
        }
        if path != TOKEN_PATH {
            return GuestResponse::text(404, format!("Resource not found: {}.", req.target));
        }
        let Some((name, value)) = req.header(&TTL_HEADERS) else {
            return GuestResponse::text(
                400,
                "Token time to live value not found. Use `X-metadata-token-ttl-seconds` \
                 or `X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's \
                 lifetime.",
            );
        };
        let ttl = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|t| TTL_SECONDS.contains(t));
        let Some(ttl) = ttl else {
            return GuestResponse::text(
                400,
                format!(
                    "Invalid value. Key:{name}; Value:{}. The time to live must be {} to {} \
                     seconds.",
                    String::from_utf8_lossy(value),
                    TTL_SECONDS.start(),
                    TTL_SECONDS.end()
                ),
            );
        };
        match self.issue_token(ttl, now) {
            Some(token) => {
                let mut r = GuestResponse::text(200, token);
                r.headers.push((name.to_string(), ttl.to_string()));
                r
            }
            None => GuestResponse::text(500, "No random bytes for a token."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn get(m: &mut Mmds, target: &str, headers: &[(&str, &[u8])]) -> GuestResponse {
        let req = GuestRequest {
            method: "GET",
            target,
            headers,
            minor_version: 1,
        };
        m.respond(&req, Instant::now())
    }

    fn token(m: &mut Mmds, ttl: &str) -> GuestResponse {
        let headers: &[(&str, &[u8])] = &[("X-metadata-token-ttl-seconds", ttl.as_bytes())];
        let req = GuestRequest {
            method: "PUT",
            target: "/latest/api/token",
            headers,
            minor_version: 1,
        };
        m.respond(&req, Instant::now())
    }

    fn store() -> Mmds {
        let mut m = Mmds::default();
        m.put(json!({"latest": {"meta-data": {"ami-id": "ami-1", "n": 5, "tags": {}}}}))
            .unwrap();
        m
    }

    #[test]
    fn reads_in_imds_and_json_form() {
        let mut m = store();
        let r = get(&mut m, "/latest/meta-data", &[]);
        assert_eq!((r.status, r.body.as_str()), (200, "ami-id\nn\ntags/"));
        let r = get(&mut m, "//latest//meta-data/ami-id/", &[]);
        assert_eq!((r.status, r.body.as_str()), (200, "ami-1"));
        let accept: &[(&str, &[u8])] = &[("Accept", b"application/json")];
        let r = get(&mut m, "/latest/meta-data/ami-id", accept);
        assert_eq!((r.status, r.body.as_str()), (200, "\"ami-1\""));
        assert_eq!(r.content_type, "application/json");
        let r = get(&mut m, "/latest/meta-data/n", &[]);
        assert_eq!(r.status, 501);
        assert_eq!(get(&mut m, "/latest/meta-data/n", accept).body, "5");
        assert_eq!(get(&mut m, "/nothing", &[]).status, 404);
        assert_eq!(get(&mut m, "latest", &[]).status, 400);
        assert_eq!(get(&mut m, "/?x=1", &[]).body, "latest/");
        m.configure(MmdsVersion::V1, true);
        assert_eq!(
            get(&mut m, "/latest/meta-data/ami-id", accept).body,
            "ami-1"
        );
    }

    #[test]
    fn version_2_wants_a_live_token() {
        let mut m = store();
        m.configure(MmdsVersion::V2, false);
        assert_eq!(get(&mut m, "/latest", &[]).status, 401);
        let t = token(&mut m, "60");
        assert_eq!(t.status, 200);
        assert_eq!(t.body.len(), 64);
        assert_eq!(t.headers[0].1, "60");
        let ok: &[(&str, &[u8])] = &[("x-metadata-token", t.body.as_bytes())];
        assert_eq!(get(&mut m, "/latest", ok).status, 200);
        let bad: &[(&str, &[u8])] = &[("X-aws-ec2-metadata-token", b"forged")];
        assert_eq!(get(&mut m, "/latest", bad).status, 401);
        for ttl in ["0", "21601", "x", "-1"] {
            assert_eq!(token(&mut m, ttl).status, 400, "{ttl}");
        }
        // An expired token is refused.
        let later = Instant::now() + Duration::from_secs(61);
        let req = GuestRequest {
            method: "GET",
            target: "/latest",
            headers: ok,
            minor_version: 1,
        };
        assert_eq!(m.respond(&req, later).status, 401);
        // Version 1 reads without one.
        m.configure(MmdsVersion::V1, false);
        assert_eq!(get(&mut m, "/latest", &[]).status, 200);
    }

    #[test]
    fn token_requests_are_checked() {
        let mut m = store();
        let fwd: &[(&str, &[u8])] = &[
            ("X-metadata-token-ttl-seconds", b"60"),
            ("X-Forwarded-For", b"10.0.0.1"),
        ];
        let req = |target, headers| GuestRequest {
            method: "PUT",
            target,
            headers,
            minor_version: 1,
        };
        assert_eq!(m.respond(&req(TOKEN_PATH, fwd), Instant::now()).status, 400);
        assert_eq!(m.respond(&req("/latest", &[]), Instant::now()).status, 404);
        assert_eq!(m.respond(&req(TOKEN_PATH, &[]), Instant::now()).status, 400);
        let post = GuestRequest {
            method: "POST",
            target: "/",
            headers: &[],
            minor_version: 1,
        };
        let r = m.respond(&post, Instant::now());
        assert_eq!(r.status, 405);
        assert_eq!(r.headers[0], ("Allow".into(), "GET, PUT".into()));
    }

    #[test]
    fn tokens_are_bounded() {
        let mut m = store();
        for _ in 0..MAX_TOKENS + 10 {
            assert_eq!(token(&mut m, "100").status, 200);
        }
        assert_eq!(m.tokens.len(), MAX_TOKENS);
    }

    #[test]
    fn patches_merge_and_limits_hold() {
        let mut m = Mmds::new(64);
        assert_eq!(m.patch(&json!({})), Err(StoreError::NotInitialized));
        assert_eq!(m.data(), json!({}));
        m.put(json!({"a": {"b": "c", "d": "e"}, "f": 1})).unwrap();
        m.patch(&json!({"a": {"b": null, "x": "y"}, "f": [1]}))
            .unwrap();
        assert_eq!(m.data(), json!({"a": {"d": "e", "x": "y"}, "f": [1]}));
        let big = json!({"k": "v".repeat(100)});
        assert!(matches!(
            m.put(big.clone()),
            Err(StoreError::TooLarge { .. })
        ));
        assert!(matches!(m.patch(&big), Err(StoreError::TooLarge { .. })));
        assert_eq!(m.data(), json!({"a": {"d": "e", "x": "y"}, "f": [1]}));
    }

    #[test]
    fn responses_are_well_formed() {
        let r = GuestResponse::text(200, "abc");
        let text = String::from_utf8(r.to_bytes(0, true)).unwrap();
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.ends_with("Connection: close\r\n\r\nabc"));
    }
}
