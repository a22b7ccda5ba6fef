//! A minimal logger: one line per message, on stderr or in a file (or a
//! FIFO), optionally limited to one module's messages. It can be changed
//! until the VM starts (Firecracker's `PUT /logger` and `logger` section).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::RwLock;

use log::{LevelFilter, Log, Metadata, Record};

/// How lines look and where they go.
struct Settings {
    module: Option<String>,
    file: Option<std::fs::File>,
    show_level: bool,
    show_origin: bool,
    id: Option<String>,
}

/// A change of the logger; `None` fields stay as they are.
#[derive(Default)]
pub struct Update {
    /// The most verbose level written.
    pub level: Option<LevelFilter>,
    /// Only messages of this module path (or below it).
    pub module: Option<String>,
    /// Write here instead of stderr (see [`open`]).
    pub file: Option<std::fs::File>,
    /// The message's level on each line.
    pub show_level: Option<bool>,
    /// The message's source file and line on each line.
    pub show_origin: Option<bool>,
    /// The instance id at the start of each line (Firecracker's lines
    /// carry it).
    pub id: Option<String>,
}

struct Logger(RwLock<Settings>);

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        if metadata.level() > log::max_level() {
            return false;
        }
        let s = self.0.read().unwrap_or_else(|e| e.into_inner());
        s.module.as_ref().is_none_or(|m| {
            let target = metadata.target();
            target == m
                || target
                    .strip_prefix(m.as_str())
                    .is_some_and(|r| r.starts_with("::"))
        })
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let s = self.0.read().unwrap_or_else(|e| e.into_inner());
        let thread = std::thread::current();
        let mut line = String::from("[");
        if let Some(id) = &s.id {
            line.push_str(id);
            line.push(':');
        }
        line.push_str("strato");
        if s.show_level {
            line.push_str(&format!(" {}", record.level()));
        }
        line.push_str(&format!(" {}", thread.name().unwrap_or("?")));
        if s.show_origin {
            line.push_str(&format!(
                " {}:{}",
                record.file().unwrap_or("?"),
                record.line().unwrap_or(0)
            ));
        }
        line.push_str(&format!("] {}\n", record.args()));
        match &s.file {
            // One write per line, so that lines of several threads do not
            // mix on a FIFO. The file is non-blocking: a FIFO nobody reads
            // loses lines instead of stopping the VMM.
            Some(f) => {
                let _ = (&*f).write_all(line.as_bytes());
            }
            None => eprint!("{line}"),
        }
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger(RwLock::new(Settings {
    module: None,
    file: None,
    show_level: true,
    show_origin: false,
    id: None,
}));

/// Installs the logger on stderr at `level`, with strato's own format:
/// level and thread on every line.
pub fn init(level: LevelFilter) {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Installs the logger if it is not yet, and applies `update`.
pub fn update(update: Update) {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Warn);
    }
    let mut s = LOGGER.0.write().unwrap_or_else(|e| e.into_inner());
    if let Some(level) = update.level {
        log::set_max_level(level);
    }
    if update.module.is_some() {
        s.module = update.module;
    }
    if update.file.is_some() {
        s.file = update.file;
    }
    if let Some(v) = update.show_level {
        s.show_level = v;
    }
    if let Some(v) = update.show_origin {
        s.show_origin = v;
    }
    if update.id.is_some() {
        s.id = update.id;
    }
}

/// Opens a log: appended to a file (made if missing), or written to a FIFO
/// without waiting for a reader (read-write, which never blocks on a FIFO,
/// and non-blocking, so a full one loses lines rather than stalling). The
/// flags are `vmm::seccomp::LOGGER_FLAGS`, which the API threads' filter
/// allows.
pub fn open(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// Firecracker's level names in any case (`Warning` too), and Rust's.
pub fn parse_level(s: &str) -> Result<LevelFilter, String> {
    match s.to_ascii_lowercase().as_str() {
        "warning" => Ok(LevelFilter::Warn),
        other => other
            .parse()
            .map_err(|_| format!("unknown level {s:?} (Off, Error, Warning, Info, Debug, Trace)")),
    }
}
