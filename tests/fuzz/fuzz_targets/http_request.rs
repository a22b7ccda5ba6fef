//! The API servers' HTTP/1.1 request reading: the raw input arrives on a
//! connection, which the server reads, parses (head, Content-Length,
//! limits, pipelining, Expect, keep-alive) and answers until it closes.
//!
//! Input: the bytes a client sends, then it half-closes.
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use api::http::{connection, Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        // libFuzzer's main, unlike Rust's, leaves SIGPIPE fatal; the
        // server may write to a client that is gone, as in `strato`.
        // SAFETY: ignoring a signal touches no memory.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    },
    |data: &[u8]| {
    let (mut client, server) = UnixStream::pair().expect("socketpair");
    let sent = data.to_vec();
    // The client sends everything, then reads all the answers, so the
    // server never waits on a full socket buffer.
    let peer = std::thread::spawn(move || {
        // The server may close before reading everything.
        let _ = client.write_all(&sent);
        let _ = client.shutdown(std::net::Shutdown::Write);
        let mut answers = Vec::new();
        let _ = client.read_to_end(&mut answers);
        answers
    });
    connection(server, &|req: &Request| {
        let text = format!("{} {}", req.method(), req.url());
        Response::text(200, text.into_bytes())
    });
    let answers = peer.join().expect("client thread");
    assert!(
        answers.is_empty() || answers.starts_with(b"HTTP/1.1 "),
        "not an HTTP response"
    );
});
