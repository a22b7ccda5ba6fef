//! A Linux guest driven through its console shell, as a person at the
//! terminal would: the test types commands on strato's stdin and reads the
//! answers from its stdout.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use crate::Run;

/// A running `strato run` whose guest opens a shell (`strato_shell` on the
/// kernel command line). Killed on drop.
pub struct Shell {
    child: Child,
    stdin: Option<ChildStdin>,
    chunks: Receiver<Vec<u8>>,
    /// Everything the console printed so far (carriage returns removed).
    pub out: String,
    /// Where in `out` the next wait starts looking.
    seen: usize,
    seq: u32,
    stderr: std::thread::JoinHandle<String>,
}

impl Shell {
    /// Starts `program args` (strato, or `ip netns exec NS strato`) with
    /// stdin and stdout piped.
    pub fn spawn(program: &Path, args: &[&str]) -> Shell {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strato");
        let mut stdout = child.stdout.take().expect("stdout pipe");
        let mut stderr = child.stderr.take().expect("stderr pipe");
        let (tx, chunks) = channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Shell {
            stdin: child.stdin.take(),
            child,
            chunks,
            out: String::new(),
            seen: 0,
            seq: 0,
            stderr,
        }
    }

    /// Reads console output until `marker` appears after what earlier waits
    /// consumed, or `timeout` passes. Returns the text up to and including
    /// the marker.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> Result<String, String> {
        let start = Instant::now();
        loop {
            if let Some(pos) = self.out[self.seen..].find(marker) {
                let end = self.seen + pos + marker.len();
                let text = self.out[self.seen..end].to_string();
                self.seen = end;
                return Ok(text);
            }
            let left = timeout
                .checked_sub(start.elapsed())
                .ok_or_else(|| self.failure(&format!("no {marker:?} within {timeout:?}")))?;
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self
                    .out
                    .push_str(&String::from_utf8_lossy(&chunk).replace('\r', "")),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(self.failure(&format!("strato ended before {marker:?}")))
                }
            }
        }
    }

    /// [`Shell::wait_for`] that panics with the console on failure.
    pub fn expect(&mut self, marker: &str, timeout: Duration) -> String {
        self.wait_for(marker, timeout)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Types `line` and a newline.
    pub fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("type into the guest console");
    }

    /// Runs `cmd` in the guest shell and returns (its output, its exit
    /// status). The markers around it are split in the typed line so the
    /// terminal's echo of the command never matches them.
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> (String, i32) {
        self.seq += 1;
        let n = self.seq;
        self.type_line(&format!(
            "echo '<<B''EGIN {n}>>'; {cmd}; echo \"<<E\"\"ND {n} $?>>\""
        ));
        self.expect(&format!("<<BEGIN {n}>>\n"), timeout);
        let body = self.expect(&format!("<<END {n} "), timeout);
        let rc = self.expect(">>", timeout);
        let out = body[..body.len() - format!("<<END {n} ").len()].to_string();
        let rc = rc.trim_end_matches(">>").trim().parse().unwrap_or(-1);
        (out, rc)
    }

    /// Runs `cmd`, asserts it succeeded, returns its output trimmed.
    pub fn ok(&mut self, cmd: &str, timeout: Duration) -> String {
        let (out, rc) = self.run(cmd, timeout);
        assert_eq!(
            rc, 0,
            "`{cmd}` failed with {rc}: {out}\nconsole:\n{}",
            self.out
        );
        out.trim().to_string()
    }

    /// Process id of strato (or its wrapper).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for strato to exit by itself; kills it after.
    pub fn finish(mut self, timeout: Duration) -> Run {
        let start = Instant::now();
        drop(self.stdin.take());
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break Some(s);
            }
            if start.elapsed() > timeout {
                crate::kill_and_reap(&mut self.child);
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        while let Ok(chunk) = self.chunks.recv_timeout(Duration::from_secs(2)) {
            self.out
                .push_str(&String::from_utf8_lossy(&chunk).replace('\r', ""));
        }
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        Run {
            status,
            stdout: std::mem::take(&mut self.out),
            stderr: stderr.join().unwrap_or_default(),
            elapsed: start.elapsed(),
        }
    }

    fn failure(&mut self, what: &str) -> String {
        let threads = crate::vmm_report(self.child.id());
        let status = crate::kill_and_reap(&mut self.child);
        // The child is gone, so its stderr reader ends.
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new))
            .join()
            .unwrap_or_default();
        format!(
            "{what}; strato: {status:?}, its threads before the end:\n{threads}stderr:\n{stderr}\nconsole:\n{}",
            self.out
        )
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        crate::kill_and_reap(&mut self.child);
    }
}
