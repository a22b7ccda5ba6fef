//! virtio-console with a single port: transmitq0 goes to the console
//! output (the same writer the serial console uses), host input fills
//! receiveq0. Input is read only while the guest has buffers posted, so
//! nothing is dropped.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::error;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{read_config_bytes, should_notify, Budget, DeviceSignals, LogOnce, VirtioDevice};

/// Queue size of both queues.
pub const QUEUE_SIZE: u16 = 64;
const RX: usize = 0;
const TX: usize = 1;

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
}

/// A virtio-console device.
pub struct Console {
    out: Box<dyn Write + Send>,
    input: Option<std::fs::File>,
    input_paused: bool,
    queue_evts: [EventFd; 2],
    signals: Arc<DeviceSignals>,
    active: Option<Active>,
    early_notify: LogOnce,
    bad_request: LogOnce,
}

impl Console {
    /// A console writing to `out` and reading `input` (if any);
    /// `queue_evts` are the ioeventfds of receiveq0 and transmitq0.
    pub fn new(
        out: Box<dyn Write + Send>,
        input: Option<OwnedFd>,
        queue_evts: [EventFd; 2],
        signals: Arc<DeviceSignals>,
    ) -> Self {
        Console {
            out,
            input: input.map(std::fs::File::from),
            input_paused: false,
            queue_evts,
            signals,
            active: None,
            early_notify: LogOnce::default(),
            bad_request: LogOnce::default(),
        }
    }

