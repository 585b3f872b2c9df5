//! The seam between the reconcile and the kernel: [`Dataplane`] applies one [`Op`]. The real
//! one writes the eBPF maps through `isthmus-ebpf`; [`MemDataplane`] keeps them in memory for
//! tests (and can be told to fail an op, to test what a failure leaves).

use isthmus_ebpf::layout::SlotKey;
use isthmus_ebpf::Datapath;

use crate::reconcile::{MapState, Op};

/// An op the dataplane could not apply; nothing of that op was applied.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Ebpf(Box<isthmus_ebpf::Error>),
    #[error("injected failure")]
    Injected,
}

impl From<isthmus_ebpf::Error> for DataplaneError {
    fn from(e: isthmus_ebpf::Error) -> Self {
        DataplaneError::Ebpf(Box::new(e))
    }
}

impl DataplaneError {
    /// Whether the op failed because a map is full.
    pub fn is_full(&self) -> bool {
        matches!(self, DataplaneError::Ebpf(e) if matches!(**e, isthmus_ebpf::Error::MapFull { .. }))
    }
}

pub trait Dataplane {
    /// Applies `op` whole or not at all.
    fn apply(&mut self, op: &Op) -> Result<(), DataplaneError>;
}

/// A check run after every op of a [`MemDataplane`].
pub type AfterOp = Box<dyn FnMut(&MapState, &Op)>;

/// The maps in memory.
#[derive(Default)]
pub struct MemDataplane {
    pub maps: MapState,
    /// Fails the op with this index (counting from 0 over the dataplane's life), once.
    pub fail_at: Option<usize>,
    pub applied: usize,
    /// Called after every op with the maps as they are then.
    pub after_op: Option<AfterOp>,
}

impl Dataplane for MemDataplane {
    fn apply(&mut self, op: &Op) -> Result<(), DataplaneError> {
        let n = self.applied;
        self.applied += 1;
        if self.fail_at == Some(n) {
            self.fail_at = None;
            return Err(DataplaneError::Injected);
        }
        self.maps.apply(op);
        if let Some(f) = &mut self.after_op {
            f(&self.maps, op);
        }
        Ok(())
    }
}

impl Dataplane for Datapath {
    fn apply(&mut self, op: &Op) -> Result<(), DataplaneError> {
        match op {
            Op::Claim { service_id, .. } => {
                self.clear_stats(*service_id)?;
                self.reset_rr(*service_id)?;
            }
            // Counters stay readable until the id is claimed again.
            Op::Release { .. } => {}
            Op::PutBackend { id, value } => self.put_backend(*id, value)?,
            Op::PutSlots {
                selection,
                backends,
            } => {
                for (index, backend) in (0u32..).zip(backends) {
                    let key = SlotKey {
                        selection: *selection,
                        index,
                    };
                    if let Err(e) = self.put_slot(&key, *backend) {
                        // All or nothing: a table no entry names yet can go quietly.
                        for undo in 0..index {
                            let _ = self.delete_slot(&SlotKey {
                                selection: *selection,
                                index: undo,
                            });
                        }
                        return Err(e.into());
                    }
                }
            }
            Op::PutService { key, value } => self.put_service(key, value)?,
            Op::PutVip { vip, service_id } => self.put_vip(*vip, *service_id)?,
            Op::DeleteService { key } => self.delete_service(key)?,
            Op::DeleteVip { vip } => self.delete_vip(*vip)?,
            Op::DeleteSlots { selection, count } => {
                for index in 0..*count {
                    self.delete_slot(&SlotKey {
                        selection: *selection,
                        index,
                    })?;
                }
            }
            Op::DeleteBackend { id } => self.delete_backend(*id)?,
        }
        Ok(())
    }
}
