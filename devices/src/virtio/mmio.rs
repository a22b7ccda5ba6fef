//! virtio-mmio transport, version 2 (modern only).

use std::sync::{Arc, Mutex};

use log::{debug, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{DeviceSignals, LogOnce, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::bus::lock;
use crate::BusDevice;

/// Size of one device's register window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// Offset of the QueueNotify register (where ioeventfds listen).
pub const NOTIFY_OFFSET: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x5354_5241; // "STRA"
const CONFIG_OFFSET: u64 = 0x100;

/// The transport for one device: its registers, feature negotiation,
/// status state machine and queue configuration.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    signals: Arc<DeviceSignals>,
    mem: GuestMemoryMmap,
    device_type: u32,
    device_features: u64,
    status: u32,
    features_select: u32,
    driver_features: u64,
    driver_features_select: u32,
    queue_select: u32,
    queues: Vec<Queue>,
    /// Per queue: the driver's last QueueNum was refused, so the queue must
    /// not become ready with a size the driver did not choose.
    bad_size: Vec<bool>,
    config_generation: u32,
    bad_access: LogOnce,
}

impl MmioTransport {
    /// Wraps `device`; `signals` is the same object the device raises
    /// interrupts through.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        signals: Arc<DeviceSignals>,
        mem: GuestMemoryMmap,
    ) -> Result<Self, String> {
        let (device_type, device_features, max_sizes) = {
            let d = lock(&device);
            (d.device_type(), d.features(), d.queue_max_sizes().to_vec())
        };
        let queues = max_sizes
            .iter()
            .map(|&max| Queue::new(max).map_err(|e| format!("queue of size {max}: {e:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        let bad_size = vec![false; queues.len()];
        Ok(MmioTransport {
            device,
            signals,
            mem,
            device_type,
            device_features: device_features | VIRTIO_F_VERSION_1,
            status: 0,
            features_select: 0,
            driver_features: 0,
            driver_features_select: 0,
            queue_select: 0,
            queues,
            bad_size,
            config_generation: 0,
            bad_access: LogOnce::default(),
        })
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queue registers are only writable before the device runs.
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    fn status(&self) -> u32 {
        if self.signals.needs_reset() {
            self.status | VIRTIO_CONFIG_S_NEEDS_RESET
        } else {
            self.status
        }
    }

    fn reset(&mut self) {
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            lock(&self.device).reset();
        }
        self.status = 0;
        self.features_select = 0;
        self.driver_features = 0;
        self.driver_features_select = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.bad_size.fill(false);
        self.signals.clear();
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & VIRTIO_CONFIG_S_FAILED != 0 {
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        // Bits only get set, in order: ACKNOWLEDGE, DRIVER, FEATURES_OK,
        // DRIVER_OK. Anything else is ignored.
        let new = value & !self.status;
        if value & self.status != self.status {
            self.bad_access.warn(format_args!(
                "virtio-mmio: driver cleared status bits {:#x}",
                self.status
            ));
            return;
        }
        let allowed = match new {
            VIRTIO_CONFIG_S_ACKNOWLEDGE => self.status == 0,
            VIRTIO_CONFIG_S_DRIVER => self.status == VIRTIO_CONFIG_S_ACKNOWLEDGE,
            VIRTIO_CONFIG_S_FEATURES_OK => {
                self.status == VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
                    && self.driver_features & VIRTIO_F_VERSION_1 != 0
            }
            VIRTIO_CONFIG_S_DRIVER_OK => {
                self.status
                    == VIRTIO_CONFIG_S_ACKNOWLEDGE
                        | VIRTIO_CONFIG_S_DRIVER
                        | VIRTIO_CONFIG_S_FEATURES_OK
            }
            0 => true,
            _ => false,
        };
        if !allowed {
            self.bad_access.warn(format_args!(
                "virtio-mmio: status {value:#x} not allowed after {:#x}",
                self.status
            ));
            return;
        }
        if new == VIRTIO_CONFIG_S_DRIVER_OK {
            self.activate();
        } else {
            self.status = value;
        }
    }

    fn activate(&mut self) {
        // The device gets its own copies; the transport keeps the
        // configuration for register reads until the next reset.
        let needed = lock(&self.device)
            .queues_needed(self.driver_features)
            .min(self.queues.len());
        let ready: Vec<Queue> = self.queues[..needed]
            .iter()
            .filter(|q| q.ready())
            .filter_map(|q| Queue::try_from(q.state()).ok())
            .collect();
        if ready.len() != needed {
            // Every queue the features call for is needed.
            self.bad_access
                .warn(format_args!("virtio-mmio: DRIVER_OK with queues not ready"));
            self.signals.set_needs_reset();
            self.status |= VIRTIO_CONFIG_S_DRIVER_OK;
            return;
        }
        // Where the rings are, for reading a stuck queue's state out of
        // guest memory when debugging a driver or the device.
        for (i, q) in ready.iter().enumerate() {
            debug!(
                "virtio-mmio: device type {} queue {i}: size {} desc {:#x} avail {:#x} used {:#x}",
                self.device_type,
                q.size(),
                q.desc_table(),
                q.avail_ring(),
                q.used_ring()
            );
        }
        let result = lock(&self.device).activate(self.mem.clone(), self.driver_features, ready);
        self.status |= VIRTIO_CONFIG_S_DRIVER_OK;
        if let Err(e) = result {
            warn!(
                "virtio-mmio: device type {} failed to activate: {e}",
                self.device_type
            );
            self.signals.set_needs_reset();
        }
    }

    fn set_queue_ready(&mut self, ready: bool) {
        let mem = self.mem.clone();
        let bad_size = self
            .bad_size
            .get(self.queue_select as usize)
            .copied()
            .unwrap_or(true);
        let Some(q) = self.selected_queue() else {
            return;
        };
        if ready && bad_size {
            self.bad_access.warn(format_args!(
                "virtio-mmio: queue with a refused size cannot be ready"
            ));
            return;
        }
        if ready && !rings_in_memory(q, &mem) {
            // Rings outside guest memory: the queue stays not ready.
            self.bad_access.warn(format_args!(
                "virtio-mmio: queue rings outside guest memory refused"
            ));
            return;
        }
        q.set_ready(ready);
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_select as usize);
        match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => self.device_type,
            0x00c => VENDOR,
            0x010 => match self.features_select {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            0x034 => queue.map_or(0, |q| u32::from(q.max_size())),
            0x044 => queue.map_or(0, |q| u32::from(q.ready())),
            0x060 => self.signals.interrupt_status(),
            0x070 => self.status(),
            // The driver's writes and the device's own changes.
            0x0fc => self
                .config_generation
                .wrapping_add(self.signals.config_changes()),
            _ => {
                self.bad_access
                    .warn(format_args!("virtio-mmio: read of register {offset:#x}"));
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        match offset {
            0x014 => self.features_select = value,
            0x020 => {
                if self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
                    || self.status & VIRTIO_CONFIG_S_DRIVER == 0
                {
                    self.bad_access
                        .warn(format_args!("virtio-mmio: features written out of order"));
                    return;
                }
                let shift = match self.driver_features_select {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                // The driver may only accept what the device offers.
                let mask = 0xffff_ffffu64 << shift;
                let value = (u64::from(value) << shift) & self.device_features;
                self.driver_features = (self.driver_features & !mask) | value;
            }
            0x024 => self.driver_features_select = value,
            0x030 => self.queue_select = value,
            0x038 => {
                let index = self.queue_select as usize;
                let ok = self.selected_queue().is_some_and(|q| {
                    let valid = value.is_power_of_two() && value <= u32::from(q.max_size());
                    if valid && !q.ready() {
                        q.set_size(value as u16);
                    }
                    valid
                });
                if let Some(bad) = self.bad_size.get_mut(index) {
                    *bad = !ok;
                }
                if !ok {
                    self.bad_access
                        .warn(format_args!("virtio-mmio: queue size {value} refused"));
                }
            }
            0x044 => self.set_queue_ready(value == 1),
            0x064 => self.signals.ack(value),
            0x070 => self.set_status(value),
            // Misaligned ring addresses are refused here (virtio-queue would
            // log each attempt); the queue keeps its previous address.
            0x080 if value.is_multiple_of(16) => {
                self.with_queue(|q| q.set_desc_table_address(Some(value), None))
            }
            0x084 => self.with_queue(|q| q.set_desc_table_address(None, Some(value))),
            0x090 if value.is_multiple_of(2) => {
                self.with_queue(|q| q.set_avail_ring_address(Some(value), None))
            }
            0x094 => self.with_queue(|q| q.set_avail_ring_address(None, Some(value))),
            0x0a0 if value.is_multiple_of(4) => {
                self.with_queue(|q| q.set_used_ring_address(Some(value), None))
            }
            0x0a4 => self.with_queue(|q| q.set_used_ring_address(None, Some(value))),
            NOTIFY_OFFSET => {
                // Normally caught by the ioeventfd before reaching us.
                debug!("virtio-mmio: queue notify {value} through the bus");
            }
            _ => self
                .bad_access
                .warn(format_args!("virtio-mmio: write of register {offset:#x}")),
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            if q.ready() {
                return;
            }
            f(q);
        }
    }
}

/// Whether the queue's three rings lie inside guest memory.
fn rings_in_memory(q: &Queue, mem: &GuestMemoryMmap) -> bool {
    use vm_memory::{GuestAddress, GuestMemoryBackend};
    let n = u64::from(q.size());
    let fits = |addr: u64, len: u64| {
        GuestAddress(addr)
            .0
            .checked_add(len)
            .is_some_and(|end| end > addr && mem.check_range(GuestAddress(addr), len as usize))
    };
    fits(q.desc_table(), 16 * n)
        && fits(q.avail_ring(), 6 + 2 * n)
        && fits(q.used_ring(), 6 + 8 * n)
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            let dev = lock(&self.device);
            dev.read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        data.fill(0);
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.bad_access.warn(format_args!(
                "virtio-mmio: {}-byte read at {offset:#x}",
                data.len()
            ));
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_OFFSET, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.bad_access.warn(format_args!(
                "virtio-mmio: {}-byte write at {offset:#x}",
                data.len()
            ));
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::{mem, TestDevice};

    fn transport() -> (MmioTransport, Arc<Mutex<TestDevice>>) {
        let dev = Arc::new(Mutex::new(TestDevice::default()));
        let signals = Arc::new(DeviceSignals::new(
            vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ));
        let t = MmioTransport::new(dev.clone(), signals, mem()).unwrap();
        (t, dev)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    /// ACKNOWLEDGE, DRIVER, accept VERSION_1, FEATURES_OK.
    fn negotiate(t: &mut MmioTransport) {
        w(t, 0x070, 1);
        w(t, 0x070, 3);
        w(t, 0x024, 1);
        w(t, 0x020, 1);
        w(t, 0x070, 11);
    }

    fn setup_queue(t: &mut MmioTransport, size: u32) {
        w(t, 0x030, 0);
        w(t, 0x038, size);
        w(t, 0x080, 0x1000);
        w(t, 0x090, 0x2000);
        w(t, 0x0a0, 0x3000);
        w(t, 0x044, 1);
    }

    #[test]
    fn identity_registers() {
        let (mut t, _) = transport();
        assert_eq!(r(&mut t, 0), MAGIC);
        assert_eq!(r(&mut t, 4), 2);
        assert_eq!(r(&mut t, 8), 42);
        w(&mut t, 0x014, 1);
        assert_eq!(r(&mut t, 0x010), 1); // VERSION_1 is bit 32
        assert_eq!(r(&mut t, 0x034), 16);
    }

    #[test]
    fn full_init_activates() {
        let (mut t, dev) = transport();
        negotiate(&mut t);
        assert_eq!(r(&mut t, 0x070), 11);
        setup_queue(&mut t, 16);
        assert_eq!(r(&mut t, 0x044), 1);
        w(&mut t, 0x070, 15);
        assert_eq!(r(&mut t, 0x070), 15);
        assert!(dev.lock().unwrap().activated);
        // Reset drops the device's queues.
        w(&mut t, 0x070, 0);
        assert!(!dev.lock().unwrap().activated);
        assert_eq!(r(&mut t, 0x070), 0);
        assert_eq!(r(&mut t, 0x044), 0);
    }

    #[test]
    fn features_ok_needs_version_1() {
        let (mut t, _) = transport();
        w(&mut t, 0x070, 1);
        w(&mut t, 0x070, 3);
        w(&mut t, 0x070, 11);
        assert_eq!(r(&mut t, 0x070), 3, "FEATURES_OK without VERSION_1");
    }

    #[test]
    fn bad_queue_sizes_are_refused() {
        let (mut t, _) = transport();
        w(&mut t, 0x070, 1);
        w(&mut t, 0x070, 3);
        for size in [3, 0, 32, 17] {
            setup_queue(&mut t, size);
            // A refused size keeps the queue from becoming ready.
            assert_eq!(r(&mut t, 0x044), 0, "size {size}");
        }
        setup_queue(&mut t, 8);
        assert_eq!(r(&mut t, 0x044), 1);
        // Rings outside guest memory make the queue invalid.
        w(&mut t, 0x044, 0);
        w(&mut t, 0x080, 0xffff_f000);
        w(&mut t, 0x084, 0x7f);
        w(&mut t, 0x044, 1);
        assert_eq!(r(&mut t, 0x044), 0);
    }

    #[test]
    fn driver_ok_without_ready_queues_needs_reset() {
        let (mut t, dev) = transport();
        negotiate(&mut t);
        w(&mut t, 0x070, 15);
        assert_eq!(
            r(&mut t, 0x070) & VIRTIO_CONFIG_S_NEEDS_RESET,
            VIRTIO_CONFIG_S_NEEDS_RESET
        );
        assert!(!dev.lock().unwrap().activated);
        assert_eq!(
            r(&mut t, 0x060) & super::super::INT_CONFIG,
            super::super::INT_CONFIG
        );
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let (mut t, _) = transport();
        let mut b = [0xffu8; 2];
        t.read(0, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(0x070, &[1]);
        assert_eq!(r(&mut t, 0x070), 0);
        assert_eq!(r(&mut t, 0x0f0), 0);
        let mut big = [0xffu8; 8];
        t.read(0x100 + 0x1000, &mut big);
        assert_eq!(big, [0; 8]);
    }
}