    /// Writes everything the guest transmitted to the output.
    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let queue = &mut active.queues[TX];
        let mut used = false;
        let mut budget = Budget::for_queue(queue);
        while let Some(chain) = budget.next(queue, mem, &self.signals, &self.bad_request) {
            let head = chain.head_index();
            for d in chain {
                if d.is_write_only() {
                    self.bad_request
                        .warn(format_args!("virtio-console: writable buffer on transmitq"));
                    continue;
                }
                let mut buf = [0u8; 512];
                let mut off = 0u64;
                while off < u64::from(d.len()) {
                    let n = (u64::from(d.len()) - off).min(buf.len() as u64) as usize;
                    let ok = d
                        .addr()
                        .checked_add(off)
                        .is_some_and(|a| mem.read_slice(&mut buf[..n], a).is_ok());
                    if !ok {
                        self.bad_request
                            .warn(format_args!("virtio-console: buffer outside guest memory"));
                        break;
                    }
                    if self.out.write_all(&buf[..n]).is_err() {
                        self.bad_request
                            .warn(format_args!("virtio-console: output lost"));
                    }
                    off += n as u64;
                }
            }
            let _ = self.out.flush();
            if queue.add_used(mem, head, 0).is_err() {
                self.signals.set_needs_reset();
            }
            used = true;
        }
        if used && should_notify(queue, mem) {
            self.signals.signal_used_queue();
        }
        budget.resume(&self.queue_evts[TX]);
    }

    /// Moves host input into posted receive buffers; pauses the input when
    /// there are none.
    fn process_rx(&mut self, ops: &mut EventOps) {
        let (Some(active), Some(input)) = (self.active.as_mut(), self.input.as_mut()) else {
            return;
        };
        let mem = &active.mem;
        let queue = &mut active.queues[RX];
        let mut used = false;
        let mut budget = Budget::for_queue(queue);
        loop {
            let Some(chain) = budget.next(queue, mem, &self.signals, &self.bad_request) else {
                if budget.spent() {
                    // Only unusable buffers so far: the input stays
                    // readable, so the loop comes back for the rest.
                    break;
                }
                // No buffer: stop reading until the guest posts one.
                if !self.input_paused {
                    let _ = ops.remove(Events::new(input, EventSet::IN));
                    self.input_paused = true;
                }
                break;
            };
            let head = chain.head_index();
            // A zero-length buffer is refused here: reading into it would
            // return 0, which means the end of the host input.
            let Some(d) = chain.into_iter().find(|d| d.is_write_only() && d.len() > 0) else {
                self.bad_request.warn(format_args!(
                    "virtio-console: no writable buffer on receiveq"
                ));
                let _ = queue.add_used(mem, head, 0);
                continue;
            };
            let mut buf = [0u8; 256];
            let want = (d.len() as usize).min(buf.len());
            let n = match input.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    queue.go_to_previous_position();
                    break;
                }
                Err(_) => 0,
            };
            if n == 0 {
                // End of input: give the buffer back unused and stop.
                queue.go_to_previous_position();
                let _ = ops.remove(Events::new(input, EventSet::IN));
                self.input = None;
                break;
            }
            let written = match mem.write_slice(&buf[..n], d.addr()) {
                Ok(()) => n as u32,
                Err(_) => {
                    self.bad_request
                        .warn(format_args!("virtio-console: buffer outside guest memory"));
                    0
                }
            };
            if queue.add_used(mem, head, written).is_err() {
                self.signals.set_needs_reset();
            }
            used = true;
            // One read per readable event: the next comes from epoll.
            break;
        }
        if used && should_notify(queue, mem) {
            self.signals.signal_used_queue();
        }
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows, max_nr_ports, emerg_wr: unused without features.
        if !read_config_bytes(&[0u8; 12], offset, data) {
            self.bad_request
                .warn(format_args!("virtio-console: config read out of range"));
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _features: u64,
        queues: Vec<Queue>,
    ) -> Result<(), String> {
        if queues.len() != 2 {
            return Err("virtio-console needs two queues".into());
        }
        self.active = Some(Active { mem, queues });
        // Output queued before DRIVER_OK: written from the event loop.
        self.queue_evts[TX].write(1).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

impl MutEventSubscriber for Console {
    fn init(&mut self, ops: &mut EventOps) {
        for evt in &self.queue_evts {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                error!("virtio-console: cannot watch a queue: {e:?}");
            }
        }
        if let Some(input) = &self.input {
            if ops.add(Events::new(input, EventSet::IN)).is_err() {
                // Regular files and /dev/null cannot be polled: no input.
                self.input = None;
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let queue = self.queue_evts.iter().position(|e| e.as_raw_fd() == fd);
        if let Some(q) = queue {
            let _ = self.queue_evts[q].read();
            if self.active.is_none() {
                self.early_notify.warn(format_args!(
                    "virtio-console: queue notified while not running"
                ));
                return;
            }
            if q == TX {
                self.process_tx();
                return;
            }
            // New receive buffers: resume the input.
            if self.input_paused {
                if let Some(input) = &self.input {
                    if ops.add(Events::new(input, EventSet::IN)).is_ok() {
                        self.input_paused = false;
                    }
                }
            }
            return;
        }
        if self.input.as_ref().is_some_and(|i| i.as_raw_fd() == fd) {
            if self.active.is_none() {
                // Nowhere to put it yet: wait for the driver's buffers.
                if let Some(input) = &self.input {
                    let _ = ops.remove(Events::new(input, EventSet::IN));
                }
                self.input_paused = true;
                return;
            }
            self.process_rx(ops);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::{make_available, mem, ring_queue, used_entry, write_desc};
    use event_manager::{EventManager, SubscriberOps};
    use std::os::fd::FromRawFd;
    use std::sync::Mutex;
    use vm_memory::GuestAddress;

    const W: u16 = 2; // VRING_DESC_F_WRITE

    fn eventfd() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    /// Found while writing the console fuzz target: a zero-length receive
    /// buffer read 0 bytes from the host input, which the console took for
    /// its end and stopped reading input for good.
    #[test]
    fn zero_length_receive_buffer_keeps_the_input() {
        let m = mem();
        write_desc(&m, 0, 0, (0x4000, 0, W, 0));
        write_desc(&m, 0, 1, (0x5000, 64, W, 0));
        make_available(&m, 0, &[0, 1]);
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) };
        assert_eq!(rc, 0);
        // SAFETY: both descriptors are fresh and owned by nothing else.
        let (reader, writer) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut writer = std::fs::File::from(writer);
        writer.write_all(b"hi").unwrap();
        let signals = Arc::new(DeviceSignals::new(eventfd()));
        let console = Console::new(
            Box::new(std::io::sink()),
            Some(reader),
            [eventfd(), eventfd()],
            signals,
        );
        let console = Arc::new(Mutex::new(console));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(console.clone());
        console
            .lock()
            .unwrap()
            .activate(m.clone(), 0, vec![ring_queue(0, 16), ring_queue(1, 16)])
            .unwrap();
        for _ in 0..4 {
            em.run_with_timeout(10).unwrap();
        }
        // The empty buffer comes back unused, the next one gets the input.
        assert_eq!(used_entry(&m, 0, 0), (0, 0));
        assert_eq!(used_entry(&m, 0, 1), (1, 2));
        let mut got = [0u8; 2];
        m.read_slice(&mut got, GuestAddress(0x5000)).unwrap();
        assert_eq!(&got, b"hi");
        assert!(console.lock().unwrap().input.is_some());
    }
}
