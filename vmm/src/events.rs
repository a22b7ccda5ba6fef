//! The VM's device event loop (one thread, event-manager): serial input
//! today, virtio queues and backends as they arrive.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use devices::bus::lock;
use devices::legacy::Serial;
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use log::{debug, error};
use vmm_sys_util::eventfd::EventFd;

use crate::error::{Error, Result};
use crate::seccomp::ThreadFilter;

pub(crate) type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Host input for the serial console, with flow control: when the UART's
/// FIFO is full the input fd leaves the interest list until the guest has
/// drained it, so no byte is dropped.
pub struct SerialInput {
    input: std::fs::File,
    serial: Arc<Mutex<Serial>>,
    buffer_empty: EventFd,
    paused: bool,
    closed: bool,
}

impl SerialInput {
    /// Feeds bytes read from `input` into `serial`; `buffer_empty` is the
    /// eventfd the serial's input events write.
    pub fn new(input: OwnedFd, serial: Arc<Mutex<Serial>>, buffer_empty: EventFd) -> Self {
        SerialInput {
            input: std::fs::File::from(input),
            serial,
            buffer_empty,
            paused: false,
            closed: false,
        }
    }

    fn close(&mut self, ops: &mut EventOps) {
        if !self.paused {
            let _ = ops.remove(Events::new(&self.input, EventSet::IN));
        }
        self.closed = true;
    }
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.buffer_empty, EventSet::IN)) {
            error!("serial input: cannot watch the FIFO: {e:?}");
        }
        if let Err(e) = ops.add(Events::new(&self.input, EventSet::IN)) {
            // Regular files and /dev/null cannot be polled: no input then.
            debug!("serial input: not pollable, ignored: {e:?}");
            self.closed = true;
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.buffer_empty.as_raw_fd() {
            let _ = self.buffer_empty.read();
            if self.paused && !self.closed {
                self.paused = false;
                if let Err(e) = ops.add(Events::new(&self.input, EventSet::IN)) {
                    error!("serial input: cannot resume: {e:?}");
                    self.closed = true;
                }
            }
            return;
        }
        if events.fd() != self.input.as_raw_fd() || self.closed {
            return;
        }
        let room = lock(&self.serial).input_capacity();
        if room == 0 {
            let _ = ops.remove(Events::new(&self.input, EventSet::IN));
            self.paused = true;
            return;
        }
        let mut buf = [0u8; 64];
        match self.input.read(&mut buf[..room.min(64)]) {
            Ok(0) => self.close(ops),
            Ok(n) => {
                lock(&self.serial).enqueue_input(&buf[..n]);
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                debug!("serial input closed: {e}");
                self.close(ops);
            }
        }
    }
}

/// Ends the loop when its eventfd is written.
struct StopSubscriber {
    evt: EventFd,
    stop: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            error!("event loop: cannot watch the stop event: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The running event loop thread.
pub struct EventLoop {
    stop_evt: EventFd,
    stop_requested: bool,
    thread: Option<JoinHandle<()>>,
}

impl EventLoop {
    /// Starts a thread serving `subscribers`, under `filter`.
    pub fn start(subscribers: Vec<Subscriber>, filter: ThreadFilter) -> Result<Self> {
        let mut em: EventManager<Subscriber> =
            EventManager::new().map_err(|e| Error::Device(format!("event manager: {e:?}")))?;
        let stop_evt = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| Error::Io("cannot create an eventfd", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        em.add_subscriber(Arc::new(Mutex::new(StopSubscriber {
            evt: stop_evt
                .try_clone()
                .map_err(|e| Error::Io("cannot clone an eventfd", e))?,
            stop: stop.clone(),
        })));
        for s in subscribers {
            em.add_subscriber(s);
        }
        let thread = crate::seccomp::spawn("strato-events".into(), filter, move || {
            while !stop.load(Ordering::SeqCst) {
                if let Err(e) = em.run() {
                    error!("event loop failed: {e:?}");
                    break;
                }
            }
        })?;
        Ok(EventLoop {
            stop_evt,
            stop_requested: false,
            thread: Some(thread),
        })
    }

    /// Asks the loop to end without waiting for it, so that the caller can
    /// wait for other things meanwhile; `stop` then joins it.
    pub fn request_stop(&mut self) {
        if self.thread.is_some() && !self.stop_requested {
            match self.stop_evt.write(1) {
                Ok(()) => self.stop_requested = true,
                Err(e) => error!("cannot stop the event loop: {e}"),
            }
        }
    }

    /// Stops the loop and joins its thread.
    pub fn stop(&mut self) {
        self.request_stop();
        if !self.stop_requested {
            return;
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop();
    }
}
