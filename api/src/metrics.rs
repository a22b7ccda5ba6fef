//! Firecracker's metrics: one JSON object per line, written to a file or a
//! FIFO every 60 s and on `FlushMetrics`, with Firecracker's group and
//! counter names for the counters strato keeps. Each counter reports how
//! much it grew since the line before, as Firecracker's do; `block` and
//! `net` add up the drives (`block_<drive_id>`) and interfaces
//! (`net_<iface_id>`).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use vmm::{Counters, VmMetrics};

/// How often the lines come without a `FlushMetrics`.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// Where the lines go and the totals the last one reported.
pub struct Writer {
    file: std::fs::File,
    last: HashMap<String, u64>,
}

/// The writer, shared by the API and the periodic flush.
pub type Shared = Arc<Mutex<Writer>>;

/// What one line reports on: the running VM's counters with the ids of
/// its drives and network interfaces, in configuration order.
pub struct Source<'a> {
    /// The counters.
    pub metrics: &'a VmMetrics,
    /// `drive_id` of each drive.
    pub drives: &'a [String],
    /// `iface_id` of each network interface.
    pub nets: &'a [String],
}

impl Writer {
    /// Opens `path` as the logger opens its file (see
    /// [`crate::logger::open`]).
    pub fn open(path: &Path) -> std::io::Result<Writer> {
        Ok(Writer {
            file: crate::logger::open(path)?,
            last: HashMap::new(),
        })
    }

    /// Writes one line: the time, and the growth of every counter of
    /// `source` (none before the VM runs).
    pub fn flush(&mut self, source: Option<&Source>) -> std::io::Result<()> {
        let line = self.line(source);
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        // One write: a FIFO reader never sees half a line; a full one
        // (non-blocking) loses the line.
        (&self.file).write_all(text.as_bytes())
    }

    fn line(&mut self, source: Option<&Source>) -> Map<String, Value> {
        let mut line = Map::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        line.insert("utc_timestamp_ms".into(), now.into());
        let Some(src) = source else {
            return line;
        };
        let vcpu = self.group("vcpu", src.metrics.vcpu.as_ref());
        line.insert("vcpu".into(), Value::Object(vcpu));
        self.devices(&mut line, "block", src.drives, &src.metrics.blocks);
        self.devices(&mut line, "net", src.nets, &src.metrics.nets);
        if let Some(e) = &src.metrics.entropy {
            let group = self.group("entropy", e.as_ref());
            line.insert("entropy".into(), Value::Object(group));
        }
        line
    }

    /// `<kind>_<id>` per device and `<kind>` for their sum.
    fn devices<C: Counters + ?Sized>(
        &mut self,
        line: &mut Map<String, Value>,
        kind: &str,
        ids: &[String],
        devices: &[Arc<C>],
    ) {
        let mut sum: Map<String, Value> = Map::new();
        for (id, dev) in ids.iter().zip(devices) {
            let group = self.group(&format!("{kind}_{id}"), dev.as_ref());
            for (name, v) in &group {
                let total = sum.get(name).and_then(Value::as_u64).unwrap_or(0);
                sum.insert(name.clone(), (total + v.as_u64().unwrap_or(0)).into());
            }
            line.insert(format!("{kind}_{id}"), Value::Object(group));
        }
        if !devices.is_empty() {
            line.insert(kind.into(), Value::Object(sum));
        }
    }

    /// The growth of each counter of `c` since the last line, remembered
    /// under `group`.
    fn group<C: Counters + ?Sized>(&mut self, group: &str, c: &C) -> Map<String, Value> {
        let mut out = Map::new();
        for (name, total) in c.counters() {
            let last = self.last.entry(format!("{group}.{name}")).or_insert(0);
            out.insert(name.into(), total.saturating_sub(*last).into());
            *last = total;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_reports_the_growth_per_device_and_summed() {
        let dir = std::env::temp_dir().join(format!("strato-metrics-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let mut w = Writer::open(&dir).unwrap();
        let metrics = VmMetrics {
            blocks: vec![Arc::default(), Arc::default()],
            ..Default::default()
        };
        let drives = ["root".to_string(), "data".to_string()];
        let src = Source {
            metrics: &metrics,
            drives: &drives,
            nets: &[],
        };
        metrics.blocks[0].read_bytes.add(4096);
        metrics.blocks[1].read_bytes.add(512);
        metrics.vcpu.exit_mmio_write.add(3);
        w.flush(Some(&src)).unwrap();
        metrics.blocks[0].read_bytes.add(100);
        w.flush(Some(&src)).unwrap();
        w.flush(None).unwrap();
        let text = std::fs::read_to_string(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["block_root"]["read_bytes"], 4096);
        assert_eq!(lines[0]["block_data"]["read_bytes"], 512);
        assert_eq!(lines[0]["block"]["read_bytes"], 4608);
        assert_eq!(lines[0]["vcpu"]["exit_mmio_write"], 3);
        assert!(lines[0].get("net").is_none());
        assert_eq!(lines[1]["block_root"]["read_bytes"], 100);
        assert_eq!(lines[1]["block"]["read_bytes"], 100);
        assert_eq!(lines[1]["vcpu"]["exit_mmio_write"], 0);
        assert!(lines[2]["utc_timestamp_ms"].as_u64().unwrap() > 0);
        assert!(lines[2].get("vcpu").is_none());
    }
}
