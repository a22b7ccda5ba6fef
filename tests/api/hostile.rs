//! Hostile HTTP clients, the same for both API sockets: a Content-Length
//! beyond memory, requests that stall half way, a huge header. Each attack
//! is made with raw bytes on a unix socket, then the server must still
//! answer another client promptly.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{alive, raw_request};

/// How soon a server must answer another client during or after an attack.
const PROMPT: Duration = Duration::from_secs(1);
/// The servers' whole-request deadline (`http::REQUEST_TIMEOUT`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Headroom over the deadline for a loaded machine.
const SLACK: Duration = Duration::from_secs(3);
/// The servers' head limit (`http::MAX_HEAD`).
const MAX_HEAD: usize = 16 * 1024;

/// What a server sent back on one connection.
struct Answer {
    /// Status of the first response, if one came.
    status: Option<u16>,
    /// Everything received.
    text: String,
    /// The server closed the connection (rather than the wait ending).
    closed: bool,
}

/// Connects and sends `bytes`; a server that closes early may refuse the
/// rest, which is fine.
fn send(sock: &Path, bytes: &[u8]) -> UnixStream {
    let mut s = UnixStream::connect(sock).expect("connect to the API socket");
    let _ = s.write_all(bytes);
    s
}

/// Reads until the server closes the connection or `wait` passes.
fn answer(mut s: UnixStream, wait: Duration) -> Answer {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break false;
        };
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("set a read timeout");
        match s.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            // Unread bytes of ours were dropped with the connection.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false
            }
            Err(e) => panic!("reading the answer: {e}"),
        }
    };
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok());
    Answer {
        status,
        text,
        closed,
    }
}

/// Resident memory of `pid`, KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Asserts that `GET probe` answers 200 within [`PROMPT`].
fn assert_prompt(sock: &Path, probe: &str, after: &str) {
    let start = Instant::now();
    let r = raw_request(sock, "GET", probe, None, PROMPT)
        .unwrap_or_else(|e| panic!("GET {probe} after {after}: {e}"));
    let took = start.elapsed();
    assert_eq!(r.status, 200, "GET {probe} after {after}: {}", r.text());
    assert!(took < PROMPT, "GET {probe} after {after} took {took:?}");
}

/// Runs every attack on the API socket `sock` of process `pid`, which
/// serves `max_connections` at once; `probe` is a path that answers 200 to
/// GET.
pub fn check(sock: &Path, pid: i32, probe: &str, max_connections: usize) {
    huge_content_length(sock, pid, probe);
    huge_head(sock, pid, probe);
    stalled_requests(sock, probe, max_connections);
    keep_alive_and_pipelining(sock, probe);
    assert!(alive(pid), "the server died");
}

/// A Content-Length beyond memory is refused from the header alone, on
/// any request, and the process lives on.
fn huge_content_length(sock: &Path, pid: i32, probe: &str) {
    for (method, path) in [("POST", probe), ("GET", probe), ("PUT", "/nope")] {
        for length in ["99999999999999", "184467440737095516150000"] {
            let head =
                format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n");
            let a = answer(send(sock, head.as_bytes()), SLACK);
            assert_eq!(
                a.status,
                Some(413),
                "{method} {path} length {length}: {}",
                a.text
            );
            assert!(a.text.contains("larger than"), "{}", a.text);
            assert!(a.closed, "the connection stays open after a 413");
            assert_prompt(sock, probe, "a huge Content-Length");
            assert!(alive(pid), "the server died after a huge Content-Length");
        }
    }
    let a = answer(
        send(sock, b"PUT /x HTTP/1.1\r\nContent-Length: 12abc\r\n\r\n"),
        SLACK,
    );
    assert_eq!(a.status, Some(400), "{}", a.text);
}

/// A head over the limit is answered 431 without being read, and costs no
/// memory.
fn huge_head(sock: &Path, pid: i32, probe: &str) {
    const SENT: usize = 32 << 20;
    let before = rss_kib(pid);
    let s = UnixStream::connect(sock).expect("connect");
    let mut w = s.try_clone().expect("clone the stream");
    let writer = std::thread::spawn(move || {
        let _ = w.set_write_timeout(Some(REQUEST_TIMEOUT + SLACK));
        let mut written = 0;
        if w.write_all(b"GET / HTTP/1.1\r\nX-Big: ").is_ok() {
            let chunk = vec![b'a'; 1 << 20];
            while written < SENT && w.write_all(&chunk).is_ok() {
                written += chunk.len();
            }
        }
        written
    });
    let a = answer(s, REQUEST_TIMEOUT + SLACK);
    let written = writer.join().expect("writer thread");
    assert_eq!(a.status, Some(431), "{}", a.text);
    assert!(a.closed, "the connection stays open after a 431");
    assert!(
        written < 4 << 20,
        "the server read {written} bytes of one header line"
    );
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(grown < 4096, "a huge header grew the server by {grown} KiB");

    let mut many = String::from("GET / HTTP/1.1\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    assert!(many.len() < MAX_HEAD);
    let a = answer(send(sock, many.as_bytes()), SLACK);
    assert_eq!(a.status, Some(431), "{}", a.text);
    assert_prompt(sock, probe, "a huge header");
}

/// Clients that stop half way through a request (or never begin one)
/// block nobody and are cut off at the deadline; past the connection limit
/// a client is told at once to come back.
fn stalled_requests(sock: &Path, probe: &str, max_connections: usize) {
    let start = Instant::now();
    let partial_body = b"PUT /machine-config HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{\"vcpu_count\": 1, \"pad\": \"";
    let stalled: Vec<UnixStream> = (0..12)
        .map(|_| send(sock, partial_body))
        .chain([
            send(sock, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "),
            send(sock, b""),
        ])
        .collect();
    for _ in 0..5 {
        assert_prompt(sock, probe, "stalled requests");
    }
    // The probes' connections end just after their answers are read.
    std::thread::sleep(Duration::from_millis(100));
    let idle: Vec<UnixStream> = (stalled.len()..max_connections)
        .map(|_| send(sock, b""))
        .collect();
    let start_busy = Instant::now();
    let a = answer(send(sock, b"GET / HTTP/1.1\r\n\r\n"), PROMPT);
    assert_eq!(a.status, Some(503), "over the connection limit: {}", a.text);
    assert!(a.closed && start_busy.elapsed() < PROMPT);
    let stalled = stalled.into_iter().chain(idle);
    let cut_off = REQUEST_TIMEOUT + SLACK;
    let mut stalled = stalled;
    for s in stalled.by_ref().take(13) {
        let a = answer(s, cut_off);
        assert!(a.closed, "a stalled request still open after {cut_off:?}");
        assert_eq!(a.status, Some(408), "{}", a.text);
    }
    for s in stalled {
        let a = answer(s, cut_off);
        assert!(a.closed, "an idle connection still open after {cut_off:?}");
        assert_eq!(a.text, "", "an idle connection got an answer");
    }
    assert!(start.elapsed() < cut_off + SLACK);
    assert_prompt(sock, probe, "stalled requests were cut off");
}

/// Requests sent back to back on one connection are all answered, in
/// order.
fn keep_alive_and_pipelining(sock: &Path, probe: &str) {
    let two = format!(
        "GET {probe} HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let a = answer(send(sock, two.as_bytes()), SLACK);
    assert!(a.closed, "Connection: close was not honoured");
    assert_eq!(a.status, Some(200), "{}", a.text);
    assert_eq!(a.text.matches("HTTP/1.1 ").count(), 2, "{}", a.text);
}
